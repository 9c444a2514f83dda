"""Download a remote model before running it: every shard, with a progress bar, resumable.

Hub models (``-hf``) go into the Hugging Face cache with ``hf_hub_download`` (shared with every
other tool that uses it). Plain URLs go to ``cache_dir()/downloads`` with huggingface_hub's
``http_get`` (progress bar, resumes a ``.incomplete`` file with a range request), one folder per
URL, and are fetched again when the server's ETag changes.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from llamasplit.errors import FetchError, ModelReadError


def local_copy(src, *, say=None) -> Path:
    """The local path of the model ``src`` names (a ``locate.ModelSource``), downloading it if remote."""
    if src.kind == "file":
        return Path(src.location)
    if src.kind == "hf":
        from llamasplit.model import hub

        ref = src.hf_ref()
        try:
            files = hub.choose(ref, hub.list_files(ref))
        except hub.HubUnreachable:
            local = hub.cached_files(ref)  # downloaded before: the HF cache answers, as in llama.cpp
            if not local:
                raise
            return local[hub.choose(ref, [hub.HubFile(p, None, None) for p in local])[0].path]
        if say:
            total = sum(f.size or 0 for f in files)
            from llamasplit.untrusted import printable

            say(f"llamasplit: downloading {printable(ref.repo)}/{printable(files[0].path)}" + (f" and {len(files) - 1} more shards" if len(files) > 1 else "")
                + (f" ({total / 1e9:.2f} GB) into the Hugging Face cache" if total else ""))
        return hub.download(ref, files)
    from llamasplit.model.locate import open_model

    profile = open_model(src)
    paths = [download_url(u, say=say) for u in profile.files]
    return paths[0]


def _downloads_dir() -> Path:
    from llamasplit.cache import cache_dir

    return cache_dir() / "downloads"


def download_url(url: str, *, say=None) -> Path:
    """``url`` into ``cache_dir()/downloads/<hash of url>/<name>``; reused while its ETag is unchanged."""
    from urllib.parse import unquote, urlsplit

    from huggingface_hub.file_download import http_get

    from llamasplit.model import remote

    rf = remote.head(url)
    name = unquote(Path(urlsplit(url).path).name) or "model.gguf"
    folder = _downloads_dir() / hashlib.sha256(url.split("?")[0].encode()).hexdigest()[:16]
    target = folder / name
    etag_file = folder / (name + ".etag")
    if target.exists() and (rf.file_bytes is None or target.stat().st_size == rf.file_bytes):
        try:
            same = etag_file.read_text() == (rf.etag or "")
        except OSError:
            same = False
        if same:
            return target
    folder.mkdir(parents=True, exist_ok=True)
    part = folder / (name + ".incomplete")
    if say:
        say(f"llamasplit: downloading {remote.clean(url)} to {target}")
    try:
        with open(part, "ab") as fh:
            resume = fh.tell()
            if rf.file_bytes is not None and resume > rf.file_bytes:
                fh.truncate(0)
                resume = 0
            http_get(rf.fetch_url, fh, resume_size=resume, headers=rf.headers, expected_size=rf.file_bytes,
                     displayed_filename=name)
    except ModelReadError:
        raise
    except Exception as exc:
        inner = remote.convert_error(url, exc)
        raise FetchError(inner.message, remedy=inner.remedy) from exc
    os.replace(part, target)
    etag_file.write_text(rf.etag or "")
    return target
