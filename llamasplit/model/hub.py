"""``-hf user/repo[:quant]`` and ``--hf-file FILE``: which GGUF file(s) of a Hugging Face repo, as llama.cpp picks them.

The choice follows the pinned llama.cpp (common/download.cpp):

- ``common_download_split_repo_tag``: split on ``:``, the tag is the last part, the repo the first,
  and the repo must be exactly ``user/model``;
- ``find_best_model``: the first model file (in the Hub's listing order) whose path matches
  ``TAG[.-]`` case-insensitively, skipping shards other than ``-00001-of-``; with no tag ``Q4_K_M``,
  then ``Q8_0``, then the first model file at all; a model file is a ``.gguf`` whose name has none
  of mmproj, imatrix, mtp-, eagle3-, dflash-, dspark- (``gguf_filename_is_model``);
- ``--hf-file`` is the exact path in the repo and overrides the tag (``common_download_get_hf_plan``);
- ``get_split_files``: a split model is every file with the same prefix (tag included) and count
  (``get_gguf_split_info``: ``PREFIX-0000i-of-0000N.gguf``).

Listing, URLs, auth and downloads are huggingface_hub's (``HfApi.list_repo_tree``, ``hf_hub_url``,
``hf_hub_download``): no Hub client of our own. huggingface_hub is imported only when a Hub model
is asked for (start-up time of local commands).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from llamasplit.errors import ModelReadError, UsageError
from llamasplit.model.remote import clean, convert_error, hub_endpoint, hub_token

DEFAULT_TAGS = ("Q4_K_M", "Q8_0")
"""llama.cpp's tags when ``-hf`` names none (find_best_model)."""

_SIDECARS = ("mmproj", "imatrix", "mtp-", "eagle3-", "dflash-", "dspark-")
_SPLIT = re.compile(r"^(.+)-([0-9]{5})-of-([0-9]{5})$", re.IGNORECASE)
_TAG = re.compile(r"[-.]([A-Z0-9_]+)$", re.IGNORECASE)
_UNSAFE_PATH = re.compile(r"[\x00-\x1f\x7f-\x9f\\]|^/")


@dataclass(frozen=True)
class HubRef:
    """A model on the Hub as ``-hf`` names it: the repo, an optional quant tag or exact file, a revision."""

    repo: str
    tag: str | None = None
    file: str | None = None
    revision: str = "main"

    @property
    def spec(self) -> str:
        """The ``-hf`` argument: ``user/repo`` or ``user/repo:TAG``."""
        return f"{self.repo}:{self.tag}" if self.tag else self.repo


@dataclass(frozen=True)
class HubFile:
    """One file of a repo listing."""

    path: str
    size: int | None
    oid: str | None
    """The LFS sha256 (what the Hub's ETag is for LFS files), else the git blob id."""


def parse_hf(spec: str, hf_file: str | None = None, revision: str | None = None) -> HubRef:
    """``user/repo[:quant]`` as llama.cpp's ``common_download_split_repo_tag`` splits it.

    >>> parse_hf("ggml-org/gemma-3-1b-it-GGUF:q4_k_m")
    HubRef(repo='ggml-org/gemma-3-1b-it-GGUF', tag='q4_k_m', file=None, revision='main')
    >>> parse_hf("bartowski/x-GGUF").tag is None
    True
    """
    parts = spec.split(":")
    tag = parts[-1] if len(parts) > 1 else ""
    repo = parts[0]
    if len(repo.split("/")) != 2 or not all(repo.split("/")):
        raise UsageError(f"-hf {clean(spec)!r}: invalid Hugging Face repo, expected <user>/<model>[:quant]",
                         remedy="e.g. -hf ggml-org/gemma-3-1b-it-GGUF:Q4_K_M")
    return HubRef(repo=repo, tag=tag or None, file=hf_file or None, revision=revision or "main")


@dataclass(frozen=True)
class SplitInfo:
    prefix: str
    """The path without ``.gguf`` and the ``-0000i-of-0000N`` suffix (tag included)."""
    tag: str
    """The quantization tag in capitals (``Q4_K_M``), empty when the name has none."""
    index: int
    count: int


def split_info(path: str) -> SplitInfo | None:
    """llama.cpp's ``get_gguf_split_info``; ``None`` for a name not ending in ``.gguf``.

    >>> split_info("Q4_K_M/Model-Q4_K_M-00002-of-00003.gguf")
    SplitInfo(prefix='Q4_K_M/Model-Q4_K_M', tag='Q4_K_M', index=2, count=3)
    >>> split_info("model.q8_0.gguf").tag
    'Q8_0'
    """
    if not path.endswith(".gguf"):
        return None
    prefix, index, count = path[: -len(".gguf")], 1, 1
    m = _SPLIT.match(prefix)
    if m:
        prefix, index, count = m.group(1), int(m.group(2)), int(m.group(3))
    t = _TAG.search(prefix)
    return SplitInfo(prefix, t.group(1).upper() if t else "", index, count)


def is_model_file(path: str) -> bool:
    """llama.cpp's ``gguf_filename_is_model``: a ``.gguf`` that is no projector, imatrix or draft sidecar."""
    if not path.endswith(".gguf"):
        return False
    name = path.rsplit("/", 1)[-1]
    return not any(s in name for s in _SIDECARS)


def _first_shard_or_single(path: str) -> bool:
    info = split_info(path)
    return info is not None and not (info.count > 1 and info.index != 1)


def find_best_model(files: list[HubFile], tag: str | None) -> HubFile | None:
    """llama.cpp's ``find_best_model``: the file ``-hf repo[:tag]`` loads (the first shard of a split one).

    >>> fs = [HubFile(p, None, None) for p in ("m-Q8_0.gguf", "m-Q4_K_M-00002-of-00002.gguf",
    ...       "m-Q4_K_M-00001-of-00002.gguf", "mmproj-m-f16.gguf")]
    >>> find_best_model(fs, None).path, find_best_model(fs, "q8_0").path, find_best_model(fs, "Q5_K_M")
    ('m-Q4_K_M-00001-of-00002.gguf', 'm-Q8_0.gguf', None)
    """
    # llama.cpp builds std::regex(tag + "[.-]", icase); tags are plain words, so we escape them
    for t in [tag] if tag else list(DEFAULT_TAGS):
        pattern = re.compile(re.escape(t) + "[.-]", re.IGNORECASE)
        for f in files:
            if is_model_file(f.path) and pattern.search(f.path) and _first_shard_or_single(f.path):
                return f
    if not tag:
        for f in files:
            if is_model_file(f.path) and _first_shard_or_single(f.path):
                return f
    return None


def _quant_bits(path: str) -> int:
    """llama.cpp's ``extract_quant_bits``: the first number in the split-info tag (Q4_0 -> 4, F16 -> 16), else 0."""
    m = re.search(r"[0-9]+", tag_of(path))
    return int(m.group(0)) if m else 0


def find_best_mmproj(paths: list[str], model: str) -> str | None:
    """llama.cpp's ``find_best_mmproj`` (``find_best_sibling(files, model, "mmproj")``): among the
    ``.gguf`` paths containing ``mmproj`` in a folder on the model's path, the deepest shared folder,
    then the quantization bits closest to the model's; the first in listing order on a tie.

    >>> find_best_mmproj(["m-Q4_K_M.gguf", "mmproj-m-f16.gguf", "mmproj-m-Q8_0.gguf"], "m-Q4_K_M.gguf")
    'mmproj-m-Q8_0.gguf'
    >>> find_best_mmproj(["a/m-Q4_0.gguf", "b/mmproj-f16.gguf"], "a/m-Q4_0.gguf") is None
    True
    """
    model_dir = model.split("/")[:-1]
    bits = _quant_bits(model)
    best, best_key = None, None
    for path in paths:
        if not path.endswith(".gguf") or "mmproj" not in path:
            continue
        sib_dir = path.split("/")[:-1]
        depth = 0
        while depth < min(len(model_dir), len(sib_dir)) and model_dir[depth] == sib_dir[depth]:
            depth += 1
        if depth != len(sib_dir):
            continue  # the projector's folder must be the model's or one above it
        key = (depth, -abs(_quant_bits(path) - bits))
        if best_key is None or key > best_key:
            best, best_key = path, key
    return best


def split_files(files: list[HubFile], primary: HubFile) -> list[HubFile]:
    """llama.cpp's ``get_split_files``: every shard of ``primary``'s model (itself alone when not split)."""
    info = split_info(primary.path)
    if info is None or info.count <= 1:
        return [primary]
    out = []
    for f in files:
        other = split_info(f.path)
        if other is not None and other.count == info.count and other.prefix == info.prefix:
            out.append(f)
    return sorted(out, key=lambda f: split_info(f.path).index)  # type: ignore[union-attr]


def variants(files: list[HubFile]) -> list[list[HubFile]]:
    """Every model in the repo, each as its files (one, or all shards), in listing order."""
    return [split_files(files, f) for f in files if is_model_file(f.path) and _first_shard_or_single(f.path)]


class HubUnreachable(ModelReadError):
    """The Hub cannot be asked (offline mode, no network, a timeout): the local HF cache may still answer."""


def list_files(ref: HubRef) -> list[HubFile]:
    """The repo's files (recursive), in the Hub's order, through huggingface_hub."""
    import httpx2
    from huggingface_hub import HfApi
    from huggingface_hub import errors as hf_errors

    api = HfApi(endpoint=hub_endpoint(), token=hub_token() or False)
    where = f"{ref.repo}@{ref.revision}" if ref.revision != "main" else ref.repo
    try:
        entries = list(api.list_repo_tree(ref.repo, revision=ref.revision, recursive=True))
    except Exception as exc:
        err = convert_error(f"{hub_endpoint()}/{ref.repo}", exc)
        if isinstance(exc, (hf_errors.OfflineModeIsEnabled, httpx2.ConnectError, httpx2.TimeoutException)):
            err = HubUnreachable(err.message, remedy=err.remedy)
        elif isinstance(exc, hf_errors.RevisionNotFoundError):
            err = ModelReadError(f"{clean(where)}: no revision {clean(ref.revision)!r}", remedy="check the revision")
        elif isinstance(exc, hf_errors.RepositoryNotFoundError) and not isinstance(exc, hf_errors.GatedRepoError):
            err = ModelReadError(f"{clean(ref.repo)}: no such repository on {clean(hub_endpoint())} (or it is private)",
                                 remedy="check the name; for a private repo log in (`hf auth login`) or set HF_TOKEN")
        raise err from exc
    out = []
    for e in entries:
        if not hasattr(e, "blob_id"):  # a folder
            continue
        if not isinstance(e.path, str) or _UNSAFE_PATH.search(e.path) or ".." in e.path.split("/"):
            continue  # a listing is untrusted: like llama.cpp's is_valid_subpath, skip what is no plain path
        lfs = getattr(e, "lfs", None)
        oid = getattr(lfs, "sha256", None) if lfs is not None else e.blob_id
        out.append(HubFile(path=e.path, size=e.size, oid=oid))
    return out


def cached_files(ref: HubRef) -> dict[str, Path]:
    """The repo's files already in the local Hugging Face cache (``refs/REVISION`` -> its snapshot),
    path in repo -> local path, in path order; what llama.cpp's ``get_cached_files`` falls back on
    when the Hub cannot be listed."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    root = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=ref.repo, repo_type="model")
    try:
        commit = (root / "refs" / ref.revision).read_text().strip()
    except OSError:
        commit = ref.revision
    snapshot = root / "snapshots" / commit
    if not re.fullmatch(r"[0-9a-f]{40}", commit) or not snapshot.is_dir():
        return {}
    return {p.relative_to(snapshot).as_posix(): p for p in sorted(snapshot.rglob("*")) if p.is_file()}


def choose(ref: HubRef, files: list[HubFile]) -> list[HubFile]:
    """The files ``ref`` names: ``--hf-file`` exactly, else llama.cpp's best match for the tag."""
    models = [f.path for f in files if f.path.endswith(".gguf")]
    listing = ", ".join(clean(p, 80) for p in models[:12]) + (" ..." if len(models) > 12 else "")
    if ref.file:
        primary = next((f for f in files if f.path == ref.file), None)
        if primary is None:
            raise ModelReadError(f"{clean(ref.repo)}: no file {clean(ref.file)!r}",
                                 remedy=f"the GGUF files are: {listing or 'none'}")
    else:
        primary = find_best_model(files, ref.tag)
        if primary is None:
            what = f"no GGUF file matching {clean(ref.tag)!r}" if ref.tag else "no GGUF model file"
            raise ModelReadError(f"{clean(ref.repo)}: {what}", remedy=f"the GGUF files are: {listing or 'none'}")
    return split_files(files, primary)


def file_url(ref: HubRef, path: str) -> str:
    """The ``resolve`` URL of a file (huggingface_hub's ``hf_hub_url``)."""
    from huggingface_hub import hf_hub_url

    return hf_hub_url(ref.repo, path, revision=ref.revision, endpoint=hub_endpoint())


def tag_of(path: str) -> str:
    """The quant tag a file would be asked for by (``-hf repo:TAG``): llama.cpp's split-info tag."""
    info = split_info(path)
    return info.tag if info else ""


def download(ref: HubRef, files: list[HubFile]) -> Path:
    """Download ``files`` into the Hugging Face cache (progress bar, resumable); the first one's local path."""
    from huggingface_hub import hf_hub_download

    paths = []
    for f in files:
        try:
            paths.append(Path(hf_hub_download(ref.repo, f.path, revision=ref.revision, endpoint=hub_endpoint(),
                                              token=hub_token() or False)))
        except Exception as exc:
            from llamasplit.errors import FetchError

            inner = convert_error(file_url(ref, f.path), exc)
            raise FetchError(inner.message, remedy=inner.remedy) from exc
    return paths[0]
