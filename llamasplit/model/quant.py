"""What-if quantization: the tensor types ``llama-quantize`` would choose, from the header alone.

``requantize(arch, metadata, tensors, "Q3_K_M")`` answers "what would this model weigh at Q3_K_M?"
without downloading the weights: it replays ``src/llama-quant.cpp`` of the pinned llama.cpp
(``llama_tensor_get_type`` and everything it calls) on the tensor table. The rules, in the order
llama.cpp applies them to each tensor:

1. ``tensor_allows_quantization``: only 2-D and 3-D tensors whose name ends in ``weight`` are
   touched; norms, expert routers (``ffn_gate_inp``), position embeddings, token types, SSM convs,
   RWKV's small mixes, T5's relative bias and a few multimodal tables keep their type.
2. The file type's default tensor type (``llama_ftype_get_default_type``); F16/BF16/F32 apply it to
   every tensor that may be quantized, and stop there.
3. Unless ``--pure``: the per-role recipe (``llama_tensor_get_type_impl``): output and tied token
   embeddings get Q6_K (Q8_0 when the row does not fit the type's block, Q5_K for the 1-2 bit IQ
   types), attn_v / ffn_down get more bits on some layers (``use_more_bits``), and arch special
   cases (falcon, 70B models, 8-expert MoE, bailingmoe3, glm5-next) apply. The layer of attn_v is
   a running count over the tensors in llama.cpp's order (by layer number, then name); that of
   ffn_down/gate/up is the same count in dense models and the ``blk.N.`` number in MoE models.
4. ``tensor_type_fallback``: a row whose length is not a multiple of the type's block falls back
   to a 32-block type (IQ4_NL, Q4_0, Q5_0, Q5_1, Q8_0), and to F16 when even 32 does not divide it.

Everything here is a pure function of the header: no I/O, no llama.cpp.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from enum import Enum, auto
from typing import Any

from llamasplit.gguf_constants import (
    GGML_QUANT_SIZES,
    MODEL_ARCH,
    MODEL_ARCH_NAMES,
    MODEL_TENSOR,
    TENSOR_NAMES,
    GGMLQuantizationType,
    Keys,
    LlamaFileType,
)

from llamasplit.errors import ModelReadError, UsageError
from llamasplit.model.gguf_reader import RawTensor, ggml_nbytes

_T = GGMLQuantizationType
_F = LlamaFileType

FILE_TYPES: Mapping[str, LlamaFileType] = {
    # the names llama-quantize accepts (tools/quantize/quantize.cpp QUANT_OPTIONS), in its order.
    # Q2_0 is left out: gguf 0.19.0 has no GGMLQuantizationType for it, so neither its size nor a
    # file made with it can be read here. NVFP4 is not offered by llama-quantize.
    "Q1_0": _F.MOSTLY_Q1_0,
    "Q4_0": _F.MOSTLY_Q4_0,
    "Q4_1": _F.MOSTLY_Q4_1,
    "MXFP4_MOE": _F.MOSTLY_MXFP4_MOE,
    "Q5_0": _F.MOSTLY_Q5_0,
    "Q5_1": _F.MOSTLY_Q5_1,
    "IQ2_XXS": _F.MOSTLY_IQ2_XXS,
    "IQ2_XS": _F.MOSTLY_IQ2_XS,
    "IQ2_S": _F.MOSTLY_IQ2_S,
    "IQ2_M": _F.MOSTLY_IQ2_M,
    "IQ1_S": _F.MOSTLY_IQ1_S,
    "IQ1_M": _F.MOSTLY_IQ1_M,
    "TQ1_0": _F.MOSTLY_TQ1_0,
    "TQ2_0": _F.MOSTLY_TQ2_0,
    "Q2_K": _F.MOSTLY_Q2_K,
    "Q2_K_S": _F.MOSTLY_Q2_K_S,
    "IQ3_XXS": _F.MOSTLY_IQ3_XXS,
    "IQ3_S": _F.MOSTLY_IQ3_S,
    "IQ3_M": _F.MOSTLY_IQ3_M,
    "Q3_K": _F.MOSTLY_Q3_K_M,
    "IQ3_XS": _F.MOSTLY_IQ3_XS,
    "Q3_K_S": _F.MOSTLY_Q3_K_S,
    "Q3_K_M": _F.MOSTLY_Q3_K_M,
    "Q3_K_L": _F.MOSTLY_Q3_K_L,
    "IQ4_NL": _F.MOSTLY_IQ4_NL,
    "IQ4_XS": _F.MOSTLY_IQ4_XS,
    "Q4_K": _F.MOSTLY_Q4_K_M,
    "Q4_K_S": _F.MOSTLY_Q4_K_S,
    "Q4_K_M": _F.MOSTLY_Q4_K_M,
    "Q5_K": _F.MOSTLY_Q5_K_M,
    "Q5_K_S": _F.MOSTLY_Q5_K_S,
    "Q5_K_M": _F.MOSTLY_Q5_K_M,
    "Q6_K": _F.MOSTLY_Q6_K,
    "Q8_0": _F.MOSTLY_Q8_0,
    "F16": _F.MOSTLY_F16,
    "BF16": _F.MOSTLY_BF16,
    "F32": _F.ALL_F32,
    "COPY": _F.ALL_F32,  # llama-quantize's "only copy": every tensor keeps its type
}
"""llama-quantize's type names (matched case-insensitively, as it does) -> the file type."""

IMATRIX_FILE_TYPES: frozenset[str] = frozenset(
    {"IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ3_XXS", "IQ3_XS", "Q2_K_S"}
)
"""Types whose recipe puts some ordinary tensor in IQ1_*/IQ2_*/IQ3_XXS (or Q2_K inside Q2_K_S), which
llama-quantize refuses to make without ``--imatrix`` (``tensor_requires_imatrix``). The sizes are still
predicted; ``imatrix_required`` says exactly which tensors of a given model trip the check."""

_BAILINGMOE3 = "bailingmoe3"  # llama.cpp arch names that gguf 0.19.0 does not list
_GLM5_NEXT = "glm5-next"
_NANBEIGE = "nanbeige"
_GRANITE_SWITCH = "graniteswitch"
_FALCON = MODEL_ARCH_NAMES[MODEL_ARCH.FALCON]

_ARCH_70B_LAYERS = {
    # llm_type 70B, set by load_arch_hparams from n_layer() (block_count - nextn_predict_layers)
    MODEL_ARCH_NAMES[MODEL_ARCH.QWEN2]: 80,
    MODEL_ARCH_NAMES[MODEL_ARCH.DECI]: 80,
    MODEL_ARCH_NAMES[MODEL_ARCH.OLMO]: 80,
    MODEL_ARCH_NAMES[MODEL_ARCH.JAIS2]: 68,
    MODEL_ARCH_NAMES[MODEL_ARCH.LLAMA]: 80,  # and n_head != n_head_kv, n_expert != 8 (else 65B / 8x..)
}

_NUM_LOOPS_KEY = "{arch}.num_loops"  # LLM_KV_NUM_LOOPS (nanbeige); not in gguf 0.19.0


def _weight(tensor: MODEL_TENSOR) -> str:
    """``token_embd.weight``; for per-layer names the part after ``blk.{bid}.``."""
    return TENSOR_NAMES[tensor].removeprefix("blk.{bid}.") + ".weight"


def _role(tensor: MODEL_TENSOR) -> str:
    """``ffn_up`` from ``blk.{bid}.ffn_up``."""
    return TENSOR_NAMES[tensor].removeprefix("blk.{bid}.")


_OUTPUT = _weight(MODEL_TENSOR.OUTPUT)
_TOKEN_EMBDS = (_weight(MODEL_TENSOR.TOKEN_EMBD), _weight(MODEL_TENSOR.PER_LAYER_TOKEN_EMBD))
_POS_EMBD = _weight(MODEL_TENSOR.POS_EMBD)
_TOKEN_TYPES = _weight(MODEL_TENSOR.TOKEN_TYPES)

# tensor_allows_quantization: names containing any of these keep their type (llama-quant.cpp's
# own substring patterns, in its order)
_NEVER_QUANTIZED = (
    "_norm.weight",
    _weight(MODEL_TENSOR.FFN_GATE_INP),
    "ffn_gate_tid2eid.weight",
    "altup",
    "laurel",
    "per_layer_model_proj",
    _role(MODEL_TENSOR.SSM_CONV1D),
    "shortconv.conv.weight",
    "indexer.k_proj.weight",
    "indexer.q_proj.weight",
    "time_mix_first.weight",
    "time_mix_w0.weight",
    "time_mix_w1.weight",
    "time_mix_w2.weight",
    "time_mix_v0.weight",
    "time_mix_v1.weight",
    "time_mix_v2.weight",
    "time_mix_a0.weight",
    "time_mix_a1.weight",
    "time_mix_a2.weight",
    "time_mix_g1.weight",
    "time_mix_g2.weight",
    "time_mix_decay_w1.weight",
    "time_mix_decay_w2.weight",
    "time_mix_lerp_fused.weight",
    "attn_rel_b.weight",
    ".position_embd",
    "sam.pos_embd",
    "sam.neck.",
    "sam.net_",
    ".rel_pos",
    ".patch_embd",
    ".patch_merger",
    "a.rvq.codebook",
    "mm.a.code_embd",
)
_NEVER_QUANTIZED_GLM5_NEXT = (
    "hc_",
    "indexer.attn_q_b",
    "indexer.attn_k",
    "indexer.proj",
    "indexer_compressor_gate",
    "indexer_compressor_ape",
    "ssm_f_a.weight",
    "ssm_f_b.weight",
    "ssm_g_a.weight",
    "ssm_g_b.weight",
    "ssm_beta.weight",
    "attn_kv_a_mqa.weight",
    "attn_k_b.weight",
    "attn_v_b.weight",
)
_GLM5_NEXT_Q8_FLOOR = ("attn_q_a", "attn_q_b", "nextn.eh_proj")

_DEFAULT_TYPE: Mapping[LlamaFileType, GGMLQuantizationType] = {
    # llama_ftype_get_default_type
    _F.MOSTLY_Q4_0: _T.Q4_0,
    _F.MOSTLY_Q4_1: _T.Q4_1,
    _F.MOSTLY_Q5_0: _T.Q5_0,
    _F.MOSTLY_Q5_1: _T.Q5_1,
    _F.MOSTLY_Q8_0: _T.Q8_0,
    _F.MOSTLY_F16: _T.F16,
    _F.MOSTLY_BF16: _T.BF16,
    _F.ALL_F32: _T.F32,
    _F.MOSTLY_Q1_0: _T.Q1_0,
    _F.MOSTLY_MXFP4_MOE: _T.MXFP4,
    _F.MOSTLY_Q2_K_S: _T.Q2_K,
    _F.MOSTLY_Q2_K: _T.Q2_K,
    _F.MOSTLY_IQ3_XS: _T.IQ3_S,
    _F.MOSTLY_Q3_K_S: _T.Q3_K,
    _F.MOSTLY_Q3_K_M: _T.Q3_K,
    _F.MOSTLY_Q3_K_L: _T.Q3_K,
    _F.MOSTLY_Q4_K_S: _T.Q4_K,
    _F.MOSTLY_Q4_K_M: _T.Q4_K,
    _F.MOSTLY_Q5_K_S: _T.Q5_K,
    _F.MOSTLY_Q5_K_M: _T.Q5_K,
    _F.MOSTLY_Q6_K: _T.Q6_K,
    _F.MOSTLY_TQ1_0: _T.TQ1_0,
    _F.MOSTLY_TQ2_0: _T.TQ2_0,
    _F.MOSTLY_IQ2_XXS: _T.IQ2_XXS,
    _F.MOSTLY_IQ2_XS: _T.IQ2_XS,
    _F.MOSTLY_IQ2_S: _T.IQ2_XS,
    _F.MOSTLY_IQ2_M: _T.IQ2_S,
    _F.MOSTLY_IQ3_XXS: _T.IQ3_XXS,
    _F.MOSTLY_IQ1_S: _T.IQ1_S,
    _F.MOSTLY_IQ1_M: _T.IQ1_M,
    _F.MOSTLY_IQ4_NL: _T.IQ4_NL,
    _F.MOSTLY_IQ4_XS: _T.IQ4_XS,
    _F.MOSTLY_IQ3_S: _T.IQ3_S,
    _F.MOSTLY_IQ3_M: _T.IQ3_S,
}

_FALLBACK: Mapping[GGMLQuantizationType, GGMLQuantizationType] = {
    # tensor_type_fallback: a 256-block type whose block does not divide the row -> a 32-block type
    _T.IQ1_S: _T.IQ4_NL,
    _T.IQ1_M: _T.IQ4_NL,
    _T.IQ2_XXS: _T.IQ4_NL,
    _T.IQ2_XS: _T.IQ4_NL,
    _T.IQ2_S: _T.IQ4_NL,
    _T.IQ3_XXS: _T.IQ4_NL,
    _T.IQ3_S: _T.IQ4_NL,
    _T.IQ4_XS: _T.IQ4_NL,
    _T.Q2_K: _T.Q4_0,
    _T.Q3_K: _T.Q4_0,
    _T.TQ1_0: _T.Q4_0,
    _T.TQ2_0: _T.Q4_0,
    _T.Q4_K: _T.Q5_0,
    _T.Q5_K: _T.Q5_1,
    _T.Q6_K: _T.Q8_0,
}

_IMATRIX_TYPES = frozenset({_T.IQ3_XXS, _T.IQ2_XXS, _T.IQ2_XS, _T.IQ2_S, _T.IQ1_M, _T.IQ1_S})
_UNQUANTIZED = frozenset({_T.F32, _T.F16, _T.BF16, _T.F64, _T.I8, _T.I16, _T.I32, _T.I64})

_IQ12 = frozenset({_F.MOSTLY_IQ2_XXS, _F.MOSTLY_IQ2_XS, _F.MOSTLY_IQ1_S, _F.MOSTLY_IQ2_S, _F.MOSTLY_IQ2_M, _F.MOSTLY_IQ1_M})
_IQ2_SM = frozenset({_F.MOSTLY_IQ2_S, _F.MOSTLY_IQ2_M})
_OUTPUT_Q5K = frozenset({_F.MOSTLY_IQ2_XXS, _F.MOSTLY_IQ2_XS, _F.MOSTLY_IQ3_XXS, _F.MOSTLY_IQ1_S,
                         _F.MOSTLY_IQ2_S, _F.MOSTLY_IQ2_M, _F.MOSTLY_IQ1_M})
_ATTN_OUT_8EXPERT_Q5K = frozenset({_F.MOSTLY_Q2_K, _F.MOSTLY_IQ3_XS, _F.MOSTLY_IQ3_XXS, _F.MOSTLY_Q3_K_S,
                                   _F.MOSTLY_Q3_K_M, _F.MOSTLY_IQ4_NL, _F.MOSTLY_Q4_K_S, _F.MOSTLY_Q4_K_M,
                                   _F.MOSTLY_IQ3_S, _F.MOSTLY_IQ3_M, _F.MOSTLY_IQ4_XS})

_BLK = re.compile(r"blk\.\s*([+-]?\d+)")


class _Cat(Enum):
    """tensor_category: broad roles found by substring, as llama-quant.cpp does."""

    TOKEN_EMBD = auto()
    ATTENTION_Q = auto()
    ATTENTION_V = auto()
    ATTENTION_K = auto()
    ATTENTION_QKV = auto()
    ATTENTION_KV_B = auto()
    ATTENTION_OUTPUT = auto()
    FFN_UP = auto()
    FFN_GATE = auto()
    FFN_DOWN = auto()
    OUTPUT = auto()
    OTHER = auto()


_CATEGORY_SUBSTRINGS = (
    # first match wins, in tensor_get_category's order
    (_weight(MODEL_TENSOR.ATTN_QKV), _Cat.ATTENTION_QKV),
    (_weight(MODEL_TENSOR.ATTN_KV_B), _Cat.ATTENTION_KV_B),
    (_weight(MODEL_TENSOR.ATTN_V), _Cat.ATTENTION_V),
    (_weight(MODEL_TENSOR.ATTN_K), _Cat.ATTENTION_K),
    (_weight(MODEL_TENSOR.ATTN_Q), _Cat.ATTENTION_Q),
    (_weight(MODEL_TENSOR.ATTN_OUT), _Cat.ATTENTION_OUTPUT),
    (_role(MODEL_TENSOR.FFN_UP), _Cat.FFN_UP),
    (_role(MODEL_TENSOR.FFN_GATE), _Cat.FFN_GATE),
    (_role(MODEL_TENSOR.FFN_DOWN), _Cat.FFN_DOWN),
)
_ATTN_V_LIKE = frozenset({_Cat.ATTENTION_V, _Cat.ATTENTION_QKV, _Cat.ATTENTION_KV_B})


def _category(name: str) -> _Cat:
    if name == _OUTPUT:
        return _Cat.OUTPUT
    if name in _TOKEN_EMBDS:
        return _Cat.TOKEN_EMBD
    for needle, cat in _CATEGORY_SUBSTRINGS:
        if needle in name:
            return cat
    return _Cat.OTHER


def parse_file_type(name: str) -> tuple[str, LlamaFileType]:
    """``"q4_k_m"`` -> ``("Q4_K_M", LlamaFileType.MOSTLY_Q4_K_M)``; unknown names raise ``UsageError``."""
    key = name.strip().upper()
    if key not in FILE_TYPES:
        raise UsageError(
            f"unknown quantization type {name!r}",
            remedy="use one of " + ", ".join(FILE_TYPES),
        )
    return key, FILE_TYPES[key]


@dataclass(frozen=True)
class _HParams:
    """The few hyperparameters llama-quant.cpp reads (after llama.cpp's load_hparams)."""

    n_layer_all: int
    n_expert: int
    n_gqa: int
    is_70b: bool


def _int_key(metadata: Mapping[str, Any], key: str, default: int | None) -> int:
    value = metadata.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ModelReadError(
            f"metadata {key} is {value!r}, not a whole number",
            remedy="llama.cpp cannot load this model either; re-convert it",
        )
    return value


def _first_of(metadata: Mapping[str, Any], key: str, default: int) -> int:
    """A per-layer key read as llama.cpp's get_key_or_arr does, at layer 0."""
    value = metadata.get(key, default)
    if isinstance(value, list):
        value = value[0] if value else default
    if isinstance(value, bool) or not isinstance(value, int):
        raise ModelReadError(f"metadata {key} is {value!r}, not a whole number", remedy="re-convert the model")
    return value


def _hparams(arch: str, metadata: Mapping[str, Any]) -> _HParams:
    block_count_key = Keys.LLM.BLOCK_COUNT.format(arch=arch)
    if block_count_key not in metadata:
        raise ModelReadError(
            f"the model has no {block_count_key}, so llama.cpp cannot load it",
            remedy="check that general.architecture names the model's arch",
        )
    n_layer_all = _int_key(metadata, block_count_key, None)
    n_nextn = _int_key(metadata, Keys.LLM.NEXTN_PREDICT_LAYERS.format(arch=arch), 0)
    n_expert = _int_key(metadata, Keys.LLM.EXPERT_COUNT.format(arch=arch), 0)
    n_head = _first_of(metadata, Keys.Attention.HEAD_COUNT.format(arch=arch), 0)
    n_head_kv = _first_of(metadata, Keys.Attention.HEAD_COUNT_KV.format(arch=arch), n_head)
    n_layer = n_layer_all - n_nextn  # hparams.n_layer()
    # load_arch_hparams that change n_layer_all, which sizes the ffn layer count
    if arch == _NANBEIGE:
        n_loops = _int_key(metadata, _NUM_LOOPS_KEY.format(arch=arch), 1)
        if n_loops > 1:
            n_layer_all = n_layer * n_loops
    elif arch == _GRANITE_SWITCH:
        n_layer_all = n_layer + 1  # the router layer at the end
    is_70b = n_layer == _ARCH_70B_LAYERS.get(arch)
    if arch == MODEL_ARCH_NAMES[MODEL_ARCH.LLAMA]:
        is_70b = is_70b and n_expert != 8 and n_head != n_head_kv
    n_gqa = n_head // n_head_kv if n_head_kv else 0
    return _HParams(n_layer_all=n_layer_all, n_expert=n_expert, n_gqa=n_gqa, is_70b=is_70b)


def _n_dims(shape: tuple[int, ...]) -> int:
    """ggml_n_dims: trailing 1s do not count."""
    for i in range(len(shape) - 1, 0, -1):
        if shape[i] > 1:
            return i + 1
    return 1


def _allows_quantization(arch: str, name: str, shape: tuple[int, ...], leave_output_tensor: bool) -> bool:
    """tensor_allows_quantization."""
    if _n_dims(shape) < 2:
        return False
    # name.rfind("weight") == name.size() - 6 in size_t: for a 5-character name both sides are npos
    if not (name.endswith("weight") or len(name) == 5):
        return False
    if leave_output_tensor and name == _OUTPUT:
        return False
    if name in (_POS_EMBD, _TOKEN_TYPES):
        return False
    if any(s in name for s in _NEVER_QUANTIZED):
        return False
    if arch == _GLM5_NEXT and any(s in name for s in _NEVER_QUANTIZED_GLM5_NEXT):
        return False
    return True


def _block(t: GGMLQuantizationType) -> int:
    return GGML_QUANT_SIZES[t][0]


def _c_div(a: int, b: int) -> int:
    """C's integer division (truncates toward zero)."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


def _c_mod(a: int, b: int) -> int:
    """C's ``%`` (takes the sign of ``a``)."""
    return a - b * _c_div(a, b)


def _use_more_bits(i_layer: int, n_layers: int) -> bool:
    """The first and last eighth of the layers, and every third one between."""
    eighth = _c_div(n_layers, 8)
    return i_layer < eighth or i_layer >= _c_div(7 * n_layers, 8) or _c_mod(i_layer - eighth, 3) == 2


def _layer_of(name: str) -> int | None:
    """sscanf(name, "blk.%d.", &il) == 1."""
    m = _BLK.match(name)
    return int(m.group(1)) if m else None


class _State:
    """quantize_state_impl: the running counts."""

    def __init__(self, n_attention_wv: int, n_layer_all: int, has_tied_embeddings: bool) -> None:
        self.n_attention_wv = n_attention_wv
        self.n_ffn_down = self.n_ffn_gate = self.n_ffn_up = n_layer_all
        self.i_attention_wv = self.i_ffn_down = self.i_ffn_gate = self.i_ffn_up = 0
        self.has_tied_embeddings = has_tied_embeddings


def _layer_info(hp: _HParams, i_layer: int, n_layer: int, name: str) -> tuple[int, int]:
    if max(1, hp.n_expert) > 1:
        # MoE: experts are not in layer order, so the layer comes from the name
        parsed = _layer_of(name)
        if parsed is None:
            raise ModelReadError(f"cannot tell the layer of tensor {name!r}", remedy="llama-quantize fails on it too")
        if not 0 <= parsed < n_layer:
            raise ModelReadError(
                f"tensor {name!r} is in layer {parsed}, outside [0, {n_layer})",
                remedy="llama-quantize fails on it too; the block_count metadata is wrong",
            )
        return parsed, n_layer
    return i_layer, n_layer


def _recipe(
    qs: _State, hp: _HParams, arch: str, name: str, shape: tuple[int, ...], new: _T, ftype: _F,
    cat: _Cat, has_imatrix: bool,
) -> _T:
    """llama_tensor_get_type_impl, line for line."""
    falcon = arch == _FALCON
    n_expert = hp.n_expert

    if arch == _GLM5_NEXT and any(s in name for s in _GLM5_NEXT_Q8_FLOOR):
        if new not in (_T.F32, _T.BF16, _T.F16):
            return _T.Q8_0

    if cat is _Cat.OUTPUT or (qs.has_tied_embeddings and cat is _Cat.TOKEN_EMBD):
        nx = shape[0]
        if ftype == _F.MOSTLY_MXFP4_MOE:
            new = _T.Q8_0
        elif falcon or nx % _block(new):
            new = _T.Q8_0
        elif ftype in _OUTPUT_Q5K:
            new = _T.Q5_K
        elif new != _T.Q8_0:
            new = _T.Q6_K
    elif ftype == _F.MOSTLY_MXFP4_MOE:
        expert_role = cat in (_Cat.FFN_UP, _Cat.FFN_GATE, _Cat.FFN_DOWN)
        ne2 = shape[2] if len(shape) > 2 else 1
        if ne2 > 1 and (arch != _BAILINGMOE3 or expert_role):
            new = _T.MXFP4
        else:
            new = _T.Q8_0
    elif cat is _Cat.TOKEN_EMBD:
        if ftype in (_F.MOSTLY_IQ2_XXS, _F.MOSTLY_IQ2_XS, _F.MOSTLY_IQ1_S, _F.MOSTLY_IQ1_M):
            new = _T.Q2_K
        elif ftype in _IQ2_SM or ftype == _F.MOSTLY_IQ3_XXS:
            new = _T.IQ3_S
        elif ftype in (_F.MOSTLY_TQ1_0, _F.MOSTLY_TQ2_0):  # and Q2_0
            new = _T.Q4_K
    elif ftype in _IQ12:
        if cat in _ATTN_V_LIKE:
            if hp.n_gqa >= 4 or n_expert >= 4:
                new = _T.Q4_K
            else:
                new = _T.IQ3_S if ftype in _IQ2_SM else _T.Q2_K
            qs.i_attention_wv += 1
        elif n_expert == 8 and cat is _Cat.ATTENTION_K:
            new = _T.Q4_K
        elif cat is _Cat.FFN_DOWN:
            if qs.i_ffn_down < _c_div(qs.n_ffn_down, 8):
                new = _T.IQ3_S if ftype in _IQ2_SM else _T.Q2_K
            qs.i_ffn_down += 1
        elif cat is _Cat.ATTENTION_OUTPUT:
            if n_expert == 8:
                new = _T.Q5_K
            elif ftype in (_F.MOSTLY_IQ1_S, _F.MOSTLY_IQ1_M):
                new = _T.IQ2_XXS
            elif ftype in _IQ2_SM:
                new = _T.IQ3_S
    elif cat in _ATTN_V_LIKE:
        if ftype == _F.MOSTLY_Q2_K:
            new = _T.Q4_K if hp.n_gqa >= 4 else _T.Q3_K
        elif ftype == _F.MOSTLY_Q2_K_S and hp.n_gqa >= 4:
            new = _T.Q4_K
        elif ftype == _F.MOSTLY_IQ3_XXS:
            new = _T.Q4_K if hp.n_gqa >= 4 else (_T.IQ3_XXS if has_imatrix else _T.IQ3_S)
        elif ftype in (_F.MOSTLY_IQ3_XS, _F.MOSTLY_IQ3_S) and hp.n_gqa >= 4:
            new = _T.Q4_K
        elif ftype == _F.MOSTLY_IQ3_M:
            new = _T.Q4_K
        elif ftype == _F.MOSTLY_Q3_K_M:
            new = _T.Q5_K if qs.i_attention_wv < 2 else _T.Q4_K
        elif ftype == _F.MOSTLY_Q3_K_L:
            new = _T.Q5_K
        elif ftype in (_F.MOSTLY_IQ4_NL, _F.MOSTLY_IQ4_XS) and hp.n_gqa >= 4:
            new = _T.Q5_K
        elif ftype in (_F.MOSTLY_Q4_K_M, _F.MOSTLY_Q5_K_M) and _use_more_bits(qs.i_attention_wv, qs.n_attention_wv):
            new = _T.Q6_K
        elif ftype == _F.MOSTLY_Q4_K_S and qs.i_attention_wv < 4:
            new = _T.Q5_K
        if hp.is_70b and new in (_T.Q3_K, _T.Q4_K):
            new = _T.Q5_K  # 8 heads share attn_v in 70B models: more bits for little size
        if n_expert == 8:
            new = _T.Q8_0
        qs.i_attention_wv += 1
    elif cat is _Cat.ATTENTION_K:
        if n_expert == 8:
            new = _T.Q8_0
        elif ftype == _F.MOSTLY_IQ3_XS:
            new = _T.IQ3_XXS
        elif ftype == _F.MOSTLY_IQ3_XXS:
            new = _T.IQ2_S
    elif cat is _Cat.ATTENTION_Q:
        if ftype == _F.MOSTLY_IQ3_XS:
            new = _T.IQ3_XXS
        elif ftype == _F.MOSTLY_IQ3_XXS:
            new = _T.IQ2_S
    elif cat is _Cat.FFN_DOWN:
        i_layer, n_layer = _layer_info(hp, qs.i_ffn_down, qs.n_ffn_down, name)
        eighth = _c_div(n_layer, 8)
        if ftype == _F.MOSTLY_Q2_K:
            new = _T.Q3_K
        elif ftype == _F.MOSTLY_Q2_K_S:
            if i_layer < eighth:
                new = _T.Q4_K
        elif ftype == _F.MOSTLY_IQ3_XXS and not has_imatrix:
            new = _T.Q4_K if i_layer < eighth else _T.Q3_K
        elif ftype == _F.MOSTLY_Q3_K_M:
            if i_layer < _c_div(n_layer, 16):
                new = _T.Q5_K
            elif not falcon or _use_more_bits(i_layer, n_layer):
                new = _T.Q4_K
            else:
                new = _T.Q3_K
        elif ftype == _F.MOSTLY_IQ3_M and (i_layer < eighth or (n_expert == 8 and _use_more_bits(i_layer, n_layer))):
            new = _T.Q4_K
        elif ftype == _F.MOSTLY_Q3_K_L:
            new = _T.Q4_K if falcon else _T.Q5_K
        elif ftype == _F.MOSTLY_Q4_K_M:
            if falcon:
                if i_layer < _c_div(n_layer, 16):
                    new = _T.Q6_K
                elif _use_more_bits(i_layer, n_layer):
                    new = _T.Q5_K
                else:
                    new = _T.Q4_K
            elif _use_more_bits(i_layer, n_layer):
                new = _T.Q6_K
        elif i_layer < eighth and ftype in (_F.MOSTLY_IQ4_NL, _F.MOSTLY_IQ4_XS) and not has_imatrix:
            new = _T.Q5_K
        elif ftype == _F.MOSTLY_Q5_K_M and _use_more_bits(i_layer, n_layer):
            new = _T.Q6_K
        elif ftype == _F.MOSTLY_Q4_K_S and not falcon and i_layer < eighth:
            new = _T.Q5_K
        elif ftype in (_F.MOSTLY_Q4_0, _F.MOSTLY_Q5_0) and has_imatrix and i_layer < eighth:
            new = _T.Q4_1 if ftype == _F.MOSTLY_Q4_0 else _T.Q5_1
        qs.i_ffn_down += 1
    elif cat is _Cat.ATTENTION_OUTPUT:
        if not falcon:
            if n_expert == 8:
                if ftype in _ATTN_OUT_8EXPERT_Q5K:
                    new = _T.Q5_K
            elif ftype == _F.MOSTLY_Q2_K:
                new = _T.Q3_K
            elif ftype == _F.MOSTLY_IQ3_XXS:
                new = _T.IQ3_S
            elif ftype in (_F.MOSTLY_Q3_K_M, _F.MOSTLY_IQ3_M):
                new = _T.Q4_K
            elif ftype == _F.MOSTLY_Q3_K_L:
                new = _T.Q5_K
        elif ftype == _F.MOSTLY_Q3_K_L:
            new = _T.Q4_K
    elif cat is _Cat.ATTENTION_QKV:
        if ftype in (_F.MOSTLY_Q3_K_M, _F.MOSTLY_Q3_K_L, _F.MOSTLY_IQ3_M):
            new = _T.Q4_K
        elif ftype == _F.MOSTLY_Q4_K_M:
            new = _T.Q5_K
        elif ftype == _F.MOSTLY_Q5_K_M:
            new = _T.Q6_K
    elif cat is _Cat.FFN_GATE:
        i_layer, n_layer = _layer_info(hp, qs.i_ffn_gate, qs.n_ffn_gate, name)
        if ftype == _F.MOSTLY_IQ3_XS and _c_div(n_layer, 8) <= i_layer < _c_div(7 * n_layer, 8):
            new = _T.IQ3_XXS
        qs.i_ffn_gate += 1
    elif cat is _Cat.FFN_UP:
        i_layer, n_layer = _layer_info(hp, qs.i_ffn_up, qs.n_ffn_up, name)
        if ftype == _F.MOSTLY_IQ3_XS and _c_div(n_layer, 8) <= i_layer < _c_div(7 * n_layer, 8):
            new = _T.IQ3_XXS
        qs.i_ffn_up += 1
    return new


def _fallback(name: str, ncols: int, target: _T, type_name: str) -> _T:
    """tensor_type_fallback."""
    if ncols % _block(target) == 0:
        return target
    if target in _FALLBACK:
        result = _FALLBACK[target]
    elif _block(target) <= 32:
        result = target  # already a 32-block type: only F16 is left, below
    else:
        raise UsageError(
            f"llama-quantize cannot make {type_name} of this model: tensor {name!r} has rows of {ncols}, "
            f"not a multiple of the {target.name} block of {_block(target)}, and {target.name} has no fallback",
            remedy="choose another type",
        )
    if ncols % _block(result):
        result = _T.F16
    return result


def _sort_key(name: str) -> tuple[int, str]:
    """llama_model_loader's weight_name_comparer: by layer number (-1 outside blocks), then name."""
    layer = _layer_of(name)
    return (-1 if layer is None else layer, name)


@dataclass(frozen=True)
class _Choice:
    new_type: GGMLQuantizationType
    allows_quantization: bool
    requires_imatrix: bool


def _choose(
    arch: str, metadata: Mapping[str, Any], tensors: Sequence[RawTensor], ftype: str, *,
    pure: bool, leave_output_tensor: bool, has_imatrix: bool,
) -> dict[str, _Choice]:
    type_name, file_type = parse_file_type(ftype)
    only_copy = type_name == "COPY"
    hp = _hparams(arch, metadata)
    default = _DEFAULT_TYPE[file_type]
    order = sorted(tensors, key=lambda t: _sort_key(t.name))
    categories = {t.name: _category(t.name) for t in order}
    qs = _State(
        n_attention_wv=sum(1 for c in categories.values() if c in _ATTN_V_LIKE),
        n_layer_all=hp.n_layer_all,
        has_tied_embeddings=_Cat.OUTPUT not in categories.values(),
    )
    choices: dict[str, _Choice] = {}
    for t in order:
        cur = _T(t.ggml_type)
        allowed = not only_copy and _allows_quantization(arch, t.name, t.shape, leave_output_tensor)
        new = cur
        if allowed:
            new = default
            if default not in _UNQUANTIZED:
                if not pure:
                    new = _recipe(qs, hp, arch, t.name, t.shape, new, file_type, categories[t.name], has_imatrix)
                new = _fallback(t.name, t.shape[0], new, type_name)
        requires = (
            t.name != _OUTPUT
            and t.name not in _TOKEN_EMBDS
            and (new in _IMATRIX_TYPES or (new == _T.Q2_K and file_type == _F.MOSTLY_Q2_K_S))
        )
        choices[t.name] = _Choice(new, allowed, requires)
    return choices


def requantize(
    arch: str,
    metadata: Mapping[str, Any],
    tensors: Sequence[RawTensor],
    ftype: str,
    *,
    pure: bool = False,
    leave_output_tensor: bool = False,
    has_imatrix: bool = False,
) -> list[RawTensor]:
    """The tensors as ``llama-quantize --allow-requantize IN OUT ftype`` would write them.

    ``ftype`` is a llama-quantize type name (``FILE_TYPES``, any case). ``pure``,
    ``leave_output_tensor`` and ``has_imatrix`` mirror ``--pure``, ``--leave-output-tensor`` and
    ``--imatrix`` (an imatrix changes a few choices of IQ3_XXS, IQ4_*, Q4_0 and Q5_0). The result
    keeps the input's order; ``offset`` is 0 (the new file's layout is not modelled). Raises
    ``UsageError`` for an unknown type or one llama-quantize cannot apply to this model, and
    ``ModelReadError`` for metadata llama.cpp could not load.
    """
    choices = _choose(arch, metadata, tensors, ftype, pure=pure, leave_output_tensor=leave_output_tensor,
                      has_imatrix=has_imatrix)
    out = []
    for t in tensors:
        new = choices[t.name].new_type
        out.append(replace(t, ggml_type=int(new), n_bytes=ggml_nbytes(new, t.shape), offset=0))
    return out


def requantized_bytes(
    arch: str,
    metadata: Mapping[str, Any],
    tensors: Sequence[RawTensor],
    ftype: str,
    *,
    pure: bool = False,
    leave_output_tensor: bool = False,
    has_imatrix: bool = False,
) -> int:
    """Total tensor-data bytes of ``requantize(...)`` (padding between tensors not counted)."""
    return sum(
        t.n_bytes
        for t in requantize(arch, metadata, tensors, ftype, pure=pure, leave_output_tensor=leave_output_tensor,
                            has_imatrix=has_imatrix)
    )


def imatrix_required(
    arch: str,
    metadata: Mapping[str, Any],
    tensors: Sequence[RawTensor],
    ftype: str,
    *,
    pure: bool = False,
    leave_output_tensor: bool = False,
) -> tuple[str, ...]:
    """Names of the tensors for which llama-quantize would demand ``--imatrix`` (empty: it runs without).

    llama-quantize stops at the first of them with "this quantization requires an imatrix!".
    """
    choices = _choose(arch, metadata, tensors, ftype, pure=pure, leave_output_tensor=leave_output_tensor,
                      has_imatrix=False)
    order = sorted(choices, key=_sort_key)
    return tuple(n for n in order if choices[n].allows_quantization and choices[n].requires_imatrix)
