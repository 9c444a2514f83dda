"""The children's logs: one folder, bounded files, kept only when something failed.

Every llama.cpp child (llama-server, llama-completion, ggml-rpc-server) writes its output to a
file in ``cache_dir()/logs`` (``$LLAMASPLIT_CACHE/logs``; it was the temp directory, where a test
run left 57 files and 56 MB). The output goes through a pipe and a thread of ours that keeps the
first ``HEAD_BYTES`` (where llama.cpp logs its buffer sizes, which ``verify`` reads) and the most
recent output after it, so no file grows past ``MAX_LOG_BYTES`` however long a worker runs (an RPC
worker's log grew to 29 MB). ``ManagedProcess.stop`` removes the file when the child ended well
(we stopped it, or it exited 0) and keeps it when the child failed or an error names it
(``keep_log``); ``new_log`` prunes kept logs to the newest ``MAX_KEPT_LOGS``.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path

from llamasplit.cache import cache_dir

MAX_LOG_BYTES = 8 << 20
"""Largest a log file gets."""
HEAD_BYTES = 2 << 20
"""The start of the output always kept (llama.cpp's load-time lines)."""
MAX_KEPT_LOGS = 50
"""Logs of failed runs kept in the folder; older ones go when a new log starts (if a day old)."""
_PRUNE_AGE_S = 24 * 3600
_CUT = b"\n[llamasplit: output cut here to keep the log under %d MiB]\n"


def log_dir(env: Mapping[str, str] | None = None) -> Path:
    """``cache_dir()/logs``, created on first use."""
    folder = cache_dir(env) / "logs"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def new_log(prefix: str, env: Mapping[str, str] | None = None) -> Path:
    """A fresh, empty log file named ``PREFIX-XXXX.log`` in ``log_dir()``."""
    folder = log_dir(env)
    _prune(folder)
    fd, name = tempfile.mkstemp(prefix=f"{prefix}-", suffix=".log", dir=folder)
    os.close(fd)
    return Path(name)


def _prune(folder: Path) -> None:
    """Remove the oldest logs beyond ``MAX_KEPT_LOGS``, only those a day old (a quiet, long-running
    worker may still own an old one)."""
    try:
        entries = sorted(((p.stat().st_mtime, p) for p in folder.glob("*.log")), reverse=True)
    except OSError:
        return
    cutoff = time.time() - _PRUNE_AGE_S
    for mtime, path in entries[MAX_KEPT_LOGS:]:
        if mtime < cutoff:
            with contextlib.suppress(OSError):
                path.unlink()


class LogPump:
    """Copies a child's output from a pipe into ``path``, keeping the head and the latest tail.

    The file holds the first ``head_bytes``; past ``max_bytes`` it is cut back to the head plus a
    marker line, and the newest output follows. Runs in a daemon thread until the pipe closes.
    """

    def __init__(self, read_fd: int, path: Path, *, max_bytes: int = MAX_LOG_BYTES, head_bytes: int = HEAD_BYTES) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.head_bytes = min(head_bytes, max_bytes // 2)
        self._fd = read_fd
        self._out = open(path, "wb", buffering=0)
        self._written = 0
        self._head_end: int | None = None  # file offset where the tail starts, once cut
        self.thread = threading.Thread(target=self._run, name=f"log {path.name}", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            while True:
                try:
                    chunk = os.read(self._fd, 65536)
                except OSError:
                    break
                if not chunk:
                    break
                self._write(chunk)
        finally:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            with contextlib.suppress(OSError):
                self._out.close()

    def _write(self, chunk: bytes) -> None:
        try:
            if self._written + len(chunk) > self.max_bytes:
                if self._head_end is None:  # first time: cut after the head, keep what came lately
                    keep = max(0, self.head_bytes - self._written)
                    self._out.write(chunk[:keep])
                    chunk = chunk[keep:]
                    recent = self._recent(self.head_bytes, (self.max_bytes - self.head_bytes) // 2)
                    self._out.truncate(min(self._out.tell(), self.head_bytes))
                    self._out.seek(min(self._out.tell(), self.head_bytes))
                    self._out.write(_CUT % (self.max_bytes >> 20))
                    self._head_end = self._out.tell()
                    self._out.write(recent)
                    self._written = self._out.tell()
                if self._written + len(chunk) > self.max_bytes:  # the tail is full: keep its newer half
                    half = (self.max_bytes - self._head_end) // 2
                    chunk = chunk[-half:]
                    recent = self._recent(self._head_end, half - len(chunk))
                    self._out.truncate(self._head_end)
                    self._out.seek(self._head_end)
                    self._out.write(recent)
                    self._written = self._out.tell()
            self._out.write(chunk)
            self._written += len(chunk)
        except (OSError, ValueError):
            pass  # the folder went away or the disk is full: the child keeps running

    def _recent(self, start: int, n: int) -> bytes:
        """The last ``n`` bytes written, none before offset ``start``."""
        if n <= 0 or self._written <= start:
            return b""
        with open(self.path, "rb") as fh:
            fh.seek(max(start, self._written - n))
            return fh.read(self._written - max(start, self._written - n))

    def join(self, timeout_s: float = 2.0) -> None:
        self.thread.join(timeout_s)
