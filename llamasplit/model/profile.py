"""ModelProfile: what the planner needs to know of a model, read from its GGUF header(s).

Every tensor with its size, the layer it belongs to and its role; the hyper-parameters that the
KV cache, recurrent state and compute buffers depend on. Built by ``read_model`` from one file or
all shards of a split model; pure data after that (frozen, JSON-friendly).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any

from llamasplit.gguf_constants import GGMLQuantizationType, Keys, LlamaFileType

from llamasplit.errors import ModelReadError
from llamasplit.model.gguf_reader import ArraySummary, RawHeader, RawTensor, read_header
from llamasplit.untrusted import printable

LLAMA_MAX_LAYERS = 512
"""llama.cpp refuses ``block_count`` outside 1..512 (src/llama-hparams.h LLAMA_MAX_LAYERS;
llama_model::load_hparams asserts ``n_layer_all > 0 && n_layer_all <= LLAMA_MAX_LAYERS``)."""
LLAMA_MAX_EXPERTS = 1024
"""src/llama-hparams.h LLAMA_MAX_EXPERTS; load_hparams asserts ``n_expert <= LLAMA_MAX_EXPERTS``."""
_UINT32_MAX = (1 << 32) - 1
_ARCH_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
"""Every architecture name llama.cpp knows (src/llama-arch.cpp LLM_ARCH_NAMES) has this shape."""


class Block(str, Enum):
    """Where llama.cpp places a tensor (src/llama-arch.cpp LLM_TENSOR_INFOS)."""

    INPUT = "input"  # always on the CPU
    LAYER = "layer"  # follows its repeating layer
    OUTPUT = "output"  # follows the output layer (index n_layer_all)


class Role(str, Enum):
    """What a tensor does, coarse enough for placement, compute and requantization rules."""

    TOKEN_EMBD = "token_embd"
    POS_EMBD = "pos_embd"
    OUTPUT = "output"
    NORM = "norm"
    ATTN_Q = "attn_q"
    ATTN_K = "attn_k"
    ATTN_V = "attn_v"
    ATTN_QKV = "attn_qkv"
    ATTN_OUT = "attn_out"
    ATTN_MLA = "attn_mla"  # q_a/q_b/kv_a/kv_b/k_b/v_b of multi-head latent attention
    FFN_GATE = "ffn_gate"
    FFN_UP = "ffn_up"
    FFN_DOWN = "ffn_down"
    FFN_GATE_UP = "ffn_gate_up"
    EXPERTS = "experts"  # ffn_{gate,up,down,gate_up}_exps
    SHARED_EXPERT = "shared_expert"  # ffn_*_shexp
    ROUTER = "router"  # ffn_gate_inp, exp_probs_b
    SSM = "ssm"
    ROPE = "rope"
    NEXTN = "nextn"
    OTHER = "other"


_INPUT_NAMES = {"token_embd", "position_embd", "token_types", "per_layer_token_embd"}
_OUTPUT_PREFIXES = ("output", "cls", "dense_2", "dense_3", "altup_proj", "altup_unembd_proj")
_BLK_RE = re.compile(r"^blk\.(\d+)\.(.+?)(?:\.(weight|bias|scale))?$")

_ROLE_BY_STEM = {
    "attn_q": Role.ATTN_Q,
    "attn_k": Role.ATTN_K,
    "attn_v": Role.ATTN_V,
    "attn_qkv": Role.ATTN_QKV,
    "attn_output": Role.ATTN_OUT,
    "attn_q_a": Role.ATTN_MLA,
    "attn_q_b": Role.ATTN_MLA,
    "attn_kv_a_mqa": Role.ATTN_MLA,
    "attn_kv_b": Role.ATTN_MLA,
    "attn_k_b": Role.ATTN_MLA,
    "attn_v_b": Role.ATTN_MLA,
    "ffn_gate": Role.FFN_GATE,
    "ffn_up": Role.FFN_UP,
    "ffn_down": Role.FFN_DOWN,
    "ffn_gate_up": Role.FFN_GATE_UP,
    "ffn_gate_inp": Role.ROUTER,
    "ffn_gate_inp_shexp": Role.ROUTER,
    "exp_probs_b": Role.ROUTER,
}


def classify(name: str) -> tuple[Block, int | None, Role]:
    """Place a tensor name: its block, its layer index (``None`` outside ``blk.N``) and its role.

    >>> classify("blk.3.ffn_down_exps.weight")
    (<Block.LAYER: 'layer'>, 3, <Role.EXPERTS: 'experts'>)
    >>> classify("token_embd.weight")
    (<Block.INPUT: 'input'>, None, <Role.TOKEN_EMBD: 'token_embd'>)
    >>> classify("output_norm.weight")
    (<Block.OUTPUT: 'output'>, None, <Role.NORM: 'norm'>)
    """
    match = _BLK_RE.match(name)
    if match:
        layer, stem = int(match.group(1)), match.group(2)
        return Block.LAYER, layer, _layer_role(stem)
    stem = name.rsplit(".", 1)[0] if name.endswith((".weight", ".bias")) else name
    if stem in _INPUT_NAMES:
        role = Role.TOKEN_EMBD if stem in ("token_embd", "per_layer_token_embd") else Role.POS_EMBD
        return Block.INPUT, None, role
    if stem.startswith(_OUTPUT_PREFIXES):
        role = Role.NORM if "norm" in stem else Role.OUTPUT
        return Block.OUTPUT, None, role
    if stem == "rope_freqs":
        return Block.LAYER, None, Role.ROPE
    if stem == "token_embd_norm":
        # llama.cpp does the embedding norm on the first repeating layer (LLM_TENSOR_INFOS)
        return Block.LAYER, 0, Role.NORM
    return Block.OUTPUT, None, Role.OTHER


def _layer_role(stem: str) -> Role:
    if stem in _ROLE_BY_STEM:
        return _ROLE_BY_STEM[stem]
    if stem.endswith(("_exps", "_chexps")):
        return Role.EXPERTS
    if stem.endswith("_shexp"):
        return Role.SHARED_EXPERT
    if "norm" in stem:
        return Role.NORM
    if stem.startswith("ssm_"):
        return Role.SSM
    if stem.startswith("nextn"):
        return Role.NEXTN
    return Role.OTHER


@dataclass(frozen=True)
class TensorInfo:
    """One weight tensor: name, ggml type, shape (``ne``), bytes, place and role."""

    name: str
    ggml_type: int
    shape: tuple[int, ...]
    n_bytes: int
    block: Block
    layer: int | None
    role: Role
    file_index: int = 0
    offset: int = 0

    @property
    def type_name(self) -> str:
        return GGMLQuantizationType(self.ggml_type).name

    @property
    def is_quantized(self) -> bool:
        return self.ggml_type not in _UNQUANTIZED


_UNQUANTIZED = {
    GGMLQuantizationType.F32,
    GGMLQuantizationType.F16,
    GGMLQuantizationType.BF16,
    GGMLQuantizationType.F64,
    GGMLQuantizationType.I8,
    GGMLQuantizationType.I16,
    GGMLQuantizationType.I32,
    GGMLQuantizationType.I64,
}


# Default sliding-window pattern by arch, used when the GGUF has a sliding window but no pattern
# key (src/models/*.cpp: load_swa_pattern(ml, N[, dense_first])).
SWA_DEFAULT_PATTERN: dict[str, tuple[int, bool]] = {
    "gemma2": (2, False),
    "gemma3": (6, False),
    "gemma3n": (5, False),
    "gemma-embedding": (6, False),
    "cohere2": (4, False),
    "cohere2moe": (4, True),
    "afmoe": (4, False),
    "exaone4": (4, False),
    "exaone-moe": (4, False),
    "llama4": (4, False),
    "mellum": (4, False),
    "modern-bert": (3, True),
    "olmo2": (4, False),
    "gpt-oss": (2, False),
    "plamo3": (8, False),
    "smallthinker": (4, True),
}


def swa_layers(n_layer: int, n_pattern: int, dense_first: bool = False) -> tuple[bool, ...]:
    """Which layers use the sliding window (llama-hparams.cpp ``set_swa_pattern``).

    >>> swa_layers(8, 4)
    (True, True, True, False, True, True, True, False)
    >>> swa_layers(4, 2, dense_first=True)
    (False, True, False, True)
    """
    if dense_first:
        return tuple(n_pattern == 0 or il % n_pattern != 0 for il in range(n_layer))
    return tuple(n_pattern == 0 or il % n_pattern < n_pattern - 1 for il in range(n_layer))


@dataclass(frozen=True)
class HParams:
    """Hyper-parameters memory and speed depend on; per-layer values are tuples of ``n_layer``."""

    n_layer: int
    """``{arch}.block_count``: every block, NextN/MTP layers included (llama.cpp's n_layer_all)."""
    n_embd: int
    n_vocab: int
    n_ctx_train: int
    n_head: tuple[int, ...]
    n_head_kv: tuple[int, ...]
    n_embd_head_k: int
    n_embd_head_v: int
    n_embd_head_k_swa: int
    n_embd_head_v_swa: int
    n_ff: tuple[int, ...]
    n_swa: int = 0
    """Sliding window size in tokens; 0 when the model has none."""
    is_swa: tuple[bool, ...] = ()
    n_expert: int = 0
    n_expert_used: int = 0
    n_expert_shared: int = 0
    n_ff_exp: int = 0
    n_layer_nextn: int = 0
    kv_lora_rank: int = 0
    q_lora_rank: int = 0
    n_embd_head_k_mla: int = 0
    n_embd_head_v_mla: int = 0
    n_rot: int = 0
    ssm_d_conv: int = 0
    ssm_d_inner: int = 0
    ssm_d_state: int = 0
    ssm_n_group: int = 0
    ssm_dt_rank: int = 0
    n_shortconv_l_cache: int = 0
    """LFM2's short convolution length (``{arch}.shortconv.l_cache``): its conv layers keep
    ``n_embd * (l_cache - 1)`` F32 of state per sequence (llama-hparams.cpp ``n_embd_r``)."""
    is_recurrent: tuple[bool, ...] = ()
    """Layers that keep a recurrent state instead of a KV cache (Mamba, hybrid models)."""
    parallel_ssm: bool = False
    """falcon-h1: every layer runs attention and a Mamba-2 mixer side by side and keeps both a KV
    cache and a recurrent state (llama-model.cpp ``create_memory``: filter_attn and filter_recr
    both true); ``is_recurrent`` stays False (the layers have attention)."""

    @property
    def n_layer_kv(self) -> int:
        """Layers the main context builds (llama.cpp ``n_layer()``: NextN layers excluded)."""
        return self.n_layer - self.n_layer_nextn

    @property
    def is_mla(self) -> bool:
        return self.n_embd_head_k_mla > 0 and self.n_embd_head_v_mla > 0

    def n_embd_k_gqa(self, il: int) -> int:
        head = self.n_embd_head_k_swa if self.is_swa[il] else self.n_embd_head_k
        return head * self.n_head_kv[il]

    def n_embd_v_gqa(self, il: int) -> int:
        head = self.n_embd_head_v_swa if self.is_swa[il] else self.n_embd_head_v
        return head * self.n_head_kv[il]


@dataclass(frozen=True)
class ModelProfile:
    """A model as the planner sees it: tensors, hyper-parameters, files. Never the weights."""

    path: str
    arch: str
    name: str | None
    file_type: int | None
    files: tuple[str, ...]
    file_bytes: int
    tensors: tuple[TensorInfo, ...]
    hparams: HParams
    tied_embeddings: bool
    """No ``output.weight``: llama.cpp duplicates ``token_embd`` on the output device."""
    quantized_from: str | None = None
    """Set on what-if profiles: the file type this profile was re-typed from."""
    source_path: str | None = None
    """Set on what-if profiles: the real file (``path`` is then the file llama-quantize would write)."""
    load_mtp: bool = False
    """The NextN/MTP blocks' weights are loaded too (``--spec-type draft-mtp``: ``memory.mtp.with_mtp``)."""
    metadata: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def tensor_bytes(self) -> int:
        return sum(t.n_bytes for t in self.tensors)

    @property
    def loaded_tensors(self) -> tuple[TensorInfo, ...]:
        """The tensors llama.cpp gives a buffer: all but those of the NextN/MTP blocks.

        The last ``n_layer_nextn`` blocks are created with ``TENSOR_SKIP`` unless MTP speculative
        decoding loads them (``--spec-type draft-mtp`` sets ``load_mtp``, common/common.cpp;
        src/models/glm4-moe.cpp ``load_arch_tensors``: ``if (!ml.load_mtp) mtp_flags |=
        TENSOR_SKIP``; glm4.cpp, exaone4.cpp and others skip them always), and
        ``llama_model_loader::create_tensor`` returns no tensor for a skipped one ("model has
        unused tensor ... -- ignoring"). The blocks still take part in the layer split
        (``load_tensors`` places ``n_layer_all + 1`` layers), so only their weights go.
        """
        first_nextn = self.hparams.n_layer_kv
        if not self.hparams.n_layer_nextn or self.load_mtp:
            return self.tensors
        return tuple(t for t in self.tensors if not (t.layer is not None and t.layer >= first_nextn))

    @property
    def file_type_name(self) -> str | None:
        if self.file_type is None:
            return None
        try:
            return LlamaFileType(self.file_type).name.replace("MOSTLY_", "")
        except ValueError:
            return f"type {self.file_type}"

    def tensor(self, name: str) -> TensorInfo | None:
        for t in self.tensors:
            if t.name == name:
                return t
        return None

    def layer_bytes(self) -> list[int]:
        """Weight bytes of each repeating layer."""
        out = [0] * self.hparams.n_layer
        for t in self.tensors:
            if t.block is Block.LAYER and t.layer is not None and t.layer < len(out):
                out[t.layer] += t.n_bytes
        return out

    def with_tensors(self, tensors: tuple[TensorInfo, ...], *, quantized_from: str | None) -> ModelProfile:
        return replace(self, tensors=tensors, quantized_from=quantized_from)

    def requantized(self, ftype: str) -> ModelProfile:
        """The same model as ``llama-quantize --allow-requantize`` would write it at ``ftype``.

        Every tensor is re-typed by llama.cpp's own recipe (``model.quant``); offsets are laid out
        as llama.cpp writes them (in order, each aligned to 32 bytes), so file spans stay meaningful.
        """
        from llamasplit.gguf_constants import Keys

        from llamasplit.model.quant import parse_file_type, requantize

        name, file_type = parse_file_type(ftype)
        raw = [RawTensor(t.name, t.ggml_type, t.shape, t.n_bytes, t.offset) for t in self.tensors]
        new = requantize(self.arch, self.metadata, raw, name)
        offset, tensors = 0, []
        for old, t in zip(self.tensors, new):
            tensors.append(replace(old, ggml_type=t.ggml_type, n_bytes=t.n_bytes, file_index=0, offset=offset))
            offset += (t.n_bytes + 31) // 32 * 32
        metadata = {**self.metadata, Keys.General.FILE_TYPE: int(file_type)}
        stem = Path(self.path).name.removesuffix(".gguf")
        return replace(
            self, tensors=tuple(tensors), quantized_from=self.file_type_name, file_type=int(file_type),
            file_bytes=offset, files=(), metadata=metadata,
            # a remote model's what-if file is written here, next to nothing: its bare name
            path=f"{stem}.{name}.gguf" if "://" in self.path else str(Path(self.path).with_name(f"{stem}.{name}.gguf")),
            source_path=self.source_path or self.path,
        )


def _meta(md: dict[str, Any], key: str, default: Any = None) -> Any:
    value = md.get(key, default)
    return default if isinstance(value, ArraySummary) else value


def _per_layer(value: Any, n_layer: int, what: str, path: str) -> tuple[int, ...]:
    """A count or one count per layer, as llama.cpp's ``get_key_or_arr`` reads them into uint32
    (src/llama-model-loader.cpp: an array must have ``n_layer`` integer elements, a scalar must be
    an integer); anything else is a ``ModelReadError``."""
    values = value if isinstance(value, list) else [value]
    if isinstance(value, list) and len(value) != n_layer:
        raise ModelReadError(f"{path}: {what} has {len(value)} entries for {n_layer} layers",
                             remedy="the file is damaged or was converted wrongly")
    for v in values:
        if not isinstance(v, int) or not 0 <= v <= _UINT32_MAX:
            shown = printable(value if not isinstance(value, list) else v, limit=60)
            raise ModelReadError(f"{path}: metadata key {what} holds {shown}, not a count from 0 to {_UINT32_MAX}",
                                 remedy="the file is damaged or was converted wrongly")
    if isinstance(value, list):
        return tuple(int(v) for v in value)
    return (int(value),) * n_layer


def _int_key(md: dict[str, Any], key: str, path: str, default: int | None = None) -> int:
    value = _meta(md, key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        if value is None:
            raise ModelReadError(f"{path}: metadata key {key} is missing", remedy="the file is not a complete llama.cpp model")
        raise ModelReadError(f"{path}: metadata key {key} is {printable(value, limit=60)}, expected an integer",
                             remedy="the file is damaged or was converted wrongly")
    if value < 0 or value > 1 << 40:
        raise ModelReadError(f"{path}: metadata key {key} = {value} is out of range",
                             remedy="the file is damaged or was converted wrongly")
    return value


GATED_DELTA_NET_ARCHS = {"qwen3next": 4, "qwen35": 4, "qwen35moe": 4}
"""Hybrids of gated delta-net (linear attention, a recurrent state) and full-attention blocks, with
the default ``full_attention_interval`` of their ``load_arch_hparams`` (src/models/qwen3next.cpp,
qwen35.cpp, qwen35moe.cpp)."""

PARALLEL_SSM_ARCHS = frozenset({"falcon-h1"})
"""Archs whose every layer has attention and a Mamba-2 mixer side by side (``HParams.parallel_ssm``)."""


def _gated_delta_net_layers(md: dict[str, Any], arch: str, n_layer: int, path: str) -> tuple[bool, ...]:
    """src/models/qwen3next.cpp ``load_arch_hparams``: ``attention.recurrent_layers`` (one value or
    one per block) if the file has it, else block ``i`` is recurrent iff it is a trunk block
    (``i < n_layer()``: not NextN/MTP) and ``(i + 1) % full_attention_interval != 0``."""
    key = f"{arch}.attention.recurrent_layers"
    given = _meta(md, key)
    if given is not None:
        return tuple(bool(v) for v in _per_layer(given, n_layer, key, path))
    interval = _int_key(md, f"{arch}.full_attention_interval", path, GATED_DELTA_NET_ARCHS[arch])
    if interval < 1:
        raise ModelReadError(f"{path}: {arch}.full_attention_interval is {interval}; it must be at least 1",
                             remedy="the file is damaged or was converted wrongly")
    n_trunk = n_layer - _int_key(md, Keys.LLM.NEXTN_PREDICT_LAYERS.format(arch=arch), path, 0)
    return tuple(i < n_trunk and (i + 1) % interval != 0 for i in range(n_layer))


def build_hparams(arch: str, md: dict[str, Any], tensors: list[RawTensor], path: str) -> HParams:
    k = Keys
    if arch == "clip":  # tools/mtmd/clip.cpp's files: llama.cpp loads them beside a model, never as one
        raise ModelReadError(f"{path}: a multimodal projector (arch clip), not a model",
                             remedy="plan the text model and give this file with --mmproj")
    n_layer = _int_key(md, k.LLM.BLOCK_COUNT.format(arch=arch), path)
    if not 1 <= n_layer <= LLAMA_MAX_LAYERS:
        raise ModelReadError(f"{path}: {arch}.block_count is {n_layer}; llama.cpp loads 1 to {LLAMA_MAX_LAYERS} blocks",
                             remedy="the file is damaged or was converted wrongly")
    n_embd = _int_key(md, k.LLM.EMBEDDING_LENGTH.format(arch=arch), path)
    n_ctx_train = _int_key(md, k.LLM.CONTEXT_LENGTH.format(arch=arch), path, 0)

    tokens = md.get(k.Tokenizer.LIST)
    embd = next((t for t in tensors if t.name == "token_embd.weight"), None)
    if _meta(md, k.LLM.VOCAB_SIZE.format(arch=arch)) is not None:
        n_vocab = _int_key(md, k.LLM.VOCAB_SIZE.format(arch=arch), path)
    elif isinstance(tokens, ArraySummary):
        n_vocab = tokens.count
    elif isinstance(tokens, list):
        n_vocab = len(tokens)
    elif embd is not None and len(embd.shape) > 1:
        n_vocab = embd.shape[1]
    else:
        n_vocab = 0

    head_key = k.Attention.HEAD_COUNT.format(arch=arch)
    n_head = _per_layer(_meta(md, head_key, 0), n_layer, head_key, path)
    kv_key = k.Attention.HEAD_COUNT_KV.format(arch=arch)
    n_head_kv = _per_layer(_meta(md, kv_key, list(n_head)), n_layer, kv_key, path)
    max_head = max(n_head) if n_head else 0
    default_head = n_embd // max_head if max_head else 0
    n_embd_head_k = _int_key(md, k.Attention.KEY_LENGTH.format(arch=arch), path, default_head)
    n_embd_head_v = _int_key(md, k.Attention.VALUE_LENGTH.format(arch=arch), path, default_head)
    n_embd_head_k_swa = _int_key(md, k.Attention.KEY_LENGTH_SWA.format(arch=arch), path, n_embd_head_k)
    n_embd_head_v_swa = _int_key(md, k.Attention.VALUE_LENGTH_SWA.format(arch=arch), path, n_embd_head_v)
    ff_key = k.LLM.FEED_FORWARD_LENGTH.format(arch=arch)
    n_ff = _per_layer(_meta(md, ff_key, 0), n_layer, ff_key, path)

    n_swa = _int_key(md, k.Attention.SLIDING_WINDOW.format(arch=arch), path, 0)
    if arch == "llama4":
        # src/models/llama4.cpp load_arch_hparams: chunked attention over 8192 tokens whatever the
        # key says, unless the key is there and 0
        n_swa = 0 if _meta(md, k.Attention.SLIDING_WINDOW.format(arch=arch)) == 0 else 8192
    is_swa: tuple[bool, ...] = (False,) * n_layer
    if n_swa > 0:
        pattern_key = k.Attention.SLIDING_WINDOW_PATTERN.format(arch=arch)
        pattern = _meta(md, pattern_key)
        if isinstance(pattern, list):
            if len(pattern) != n_layer:
                raise ModelReadError(f"{path}: {pattern_key} has {len(pattern)} entries for {n_layer} layers")
            is_swa = tuple(bool(v) for v in pattern)
        else:
            n_pattern, dense_first = SWA_DEFAULT_PATTERN.get(arch, (0, False))
            if isinstance(pattern, int) and not isinstance(pattern, bool):
                n_pattern = pattern
            if n_pattern == 0 and arch not in SWA_DEFAULT_PATTERN and not isinstance(pattern, int):
                # an arch we do not know that states a window but no pattern: every layer slides
                n_pattern = 0
            is_swa = swa_layers(n_layer, n_pattern, dense_first)

    ssm_d_inner = _int_key(md, k.SSM.INNER_SIZE.format(arch=arch), path, 0)
    ssm_d_state = _int_key(md, k.SSM.STATE_SIZE.format(arch=arch), path, 0)
    recurrent_archs = {"mamba", "mamba2", "rwkv6", "rwkv7", "arwkv7", "rwkv6qwen2"}
    n_shortconv = _int_key(md, f"{arch}.shortconv.l_cache", path, 0)
    if arch in recurrent_archs:
        is_recurrent = (True,) * n_layer
    elif arch in GATED_DELTA_NET_ARCHS:
        is_recurrent = _gated_delta_net_layers(md, arch, n_layer, path)
    elif arch in ("nemotron_h", "nemotron_h_moe"):
        # nemotron-h.cpp load_arch_hparams: recurrent iff no KV heads AND no FFN (else attention or MLP)
        is_recurrent = tuple(h == 0 and f == 0 for h, f in zip(n_head_kv, n_ff))
    elif ssm_d_inner and any(h == 0 for h in n_head_kv):
        is_recurrent = tuple(h == 0 for h in n_head_kv)  # hybrid: no KV heads means a recurrent layer
    elif n_shortconv and any(h == 0 for h in n_head_kv):
        is_recurrent = tuple(h == 0 for h in n_head_kv)  # lfm2.cpp load_arch_hparams: is_recr = n_head_kv == 0
    else:
        is_recurrent = (False,) * n_layer

    hp = HParams(
        n_layer=n_layer,
        n_embd=n_embd,
        n_vocab=int(n_vocab),
        n_ctx_train=n_ctx_train,
        n_head=n_head,
        n_head_kv=n_head_kv,
        n_embd_head_k=n_embd_head_k,
        n_embd_head_v=n_embd_head_v,
        n_embd_head_k_swa=n_embd_head_k_swa,
        n_embd_head_v_swa=n_embd_head_v_swa,
        n_ff=n_ff,
        n_swa=n_swa,
        is_swa=is_swa,
        n_expert=_int_key(md, k.LLM.EXPERT_COUNT.format(arch=arch), path, 0),
        n_expert_used=_int_key(md, k.LLM.EXPERT_USED_COUNT.format(arch=arch), path, 0),
        n_expert_shared=_int_key(md, k.LLM.EXPERT_SHARED_COUNT.format(arch=arch), path, 0),
        n_ff_exp=_int_key(md, k.LLM.EXPERT_FEED_FORWARD_LENGTH.format(arch=arch), path, 0),
        n_layer_nextn=_int_key(md, k.LLM.NEXTN_PREDICT_LAYERS.format(arch=arch), path, 0),
        kv_lora_rank=_int_key(md, k.Attention.KV_LORA_RANK.format(arch=arch), path, 0),
        q_lora_rank=_int_key(md, k.Attention.Q_LORA_RANK.format(arch=arch), path, 0),
        n_embd_head_k_mla=_int_key(md, k.Attention.KEY_LENGTH_MLA.format(arch=arch), path, 0),
        n_embd_head_v_mla=_int_key(md, k.Attention.VALUE_LENGTH_MLA.format(arch=arch), path, 0),
        n_rot=_int_key(md, k.Rope.DIMENSION_COUNT.format(arch=arch), path, n_embd_head_k),
        ssm_d_conv=_int_key(md, k.SSM.CONV_KERNEL.format(arch=arch), path, 0),
        ssm_d_inner=ssm_d_inner,
        ssm_d_state=ssm_d_state,
        ssm_n_group=_int_key(md, k.SSM.GROUP_COUNT.format(arch=arch), path, 0),
        ssm_dt_rank=_int_key(md, k.SSM.TIME_STEP_RANK.format(arch=arch), path, 0),
        n_shortconv_l_cache=n_shortconv,
        is_recurrent=is_recurrent,
        parallel_ssm=arch in PARALLEL_SSM_ARCHS,
    )
    _check_experts(hp, arch, path, _int_key(md, f"{arch}.expert_group_count", path, 0),
                   _int_key(md, f"{arch}.expert_group_used_count", path, 0))
    return hp


def _check_experts(hp: HParams, arch: str, path: str, n_groups: int, n_group_used: int) -> None:
    """The expert, expert-group and NextN counts llama.cpp asserts on in llama_model::load_hparams."""
    problem = None
    if n_groups and (n_groups >= max(hp.n_expert, 1) or (n_groups > 1 and (
            hp.n_expert % n_groups or not 0 < n_group_used < n_groups))):
        problem = (f"{arch}.expert_group_count {n_groups} (with {n_group_used} used) does not divide "
                   f"the {hp.n_expert} experts into groups")
    elif hp.n_expert > LLAMA_MAX_EXPERTS:
        problem = f"{arch}.expert_count is {hp.n_expert}; llama.cpp allows at most {LLAMA_MAX_EXPERTS}"
    elif hp.n_expert_used > hp.n_expert:
        problem = f"{arch}.expert_used_count is {hp.n_expert_used} but {arch}.expert_count is {hp.n_expert}"
    elif hp.n_expert and not hp.n_expert_used:
        problem = f"{arch}.expert_count is {hp.n_expert} but {arch}.expert_used_count is missing or 0"
    elif hp.n_layer_nextn > hp.n_layer:
        problem = f"{arch}.nextn_predict_layers is {hp.n_layer_nextn}, more than the {hp.n_layer} blocks"
    if problem:
        raise ModelReadError(f"{path}: {problem}", remedy="the file is damaged or was converted wrongly; llama.cpp refuses it too")


_OUTPUT_NORM_LFM2 = frozenset({"lfm2", "lfm2moe"})

_SPLIT_RE = re.compile(r"^(?P<prefix>.*)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")


def shard_names(name: str, header: RawHeader, where: str | None = None) -> list[str]:
    """The file names of every shard of the model ``name`` (a file name) belongs to, from its header's
    ``split.count``: ``[name]`` for a model in one file.

    >>> from llamasplit.model.gguf_reader import RawHeader
    >>> h = RawHeader("x", 3, {"split.count": 3}, (), 0, 0, 32)
    >>> shard_names("m-Q4_K_M-00002-of-00003.gguf", h)[0]
    'm-Q4_K_M-00001-of-00003.gguf'
    """
    count = header.metadata.get(Keys.Split.LLM_KV_SPLIT_COUNT)
    if not isinstance(count, int) or count <= 1:
        return [name]
    where = where or name
    match = _SPLIT_RE.match(name)
    if not match:
        raise ModelReadError(
            f"{where}: the header says it is one of {count} shards but the name does not end in -0000N-of-{count:05d}.gguf",
            remedy="keep llama.cpp's shard names (as gguf-split writes them)",
        )
    if int(match.group("count")) != count:
        raise ModelReadError(f"{where}: the name says {match.group('count')} shards, the header {count}")
    return [f"{match.group('prefix')}-{i:05d}-of-{count:05d}.gguf" for i in range(1, count + 1)]


def _shard_paths(path: Path, header: RawHeader) -> list[Path]:
    return [path.with_name(n) for n in shard_names(path.name, header, str(path))]


def read_model(path: str | Path, *, require_data: bool = True) -> ModelProfile:
    """Read a model's header(s) into a ``ModelProfile``; any shard of a split model will do."""
    path = Path(path)
    first = read_header(path, require_data=require_data)
    shards = _shard_paths(path, first)
    headers = [first if p == path else read_header(p, require_data=require_data) for p in shards]
    return profile_from_headers(str(path), headers)


def profile_from_headers(path: str, headers: list[RawHeader]) -> ModelProfile:
    """A ``ModelProfile`` from the headers of a model's files (one, or every shard of a split model),
    wherever they were read: a local file, a URL (``path`` names the model in messages)."""
    headers = list(headers)
    if len(headers) > 1:
        headers.sort(key=lambda h: int(h.metadata.get(Keys.Split.LLM_KV_SPLIT_NO, 0)))
        for i, h in enumerate(headers):
            no = h.metadata.get(Keys.Split.LLM_KV_SPLIT_NO)
            if no != i:
                raise ModelReadError(f"{h.path}: shard number {no} where {i} was expected", remedy="re-download the shards")
        expected = headers[0].metadata.get(Keys.Split.LLM_KV_SPLIT_TENSORS_COUNT)
        got = sum(len(h.tensors) for h in headers)
        if isinstance(expected, int) and expected != got:
            raise ModelReadError(
                f"{path}: the shards hold {got} tensors, the header promises {expected}",
                remedy="a shard is missing or from another model; re-download them",
            )
    md = headers[0].metadata
    arch = md.get(Keys.General.ARCHITECTURE)
    if not isinstance(arch, str) or not arch:
        raise ModelReadError(f"{path}: metadata key general.architecture is missing", remedy="the file is not a llama.cpp model")
    if not _ARCH_NAME_RE.fullmatch(arch):
        # llama.cpp refuses it too ("unknown model architecture", src/llama-model.cpp)
        raise ModelReadError(f"{path}: general.architecture {printable(arch, limit=60)!r} is not a llama.cpp architecture name",
                             remedy="the file is damaged or not a llama.cpp model")
    raw_all: list[RawTensor] = []
    tensors: list[TensorInfo] = []
    for file_index, h in enumerate(headers):
        for t in h.tensors:
            block, layer, role = classify(t.name)
            if t.name == "token_embd_norm.weight" and arch in _OUTPUT_NORM_LFM2:
                # LLM_TENSOR_OUTPUT_NORM_LFM2 is named token_embd_norm but is the output norm
                block, layer, role = Block.OUTPUT, None, Role.NORM
            tensors.append(TensorInfo(t.name, t.ggml_type, t.shape, t.n_bytes, block, layer, role, file_index, t.offset))
            raw_all.append(t)
    hparams = build_hparams(arch, md, raw_all, path)
    for t in tensors:
        if t.layer is not None and t.layer >= hparams.n_layer:
            # llama.cpp creates blk.0 .. blk.{block_count-1} only and refuses a file with tensors it
            # did not create (llama_model_loader::done_getting_tensors: "wrong number of tensors")
            raise ModelReadError(f"{path}: tensor {printable(t.name, limit=80)} belongs to block {t.layer} "
                                 f"but {arch}.block_count is {hparams.n_layer}",
                                 remedy="the file is damaged or was converted wrongly; llama.cpp refuses it too")
    names = {t.name for t in tensors}
    ft = md.get(Keys.General.FILE_TYPE)
    return ModelProfile(
        path=path,
        arch=arch,
        name=_clean(md.get(Keys.General.NAME)),
        file_type=ft if isinstance(ft, int) else None,
        files=tuple(str(h.path) for h in headers),
        file_bytes=sum(h.file_bytes for h in headers),
        tensors=tuple(tensors),
        hparams=hparams,
        tied_embeddings="output.weight" not in names and "token_embd.weight" in names,
        metadata={k: v for k, v in md.items() if not isinstance(v, ArraySummary)},
    )


def _clean(value: Any) -> str | None:
    """Strings from a GGUF are untrusted: no control characters, bounded length."""
    if not isinstance(value, str):
        return None
    return printable(value, limit=200)
