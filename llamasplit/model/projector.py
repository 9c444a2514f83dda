"""A multimodal projector's GGUF (``--mmproj``): what its header says, read with the same bounds as a model.

llama.cpp's loader (``tools/mtmd/clip.cpp``, ``clip_model_loader``): arch ``clip``;
``clip.projector_type`` (or ``clip.vision.projector_type`` / ``clip.audio.projector_type`` for
mixed files); ``clip.has_vision_encoder`` / ``clip.has_audio_encoder``; the tower's
``clip.{vision,audio}.*`` hparams (``load_hparams``, with its sanity checks: image_size at most
8192, patch_size in [1, 65535], n_merge in [1, 65535]). Where a projector comes from when the
user says ``--mmproj auto``: beside a local model (``find_beside``), or in the ``-hf`` repo as
llama.cpp's ``find_best_mmproj`` picks it (``model.hub.find_best_mmproj``). What it costs on
which device: ``memory.mmproj``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from llamasplit.errors import ModelReadError
from llamasplit.model.gguf_reader import RawHeader, RawTensor, read_header
from llamasplit.untrusted import printable

MAX_IMAGE_SIZE = 8192
"""``load_hparams`` sanity check: ``image_size`` above 8192 is refused (int32 overflow of n_patches)."""

@dataclass(frozen=True)
class ProjectorProfile:
    """What a projector file says: its type, the vision tower's shape, its tensors."""

    path: str
    proj_type: str
    has_vision: bool
    has_audio: bool
    n_embd: int
    n_head: int
    n_head_kv: int
    d_head: int
    n_ff: int
    n_layer: int
    image_size: int
    patch_size: int
    n_merge: int
    ffn_op: str
    tensors: tuple[RawTensor, ...]
    file_bytes: int
    feature_layers: tuple[int, ...] = ()
    spatial_merge_size: int | None = None
    """``clip.vision.spatial_merge_size`` (Qwen-VL, Pixtral) as the file states it; None: absent."""
    image_max_pixels: int | None = None
    """``clip.vision.image_max_pixels`` as the file states it; None: absent."""
    """``clip.vision.feature_layer``: the blocks whose outputs llava-style graphs stack (granite-vision)."""

    @property
    def weight_bytes(self) -> int:
        """``load_hparams``' ``model size``: the unpadded sum of every tensor (MiB in llama-server's log)."""
        return sum(t.n_bytes for t in self.tensors)

    @property
    def warmup_image_size(self) -> int:
        """``get_dummy_batch``'s square image side (``hparams.warmup_image_size``; gemma3: ``image_size``)."""
        return self.image_size

    def tensor(self, name: str) -> RawTensor | None:
        for t in self.tensors:
            if t.name == name:
                return t
        return None


def _fail(path: str | Path, what: str) -> ModelReadError:
    return ModelReadError(f"{path}: not a usable multimodal projector: {what}",
                          remedy="give the mmproj GGUF that belongs to this model (arch 'clip', e.g. mmproj-*.gguf)")


def read_projector(path: str | Path) -> ProjectorProfile:
    """Read a local projector's header (bounded like every GGUF we read: ``model.gguf_reader``)."""
    return projector_from_header(read_header(path))


def projector_from_header(header: RawHeader) -> ProjectorProfile:
    """The projector a header describes; a ModelReadError line for anything llama.cpp's loader refuses."""
    path = header.path
    md = header.metadata
    arch = md.get("general.architecture")
    if arch != "clip":
        shown = printable(str(arch), limit=40) if arch is not None else "none"
        raise _fail(path, f"its architecture is {shown!r}, not 'clip' (is this the text model?)")

    def flag(key: str) -> bool:
        v = md.get(key, False)
        return bool(v) if isinstance(v, bool) else False

    has_vision, has_audio = flag("clip.has_vision_encoder"), flag("clip.has_audio_encoder")
    if not (has_vision or has_audio):
        raise _fail(path, "it has neither a vision nor an audio encoder (clip.has_vision_encoder)")
    proj = md.get("clip.projector_type") or md.get("clip.vision.projector_type" if has_vision else "clip.audio.projector_type")
    if not isinstance(proj, str) or not proj:
        raise _fail(path, "no clip.projector_type")
    prefix = "vision" if has_vision else "audio"

    def num(key: str, default: int | None = None, low: int = 0, high: int = 1 << 20) -> int:
        v = md.get(key, default)
        if v is None:
            raise _fail(path, f"missing {key}")
        if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
            raise _fail(path, f"{key} = {printable(str(v), limit=40)} is not a count in [{low}, {high}]")
        return v

    n_embd = num(f"clip.{prefix}.embedding_length", low=1)
    n_head = num(f"clip.{prefix}.attention.head_count", low=0)
    n_head_kv = num(f"clip.{prefix}.attention.head_count_kv", n_head)
    head_dim = num(f"clip.{prefix}.attention.head_dim", 0)
    d_head = head_dim if head_dim > 0 else (n_embd // n_head if n_head > 0 else 0)  # clip_graph::clip_graph
    n_ff = num(f"clip.{prefix}.feed_forward_length")
    n_layer = num(f"clip.{prefix}.block_count", high=4096)
    image_size = patch_size = 0
    n_merge = 1
    if has_vision:
        image_size = num("clip.vision.image_size", high=MAX_IMAGE_SIZE)
        patch_size = num("clip.vision.patch_size", low=1, high=65535)
        # gemma3's default pooling is 4 per side (load_hparams, PROJECTOR_TYPE_GEMMA3)
        n_merge = num("clip.vision.projector.scale_factor", 4 if proj == "gemma3" else 1, low=1, high=65535)
    ffn_op = "gelu" if flag("clip.use_gelu") else "silu" if flag("clip.use_silu") else "gelu_quick"
    layers = md.get(f"clip.{prefix}.feature_layer", ())
    if not isinstance(layers, (list, tuple)) or not all(isinstance(x, int) and not isinstance(x, bool) and -1 <= x <= n_layer
                                                         for x in layers):
        raise _fail(path, f"clip.{prefix}.feature_layer is not a list of block indices up to {n_layer}")
    return ProjectorProfile(
        path=str(path), proj_type=proj, has_vision=has_vision, has_audio=has_audio, n_embd=n_embd, n_head=n_head,
        n_head_kv=n_head_kv, d_head=d_head, n_ff=n_ff, n_layer=n_layer, image_size=image_size,
        patch_size=patch_size, n_merge=n_merge, ffn_op=ffn_op, tensors=header.tensors, file_bytes=header.file_bytes,
        feature_layers=tuple(x for x in layers if x >= 0),
        spatial_merge_size=num("clip.vision.spatial_merge_size", 0, high=65535) or None if has_vision else None,
        image_max_pixels=num("clip.vision.image_max_pixels", 0, high=1 << 30) or None if has_vision else None,
    )


def find_beside(model_path: str | Path) -> Path | None:
    """A projector next to a local model, chosen among the folder's ``*mmproj*.gguf`` files as
    llama.cpp's ``-hf`` chooses in a repo (``model.hub.find_best_mmproj``); None if there is none."""
    from llamasplit.model.hub import find_best_mmproj

    p = Path(model_path)
    if not p.parent.is_dir():
        return None
    names = sorted(q.name for q in p.parent.iterdir() if q.is_file())
    best = find_best_mmproj(names, p.name)
    return p.parent / best if best is not None else None


def locate_projector(spec: str, model_location: str, *, hf: str | None = None,
                     hf_file: str | None = None) -> tuple[str, ProjectorProfile]:
    """``--mmproj SPEC`` -> (what llama.cpp is told, the projector's profile).

    ``SPEC`` is a file, an ``http(s)://`` URL (its header read remotely; llama.cpp gets
    ``--mmproj-url``), or ``auto``: with ``-hf``, the file llama.cpp's ``-hf`` would download
    beside the model (``common/download.cpp`` ``find_best_mmproj``); for a local model, the best
    ``*mmproj*.gguf`` in its folder by the same rule.
    """
    from llamasplit.model.remote import is_url

    if spec != "auto":
        if is_url(spec):
            return spec, _remote_projector(spec)
        return spec, read_projector(spec)
    if hf:
        from llamasplit.model import hub

        ref = hub.parse_hf(hf, hf_file)
        files = hub.list_files(ref)
        primary = hub.choose(ref, files)[0]
        best = hub.find_best_mmproj([f.path for f in files], primary.path)
        if best is None:
            raise ModelReadError(f"{printable(ref.repo, limit=120)}: no mmproj file beside {printable(primary.path, limit=120)}",
                                 remedy="give the projector with --mmproj FILE, or leave --mmproj out")
        url = hub.file_url(ref, best)
        return url, _remote_projector(url)
    if is_url(model_location):
        raise ModelReadError("--mmproj auto needs a local model or -hf", remedy="give the projector with --mmproj FILE or URL")
    found = find_beside(model_location)
    if found is None:
        raise ModelReadError(f"{printable(model_location, limit=200)}: no *mmproj*.gguf in its folder",
                             remedy="give the projector with --mmproj FILE")
    return str(found), read_projector(found)


def _remote_projector(url: str) -> ProjectorProfile:
    from llamasplit.model.header_cache import HeaderCache
    from llamasplit.model.locate import _url_header
    from llamasplit.model.remote import RemoteOptions, Transfer

    return projector_from_header(_url_header(url, RemoteOptions(), Transfer(), HeaderCache(), True))
