"""A small cache of parsed local headers, so that `inspect` and `plan` on the same file start fast.

Keyed by the file's real path; an entry is used only while every file it was read from (all shards)
still has the same size, mtime and inode, and the reader's own source is unchanged. Files changed
in the last two seconds are not stored (a file rewritten within the clock's granularity would look
unchanged: git's "racy index" rule). Entries are written atomically (temporary file, then rename),
owned by this user, and the cache keeps at most ``MAX_ENTRIES`` of them. A damaged or foreign entry
is ignored and read again from the file. Remote headers have their own cache (keyed by URL + ETag).
"""

from __future__ import annotations

import hashlib
import os
import pickle
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from llamasplit.cache import cache_dir

MAX_ENTRIES = 256
RACY_S = 2.0
_FORMAT = 1


def _stat_key(path: str) -> tuple[str, int, int, int]:
    st = os.stat(path)
    return (path, st.st_size, st.st_mtime_ns, st.st_ino)


def _code_key() -> tuple[tuple[str, int, int], ...]:
    """The reader's own sources: an edited reader never reads an entry its older self wrote."""
    here = Path(__file__).resolve().parent
    out = []
    for name in ("gguf_reader.py", "profile.py", "profile_cache.py", "shapes.py"):
        try:
            st = (here / name).stat()
        except OSError:
            continue
        out.append((name, st.st_size, st.st_mtime_ns))
    return tuple(out)


def _entry_path(real: str, variant: str, env: Mapping[str, str] | None) -> Path:
    digest = hashlib.sha256(f"{_FORMAT}\0{real}\0{variant}".encode()).hexdigest()[:32]
    return cache_dir(env) / "headers" / f"{digest}.pickle"


def _load(entry: Path, real: str) -> Any | None:
    try:
        st = entry.stat()
        if hasattr(os, "getuid") and st.st_uid != os.getuid():
            return None
        with open(entry, "rb") as fh:
            data = pickle.load(fh)
        if not isinstance(data, dict) or data.get("format") != _FORMAT or data.get("code") != _code_key():
            return None
        if data.get("path") != real:
            return None
        for key in data["files"]:
            if _stat_key(key[0]) != tuple(key):
                return None
        return data["value"]
    except Exception:  # a damaged, old or foreign entry: read the file again
        return None


def _store(entry: Path, real: str, files: list[str], value: Any) -> None:
    now = time.time()
    keys = [_stat_key(os.path.realpath(f)) for f in files]
    if any(now - k[2] / 1e9 < RACY_S for k in keys):
        return
    entry.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": _FORMAT, "code": _code_key(), "path": real, "files": keys, "value": value}
    fd, tmp = tempfile.mkstemp(dir=entry.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as fh:
            pickle.dump(payload, fh, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, entry)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _prune(entry.parent)


def _prune(folder: Path) -> None:
    try:
        entries = sorted(folder.glob("*.pickle"), key=lambda p: p.stat().st_mtime)
    except OSError:
        return
    for old in entries[:-MAX_ENTRIES]:
        try:
            old.unlink()
        except OSError:
            pass


def cached(path: str | os.PathLike[str], read: Callable[[], Any], files: Callable[[Any], list[str]],
           variant: str = "", env: Mapping[str, str] | None = None) -> Any:
    """``read()`` the file at ``path``, or return what an earlier ``read()`` of the unchanged file gave.

    ``files(value)`` names every file the value was read from (the shards of a split model).
    Caching never changes the answer: errors are never cached, and any doubt reads the file again.
    """
    try:
        real = os.path.realpath(path)
        entry = _entry_path(real, variant, env)
    except (OSError, ValueError):
        return read()
    hit = _load(entry, real)
    if hit is not None:
        return hit
    value = read()
    try:
        _store(entry, real, files(value), value)
    except (OSError, pickle.PicklingError, TypeError, AttributeError):
        pass  # a read-only or full cache is not an error
    return value


def read_model(path: str | os.PathLike[str], *, require_data: bool = True, env: Mapping[str, str] | None = None):
    """``profile.read_model`` through the cache: what the CLI calls for a local file."""
    from llamasplit.model import profile

    return cached(path, lambda: profile.read_model(path, require_data=require_data), lambda m: list(m.files),
                  variant=f"profile:{require_data}", env=env)
