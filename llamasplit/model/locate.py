"""Where a model is: a local path, an ``http(s)://`` URL of a ``.gguf``, or ``-hf user/repo[:quant]``
(with ``--hf-file``); and its ``ModelProfile`` read from wherever that is.

``open_model`` is the one door every command and the Python API go through. Local files are read
as before (``profile.read_model``); remote ones header-only over HTTP (``model.remote``), every
shard of a split model, each header cached by URL (or Hub path) and version (``model.header_cache``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import PurePosixPath
from urllib.parse import urlsplit, urlunsplit

from llamasplit.errors import UsageError
from llamasplit.model.profile import ModelProfile


@dataclass(frozen=True)
class ModelSource:
    """A model's location as the user gave it: ``kind`` is ``file``, ``url`` or ``hf``."""

    kind: str
    location: str
    """The path, the URL, or the ``-hf`` spec."""
    hf_file: str | None = None

    @property
    def is_remote(self) -> bool:
        return self.kind != "file"

    def hf_ref(self):
        from llamasplit.model.hub import parse_hf

        return parse_hf(self.location, self.hf_file)


def llama_model_args(location: str) -> list[str]:
    """How llama.cpp is told where the model is: ``-m PATH``, or ``-mu URL`` (common/arg.cpp
    ``--model-url``: llama.cpp downloads it) for a model planned from its remote header.

    >>> llama_model_args("m.gguf"), llama_model_args("https://h/m.gguf")
    (['-m', 'm.gguf'], ['-mu', 'https://h/m.gguf'])
    """
    if location.lower().startswith(("http://", "https://")):
        return ["-mu", location]
    return ["-m", location]


def model_source(model: str | os.PathLike[str] | None = None, *, hf: str | None = None,
                 hf_file: str | None = None) -> ModelSource:
    """Which of the three ways the model was named; exactly one must be given."""
    from llamasplit.model.remote import is_url

    if hf and model:
        raise UsageError(f"give either MODEL ({model}) or -hf {hf}, not both")
    if hf:
        return ModelSource("hf", hf, hf_file)
    if hf_file:
        raise UsageError("--hf-file needs -hf user/repo", remedy="e.g. -hf user/repo --hf-file model-Q4_K_M.gguf")
    if model is None or str(model) == "":
        raise UsageError("no model given", remedy="give a .gguf path, an https:// URL of one, or -hf user/repo[:quant]")
    text = os.fspath(model)
    return ModelSource("url" if is_url(text) else "file", text)


def open_model(model: str | os.PathLike[str] | ModelSource | None = None, *, hf: str | None = None,
               hf_file: str | None = None, require_data: bool = True, transfer=None, options=None, cache=None) -> ModelProfile:
    """The ``ModelProfile`` of a model wherever it is; remote ones from their headers alone."""
    src = model if isinstance(model, ModelSource) else model_source(model, hf=hf, hf_file=hf_file)
    if src.kind == "file":
        from llamasplit.model.profile import read_model

        return read_model(src.location, require_data=require_data)
    from llamasplit.model.header_cache import HeaderCache
    from llamasplit.model.remote import RemoteOptions, Transfer

    options = options or RemoteOptions()
    transfer = transfer if transfer is not None else Transfer()
    cache = cache if cache is not None else HeaderCache()
    if src.kind == "url":
        return read_url_model(src.location, options=options, transfer=transfer, cache=cache, require_data=require_data)
    from llamasplit.model import hub

    ref = src.hf_ref()
    try:
        listing = hub.list_files(ref)
    except hub.HubUnreachable:
        # as llama.cpp does: without the Hub, a model already in the local HF cache still answers
        local = hub.cached_files(ref)
        if not local:
            raise
        chosen = hub.choose(ref, [hub.HubFile(p, None, None) for p in local])
        from llamasplit.model.profile import read_model

        return read_model(local[chosen[0].path], require_data=require_data)
    files = hub.choose(ref, listing)
    return read_hub_model(ref, files, options=options, transfer=transfer, cache=cache, require_data=require_data)


def _with_name(url: str, name: str) -> str:
    """The same URL with its last path segment replaced (the query, e.g. a signature, dropped)."""
    parts = urlsplit(url)
    path = str(PurePosixPath(parts.path).with_name(name))
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def _url_name(url: str) -> str:
    from urllib.parse import unquote

    return unquote(PurePosixPath(urlsplit(url).path).name)


def read_url_model(url: str, *, options, transfer, cache, require_data: bool = True) -> ModelProfile:
    """A model from a plain URL (any shard of a split model: the others are found by name)."""
    from llamasplit.model.profile import profile_from_headers, shard_names

    first = _url_header(url, options, transfer, cache, require_data)
    names = shard_names(_url_name(url), first, url)
    if len(names) == 1:
        return profile_from_headers(url, [first])
    urls = [_with_name(url, n) for n in names]
    given = _url_name(url)
    headers = _each(lambda nu, mine: first if nu[0] == given else _url_header(nu[1], options, mine, cache, require_data),
                    list(zip(names, urls)), transfer)
    return profile_from_headers(urls[0], headers)


def _url_header(url, options, transfer, cache, require_data):
    from llamasplit.model import remote
    from llamasplit.model.header_cache import HeaderKey

    rf = remote.head(url, options, transfer=transfer)
    key = HeaderKey("url", url, f"{rf.etag}:{rf.file_bytes}") if rf.etag else None
    if key is not None:
        cached = cache.get(key)
        if cached is not None:
            transfer.cached.append(url)
            return cached
    header = remote.read_header(rf, options, transfer=transfer, require_data=require_data)
    if key is not None:
        cache.put(key, header)
    return header


def read_hub_model(ref, files, *, options, transfer, cache, require_data: bool = True) -> ModelProfile:
    """A model from the Hub: ``files`` are its shards (``hub.choose``), headers cached by path and LFS hash."""
    from llamasplit.model import hub, remote
    from llamasplit.model.header_cache import HeaderKey
    from llamasplit.model.profile import profile_from_headers

    def one(f, mine):
        url = hub.file_url(ref, f.path)
        key = HeaderKey("hf", f"{hub.hub_endpoint()}/{ref.repo}/{f.path}", f"{f.oid}:{f.size}") if f.oid else None
        cached = cache.get(key) if key is not None else None
        if cached is not None:
            mine.cached.append(url)
            return cached
        rf = _hub_file(url, options, mine)
        header = remote.read_header(rf, options, transfer=mine, require_data=require_data)
        if key is not None:
            cache.put(key, header)
        return header

    headers = _each(one, files, transfer)
    return profile_from_headers(hub.file_url(ref, files[0].path), headers)


def _each(read, items, transfer, workers: int = 4):
    """``read(item, transfer)`` for every item, the shards of a split model 4 at a time; counts summed."""
    from concurrent.futures import ThreadPoolExecutor

    from llamasplit.model.remote import Transfer

    if len(items) == 1:
        return [read(items[0], transfer)]
    counts = [Transfer() for _ in items]
    with ThreadPoolExecutor(max_workers=min(workers, len(items))) as pool:
        out = list(pool.map(read, items, counts))
    for c in counts:
        transfer.requests += c.requests
        transfer.body_bytes += c.body_bytes
        transfer.cached.extend(c.cached)
    return out


def _hub_file(url: str, options, transfer):
    """A Hub file's metadata through huggingface_hub (``get_hf_file_metadata``: its Hub-aware redirects)."""
    from huggingface_hub import get_hf_file_metadata

    from llamasplit.model import remote

    token = remote.hub_token()
    try:
        meta = get_hf_file_metadata(url, token=token or False, timeout=options.timeout_s, endpoint=remote.hub_endpoint(),
                                    retry_on_errors=True)
    except Exception as exc:
        raise remote.convert_error(url, exc) from exc
    transfer.requests += 1
    location = meta.location or url
    return remote.RemoteFile(url=url, fetch_url=location, file_bytes=meta.size, etag=meta.etag,
                             headers=remote.request_headers(location, token=token))
