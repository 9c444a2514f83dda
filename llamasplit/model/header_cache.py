"""A cache of parsed GGUF headers under ``cache_dir()/headers``: read a header once, plan from it again.

An entry is found by a ``HeaderKey``: what the file is (a URL, a Hub file, a local path) and which
version of it (an ETag or commit for a remote file; size, mtime and inode for a local one), so a
changed file misses and is read again. The parser's own source is part of every key, so a reader
that checks more (or differently) never trusts what an older one wrote. Entries are JSON (no code
runs on load), written atomically (temporary file, then ``os.replace``), and a damaged entry is a
miss. Remote reads use it (``model.remote``); a local-file variant keys by ``HeaderKey.for_file``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from llamasplit.model.gguf_reader import ArraySummary, RawHeader, RawTensor

FORMAT = 1
"""Version of the entry layout below."""

MAX_ENTRIES = 512
"""Entries kept; the least recently written go first (an entry is a few to a few hundred KiB)."""


@dataclass(frozen=True)
class HeaderKey:
    """What a cached header is of: ``kind`` (``url``, ``hf``, ``file``), ``location`` and ``version``."""

    kind: str
    location: str
    version: str

    @classmethod
    def for_file(cls, path: str | os.PathLike[str]) -> HeaderKey:
        """A local file, by its resolved path; the version is its size, mtime and inode."""
        real = os.path.realpath(path)
        st = os.stat(real)
        return cls("file", real, f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}")

    def digest(self) -> str:
        text = json.dumps([FORMAT, parser_fingerprint(), self.kind, self.location, self.version])
        return hashlib.sha256(text.encode()).hexdigest()[:40]


@lru_cache(maxsize=1)
def parser_fingerprint() -> str:
    """A hash of the reader's source: a changed parser invalidates every entry."""
    from llamasplit.model import gguf_reader

    return hashlib.sha256(Path(gguf_reader.__file__).read_bytes()).hexdigest()[:16]


def default_dir() -> Path:
    from llamasplit.cache import cache_dir

    return cache_dir() / "headers"


class HeaderCache:
    """Parsed headers on disk, one JSON file per ``HeaderKey``."""

    def __init__(self, directory: str | os.PathLike[str] | None = None) -> None:
        self.directory = Path(directory) if directory is not None else default_dir()

    def _path(self, key: HeaderKey) -> Path:
        return self.directory / f"{key.digest()}.json"

    def get(self, key: HeaderKey) -> RawHeader | None:
        """The header stored for ``key``, or ``None`` (absent, unreadable or from another key)."""
        try:
            data = json.loads(self._path(key).read_text(encoding="utf-8"))
            if data.get("key") != [key.kind, key.location, key.version]:
                return None
            return _header_from_json(data["header"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def put(self, key: HeaderKey, header: RawHeader) -> None:
        """Store ``header`` for ``key`` atomically; a cache that cannot be written is skipped silently."""
        data = {"key": [key.kind, key.location, key.version], "header": _header_to_json(header)}
        text = json.dumps(data, separators=(",", ":"))
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=self.directory)
        except OSError:
            return
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
            os.replace(tmp, self._path(key))
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            return
        self._prune()

    def _prune(self) -> None:
        with contextlib.suppress(OSError):
            entries = sorted(self.directory.glob("*.json"), key=lambda p: p.stat().st_mtime_ns)
            for old in entries[:-MAX_ENTRIES]:
                with contextlib.suppress(OSError):
                    old.unlink()


def _value_to_json(value: Any) -> Any:
    if isinstance(value, ArraySummary):
        return {"__array__": [value.element_type, value.count]}
    return value


def _value_from_json(value: Any) -> Any:
    if isinstance(value, dict):  # GGUF has no map type: a dict is always a skipped array
        element_type, count = value["__array__"]
        return ArraySummary(int(element_type), int(count))
    return value


def _header_to_json(h: RawHeader) -> dict[str, Any]:
    return {
        "path": str(h.path),
        "version": h.version,
        "metadata": {k: _value_to_json(v) for k, v in h.metadata.items()},
        "tensors": [[t.name, t.ggml_type, list(t.shape), t.n_bytes, t.offset] for t in h.tensors],
        "file_bytes": h.file_bytes,
        "data_offset": h.data_offset,
        "alignment": h.alignment,
        "header_bytes": h.header_bytes,
    }


def _header_from_json(d: dict[str, Any]) -> RawHeader:
    return RawHeader(
        path=d["path"],
        version=int(d["version"]),
        metadata={k: _value_from_json(v) for k, v in d["metadata"].items()},
        tensors=tuple(RawTensor(n, int(t), tuple(int(x) for x in s), int(b), int(o)) for n, t, s, b, o in d["tensors"]),
        file_bytes=int(d["file_bytes"]),
        data_offset=int(d["data_offset"]),
        alignment=int(d["alignment"]),
        header_bytes=int(d["header_bytes"]),
    )
