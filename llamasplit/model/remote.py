"""GGUF headers over HTTP: range requests that grow until the tensor table ends, never tensor data.

The parser is the local one (``gguf_reader.parse_header``) over a prefix of the file that grows on
demand: each request asks for ``max(what the parser needs, 1/5 more than we hold, one chunk)``,
so the bytes transferred stay under 1.2 x the header plus one chunk. To save round trips, the end
of a skipped vocabulary is guessed from the strings read so far (their mean length); that guess
can overshoot only by its own error; and numeric arrays the parser steps over (a vocabulary's
scores) are not fetched at all (``benchmarks/bench_remote.py``: 1.25 x the header for SmolLM2,
0.91 x for Gemma-3). The header is untrusted like a local one, with the same bounds, and a cap on
how much header we are willing to fetch.

HTTP goes through ``huggingface_hub``'s shared ``httpx`` client (``get_session``): its offline
switch (``HF_HUB_OFFLINE``), its redirects (the Hub sends files to a CDN), its retries with
exponential backoff on 429/5xx and ``Retry-After``. The token (``HF_TOKEN`` or the stored login)
is sent only to the Hub's own host. A server that ignores ``Range`` is refused: we never download
a model to read its header. Every failure is one ``ModelReadError`` line: gated or private (401/403),
not found (404), no network, a timeout, offline mode.

Headers are cached (``model.header_cache``) by URL and ETag: planning the same file again reads
nothing but a ``HEAD``; a changed file has another ETag and is read again.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from llamasplit.errors import ModelReadError
from llamasplit.model.gguf_reader import RawHeader, parse_header

MiB = 1 << 20


@dataclass(frozen=True)
class RemoteOptions:
    """How remote headers are read."""

    chunk_bytes: int = MiB // 2
    """First request, and the least each further one asks for."""
    max_header_bytes: int = 256 * MiB
    """The most header we fetch; real ones are under 20 MiB (a 256k vocabulary with merges)."""
    timeout_s: float = 20.0
    retries: int = 4
    """Retries after a 429/5xx, a timeout or a dropped connection (huggingface_hub's backoff)."""
    backoff_s: float = 0.5
    """First wait between retries; doubles up to 8 s, or what ``Retry-After`` says."""


@dataclass
class Transfer:
    """What was sent over the network for one model: requests and body bytes (a running count)."""

    requests: int = 0
    body_bytes: int = 0
    cached: list[str] = field(default_factory=list)
    """Files whose header came from the cache."""


@dataclass(frozen=True)
class RemoteFile:
    """One file on a server: its name for messages, where range requests go, its size and version."""

    url: str
    """What the user named (the Hub's resolve URL for Hub files)."""
    fetch_url: str
    """Where the bytes are (after redirects: a CDN for Hub files)."""
    file_bytes: int | None
    etag: str | None
    headers: dict[str, str] = field(default_factory=dict, compare=False, repr=False)
    """Sent with every request to ``fetch_url`` (auth only when it is the Hub's own host)."""


def is_url(text: str) -> bool:
    """``http://`` or ``https://``.

    >>> is_url("https://huggingface.co/a/b/resolve/main/m.gguf"), is_url("models/m.gguf")
    (True, False)
    """
    return text.lower().startswith(("http://", "https://"))


def clean(text: object, limit: int = 300) -> str:
    """Strings from a server (or a URL) are untrusted: ``untrusted.printable``."""
    from llamasplit.untrusted import printable

    return printable(str(text), limit=limit)


def hub_endpoint() -> str:
    """The Hub's address: ``HF_ENDPOINT`` as it is now, else huggingface_hub's default."""
    import os

    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def hub_token() -> str | None:
    """``HF_TOKEN``, else huggingface_hub's stored login (``hf auth login``); ``None`` when neither."""
    import os

    if os.environ.get("HF_TOKEN"):
        return os.environ["HF_TOKEN"]
    from huggingface_hub import get_token

    try:
        return get_token()
    except Exception:  # an OIDC exchange or a token file that cannot be read: go anonymous
        return None


def _same_host(a: str, b: str) -> bool:
    return urlsplit(a).netloc.lower() == urlsplit(b).netloc.lower()


def request_headers(url: str, *, token: str | None = None) -> dict[str, str]:
    """For the Hub's own host, huggingface_hub's headers with the token (``HF_TOKEN`` or the stored
    login); for any other host (a CDN, the user's server) only our user agent: no token, and none of
    huggingface_hub's user-agent probing (which itself asks the Hub for a registry)."""
    if _same_host(url, hub_endpoint()):
        from huggingface_hub.utils import build_hf_headers

        headers = build_hf_headers(token=(token or hub_token()) or False)
    else:
        from llamasplit import __version__

        headers = {"User-Agent": f"llamasplit/{__version__}"}
    headers["Accept-Encoding"] = "identity"  # byte ranges of the file itself, never of a compressed body
    return headers


def _fail(url: str, status: int | None, what: str | None = None) -> ModelReadError:
    url = clean(url)
    if status in (401, 403):
        return ModelReadError(
            f"{url}: access denied (HTTP {status}): the repository is gated or private",
            remedy="accept the model's terms on its Hub page and log in (`hf auth login`) or set HF_TOKEN",
        )
    if status == 404:
        return ModelReadError(f"{url}: not found (HTTP 404)", remedy="check the URL, the repository and the file name")
    if status == 416:
        return ModelReadError(f"{url}: the server says the file is shorter than its size (HTTP 416)",
                              remedy="the file changed while it was read; try again")
    return ModelReadError(f"{url}: {what or f'HTTP {status}'}", remedy="try again later, or download the file and plan the local copy")


def convert_error(url: str, exc: BaseException) -> ModelReadError:
    """A foreign error (httpx, huggingface_hub) as one line naming ``url``."""
    import httpx2
    from huggingface_hub import errors as hf_errors

    if isinstance(exc, hf_errors.OfflineModeIsEnabled):
        return ModelReadError(f"{clean(url)}: offline mode (HF_HUB_OFFLINE is set)",
                              remedy="unset HF_HUB_OFFLINE, or give the path of a downloaded file")
    if isinstance(exc, hf_errors.HfHubHTTPError) and exc.response is not None:
        return _fail(url, exc.response.status_code)
    if isinstance(exc, httpx2.ConnectError):
        host = clean(urlsplit(url).netloc)
        return ModelReadError(f"{clean(url)}: cannot connect to {host} (no network?)",
                              remedy="check the network and the address, or give a local file")
    if isinstance(exc, httpx2.TimeoutException):
        return ModelReadError(f"{clean(url)}: the server did not answer in time",
                              remedy="try again later; the network or the server is slow")
    if isinstance(exc, httpx2.HTTPError):
        return ModelReadError(f"{clean(url)}: {type(exc).__name__}: {clean(exc, 120)}", remedy="try again later")
    return ModelReadError(f"{clean(url)}: {type(exc).__name__}: {clean(exc, 120)}", remedy="try again later")


def _retry_kwargs(options: RemoteOptions) -> dict[str, Any]:
    import httpx2

    # a refused connection or an unknown host fails at once (one line); a dropped or slow one is retried
    transient = (httpx2.TimeoutException, httpx2.ReadError, httpx2.WriteError, httpx2.RemoteProtocolError)
    return dict(max_retries=options.retries, base_wait_time=options.backoff_s, max_wait_time=8.0,
                timeout=options.timeout_s, retry_on_exceptions=transient)


def quiet_hub_logs() -> None:
    """huggingface_hub logs each retry as a warning; the CLI says what happened in one line instead."""
    import logging

    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)


def head(url: str, options: RemoteOptions = RemoteOptions(), *, transfer: Transfer | None = None) -> RemoteFile:
    """``HEAD`` a plain URL (redirects followed): where its bytes are, its size and ETag."""
    from huggingface_hub.utils import http_backoff

    headers = request_headers(url)
    try:
        response = http_backoff("HEAD", url, headers=headers, **_retry_kwargs(options))
    except Exception as exc:
        raise convert_error(url, exc) from exc
    if transfer is not None:
        transfer.requests += 1
    if response.status_code >= 400:
        raise _fail(url, response.status_code)
    final = str(response.url)
    if response.headers.get("Accept-Ranges", "").lower() == "none":
        raise _no_range(url)
    size = response.headers.get("X-Linked-Size") or response.headers.get("Content-Length")
    etag = response.headers.get("X-Linked-Etag") or response.headers.get("ETag")
    return RemoteFile(url=url, fetch_url=final, file_bytes=int(size) if size and size.isdigit() else None,
                      etag=etag, headers=request_headers(final))


def _no_range(url: str) -> ModelReadError:
    return ModelReadError(
        f"{clean(url)}: the server does not answer range requests, so reading the header would download the whole file",
        remedy="download the file and plan the local copy",
    )


_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


def fetch_range(rf: RemoteFile, start: int, end: int, options: RemoteOptions, transfer: Transfer) -> tuple[bytes, int | None]:
    """Bytes ``[start, end)`` of the file and the file's size from ``Content-Range``."""
    from huggingface_hub.utils import http_stream_backoff

    headers = {**rf.headers, "Range": f"bytes={start}-{end - 1}"}
    try:
        with http_stream_backoff("GET", rf.fetch_url, headers=headers, **_retry_kwargs(options)) as response:
            transfer.requests += 1
            if response.status_code == 200:
                raise _no_range(rf.url)  # leaving the block closes the connection: no body is read
            if response.status_code != 206:
                raise _fail(rf.url, response.status_code)
            match = _CONTENT_RANGE.match(response.headers.get("Content-Range", "").strip())
            if not match or int(match.group(1)) != start:
                raise ModelReadError(f"{clean(rf.url)}: the server answered another byte range than asked "
                                     f"({clean(response.headers.get('Content-Range', 'none'))})",
                                     remedy="download the file and plan the local copy")
            total = None if match.group(3) == "*" else int(match.group(3))
            want = end - start
            parts, got = [], 0
            for piece in response.iter_bytes():
                parts.append(piece)
                got += len(piece)
                if got >= want:
                    break
            transfer.body_bytes += got
            return b"".join(parts)[:want], total
    except ModelReadError:
        raise
    except Exception as exc:
        raise convert_error(rf.url, exc) from exc


def read_header(rf: RemoteFile, options: RemoteOptions = RemoteOptions(), *, transfer: Transfer | None = None,
                require_data: bool = True) -> RawHeader:
    """Parse the header of a remote file, fetching only as much of it as the parser reaches."""
    transfer = transfer if transfer is not None else Transfer()
    first_end = options.chunk_bytes if rf.file_bytes is None else min(options.chunk_bytes, rf.file_bytes)
    if first_end <= 0:
        raise ModelReadError(f"{clean(rf.url)}: the server says the file is empty", remedy="check the URL")
    data, total = fetch_range(rf, 0, first_end, options, transfer)
    file_bytes = total if total is not None else rf.file_bytes
    if file_bytes is None:
        raise ModelReadError(f"{clean(rf.url)}: the server does not say how large the file is",
                             remedy="download the file and plan the local copy")
    if file_bytes < 24 or len(data) < min(24, file_bytes):
        raise ModelReadError(f"{clean(rf.url)}: not a GGUF file: only {file_bytes} bytes", remedy="check the URL")
    buf = bytearray(data)

    def grow(end: int, hint: int | None, start: int) -> bytearray:
        have = len(buf)
        begin = max(have, start)  # what the parser skipped (a score array's data) is never fetched
        target = max(end, begin + max(options.chunk_bytes, begin // 5))
        if hint is not None and end <= hint <= begin + 16 * max(options.chunk_bytes, begin):
            target = max(target, hint)
        target = min(target, file_bytes)
        if target > options.max_header_bytes:
            raise ModelReadError(
                f"{clean(rf.url)}: the header goes on past {options.max_header_bytes >> 20} MiB",
                remedy="this is not a plausible GGUF header; check the file",
            )
        more, _ = fetch_range(rf, begin, target, options, transfer)
        if len(more) < target - begin:
            raise ModelReadError(f"{clean(rf.url)}: the server sent {len(more)} of {target - begin} bytes asked for",
                                 remedy="try again")
        if begin > have:
            buf.extend(bytes(begin - have))  # placeholders the parser has already stepped over
        buf.extend(more)
        return buf

    return parse_header(buf, rf.url, file_bytes, require_data=require_data, grow=grow)
