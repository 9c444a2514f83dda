"""Real HTTP servers on loopback for the remote-model tests: a static file server that honours
``Range`` (and counts every body byte it sends), and a Hub-shaped server that answers what
huggingface_hub asks (``/api/models/{repo}/tree/{rev}``, ``/{repo}/resolve/{rev}/{path}``) the way
the Hub does: ``X-Repo-Commit``, ``X-Linked-Etag``, ``X-Linked-Size``, a redirect to the "CDN"
(the static server, another host:port), ``X-Error-Code`` with 401 for a gated file and 404.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit


@dataclass
class Log:
    """Every request a server answered: (method, path, Range header, status, body bytes sent).

    A request is counted as begun before its handler sends anything, and logged after its last
    byte: reading ``entries`` or ``authorization`` waits (up to 5 s) until no request is in flight,
    so a client that has its answer never reads the log before the server has written it."""

    _entries: list[tuple[str, str, str | None, int, int]] = field(default_factory=list)
    _authorization: list[str | None] = field(default_factory=list)
    """The ``Authorization`` header of every request, in order."""
    lock: threading.Condition = field(default_factory=threading.Condition)
    in_flight: int = 0

    def begin(self) -> None:
        with self.lock:
            self.in_flight += 1

    def add(self, *entry, authorization: str | None = None) -> None:
        with self.lock:
            self._entries.append(entry)
            self._authorization.append(authorization)

    def end(self) -> None:
        """A request's handler returned (after its ``add``, or after failing)."""
        with self.lock:
            self.in_flight = max(0, self.in_flight - 1)
            self.lock.notify_all()

    def _settled(self) -> None:
        with self.lock:
            self.lock.wait_for(lambda: self.in_flight == 0, timeout=5.0)

    @property
    def entries(self) -> list[tuple[str, str, str | None, int, int]]:
        self._settled()
        return self._entries

    @property
    def authorization(self) -> list[str | None]:
        self._settled()
        return self._authorization

    @property
    def body_bytes(self) -> int:
        return sum(e[4] for e in self.entries)

    def gets(self) -> list[tuple[str, str, str | None, int, int]]:
        return [e for e in self.entries if e[0] == "GET"]

    def clear(self) -> None:
        self._settled()
        with self.lock:
            self._entries.clear()
            self._authorization.clear()


_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class StaticServer:
    """Serves ``files`` (URL path -> local file) with ``Range`` support, ETags and counters.

    ``ignore_range``: answer every GET with 200 and the whole file (a server we must refuse).
    ``fail_next``: answer the next N requests with this status (429/503) before serving.
    ``redirects``: URL path -> another URL path (302).
    """

    def __init__(self, files: dict[str, Path] | None = None) -> None:
        self.files: dict[str, Path] = dict(files or {})
        self.etags: dict[str, str] = {}
        self.redirects: dict[str, str] = {}
        self.ignore_range = False
        self.accept_ranges: str | None = "bytes"
        """The ``Accept-Ranges`` header sent (``None``: none, as servers without range support do)."""
        self.fail_next: list[int] = []
        self.stall_s = 0.0
        """Wait this long before answering (a server that does not answer in time)."""
        self.log = Log()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def do_HEAD(self) -> None:
                server.log.begin()
                try:
                    server._answer(self, head=True)
                finally:
                    server.log.end()

            def do_GET(self) -> None:
                server.log.begin()
                try:
                    server._answer(self, head=False)
                finally:
                    server.log.end()

        self.httpd = _Server(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def url(self, path: str) -> str:
        return self.base + path

    def etag(self, path: str) -> str:
        if path in self.etags:
            return self.etags[path]
        st = self.files[path].stat()
        return f'"{st.st_size:x}-{st.st_mtime_ns:x}"'

    def __enter__(self) -> StaticServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _answer(self, h: BaseHTTPRequestHandler, *, head: bool) -> None:
        path = unquote(urlsplit(h.path).path)
        rng = h.headers.get("Range")
        if self.stall_s:
            import time

            time.sleep(self.stall_s)
        if self.fail_next:
            status = self.fail_next.pop(0)
            self._empty(h, status, path, rng)
            return
        if path in self.redirects:
            h.send_response(302)
            h.send_header("Location", self.redirects[path])
            h.send_header("Content-Length", "0")
            h.end_headers()
            self.log.add(h.command, path, rng, 302, 0)
            return
        if path not in self.files:
            self._empty(h, 404, path, rng)
            return
        file = self.files[path]
        size = file.stat().st_size
        start, end = 0, size
        status = 200
        m = _RANGE.match(rng or "")
        if m and not self.ignore_range:
            start = int(m.group(1))
            end = min(size, int(m.group(2)) + 1) if m.group(2) else size
            if start >= size:
                self._empty(h, 416, path, rng, extra={"Content-Range": f"bytes */{size}"})
                return
            status = 206
        h.send_response(status)
        h.send_header("Content-Length", str(end - start))
        if self.accept_ranges is not None:
            h.send_header("Accept-Ranges", self.accept_ranges)
        h.send_header("ETag", self.etag(path))
        if status == 206:
            h.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
        h.end_headers()
        sent = 0
        if not head:
            with open(file, "rb") as fh:
                fh.seek(start)
                left = end - start
                try:
                    while left > 0:
                        chunk = fh.read(min(left, 1 << 16))
                        h.wfile.write(chunk)
                        sent += len(chunk)
                        left -= len(chunk)
                except (BrokenPipeError, ConnectionResetError):
                    h.close_connection = True
        self.log.add(h.command, path, rng, status, sent, authorization=h.headers.get("Authorization"))

    def _empty(self, h, status: int, path: str, rng: str | None, extra: dict[str, str] | None = None) -> None:
        h.send_response(status)
        for k, v in (extra or {}).items():
            h.send_header(k, v)
        h.send_header("Content-Length", "0")
        h.end_headers()
        self.log.add(h.command, path, rng, status, 0)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class HubServer:
    """A Hub-shaped server: repos of files (listing and resolve), LFS bytes on a separate CDN.

    ``add(repo, path, file)`` publishes a local file; ``gated`` holds (repo, path) answered 401 GatedRepo,
    ``missing`` (repo, path) answered 404 EntryNotFound.
    """

    COMMIT = "0123456789abcdef0123456789abcdef01234567"

    def __init__(self) -> None:
        self.cdn = StaticServer()
        self.repos: dict[str, dict[str, Path]] = {}
        self.sha: dict[Path, str] = {}
        self.gated: set[tuple[str, str]] = set()
        self.missing: set[tuple[str, str]] = set()
        """Listed, but ``resolve`` answers 404 (a file deleted after the listing)."""
        self.log = Log()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_HEAD(self) -> None:
                server.log.begin()
                try:
                    server._answer(self)
                finally:
                    server.log.end()

            def do_GET(self) -> None:
                server.log.begin()
                try:
                    server._answer(self)
                finally:
                    server.log.end()

        self.httpd = _Server(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def add(self, repo: str, path: str, file: Path) -> None:
        self.repos.setdefault(repo, {})[path] = file
        if file not in self.sha:
            self.sha[file] = sha256_of(file)
        sha = self.sha[file]
        self.cdn.files[f"/blobs/{sha}"] = file
        self.cdn.etags[f"/blobs/{sha}"] = f'"{sha}"'

    def __enter__(self) -> HubServer:
        self.cdn.__enter__()
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.cdn.__exit__()

    def _send(self, h, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        h.send_response(status)
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(body)
        self.log.add(h.command, h.path, h.headers.get("Range"), status, len(body) if h.command != "HEAD" else 0,
                     authorization=h.headers.get("Authorization"))

    def _answer(self, h: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(h.path)
        path = unquote(parts.path)
        m = re.match(r"^/api/models/([^/]+/[^/]+)/refs$", path)  # llama.cpp asks for the branches first
        if m and m.group(1) in self.repos:
            body = {"branches": [{"name": "main", "ref": "refs/heads/main", "targetCommit": self.COMMIT}], "tags": []}
            return self._send(h, 200, json.dumps(body).encode(), {"Content-Type": "application/json"})
        m = re.match(r"^/api/models/([^/]+/[^/]+)/tree/([^/]+)$", path)
        if m:
            repo = m.group(1)
            if repo not in self.repos:
                return self._send(h, 401, b'{"error":"Repository not found"}',
                                  {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"})
            assert parse_qs(parts.query).get("recursive") == ["true"], parts.query
            entries = []
            for p, file in self.repos[repo].items():
                size = file.stat().st_size
                entries.append({"type": "file", "oid": hashlib.sha1(p.encode()).hexdigest(), "size": size, "path": p,
                                "lfs": {"oid": self.sha[file], "size": size, "pointerSize": 134}})
            return self._send(h, 200, json.dumps(entries).encode(), {"Content-Type": "application/json"})
        m = re.match(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", path)
        if m:
            repo, _rev, file_path = m.groups()
            common = {"X-Repo-Commit": self.COMMIT}
            if (repo, file_path) in self.gated:
                return self._send(h, 401, b"", {**common, "X-Error-Code": "GatedRepo",
                                                "X-Error-Message": "Access to model is restricted."})
            file = self.repos.get(repo, {}).get(file_path)
            if file is None or (repo, file_path) in self.missing:
                return self._send(h, 404, b"", {**common, "X-Error-Code": "EntryNotFound",
                                                "X-Error-Message": "Entry not found"})
            sha = self.sha[file]
            size = file.stat().st_size
            return self._send(h, 302, b"", {**common, "Location": f"{self.cdn.base}/blobs/{sha}?sig=x",
                                            "X-Linked-Etag": f'"{sha}"', "X-Linked-Size": str(size), "ETag": '"ptr"'})
        return self._send(h, 404, b"", {"X-Error-Code": "RepoNotFound"})
