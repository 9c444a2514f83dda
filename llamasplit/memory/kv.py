"""KV cache and recurrent-state sizes, as llama.cpp allocates them (src/llama-kv-cache*.cpp).

Per layer with a KV cache: K is ``[n_embd_k_gqa(il), kv_size, n_stream]`` of ``type_k`` and V is
``[n_embd_v_gqa(il), kv_size, n_stream]`` of ``type_v`` (no V under MLA). Sliding-window layers
get their own cache of ``pad(min(kv_size, n_swa * n_seq + n_ubatch), 256)`` cells unless
``swa_full``. NextN/MTP layers have no cache in the main context.
"""

from __future__ import annotations

from dataclasses import dataclass

from llamasplit.gguf_constants import GGML_QUANT_SIZES, GGMLQuantizationType

from llamasplit.errors import UsageError
from llamasplit.model.profile import HParams

CACHE_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1")
"""The cache types llama.cpp accepts for -ctk/-ctv (common/arg.cpp kv_cache_types)."""

KV_PAD = 256
"""llama.cpp pads cache sizes to 256 cells."""


def cache_type(name: str) -> GGMLQuantizationType:
    if name.lower() not in CACHE_TYPES:
        raise UsageError(f"cache type {name!r} is not one llama.cpp accepts", remedy=f"use one of {', '.join(CACHE_TYPES)}")
    return GGMLQuantizationType[name.upper()]


def row_bytes(ggml_type: GGMLQuantizationType, n_elements: int) -> int:
    """``ggml_row_size``: bytes of ``n_elements`` of a type (a whole number of blocks)."""
    block, size = GGML_QUANT_SIZES[ggml_type]
    if n_elements % block:
        raise UsageError(
            f"a row of {n_elements} elements does not fit {ggml_type.name} blocks of {block}",
            remedy="use an f16 cache for this model",
        )
    return n_elements // block * size


def pad(n: int, to: int) -> int:
    return (n + to - 1) // to * to


@dataclass(frozen=True)
class KvLayout:
    """Cells per layer kind for one context configuration."""

    kv_size: int
    """Cells of full-attention layers (n_ctx_seq when unified is off, else n_ctx)."""
    swa_size: int
    """Cells of sliding-window layers."""
    n_stream: int


def kv_layout(hp: HParams, *, n_ctx: int, n_seq: int, n_ubatch: int, kv_unified: bool, swa_full: bool) -> KvLayout:
    """Cache cells the way llama-context.cpp / llama-kv-cache-iswa.cpp size them."""
    n_ctx = pad(n_ctx, KV_PAD)
    n_stream = 1 if kv_unified else n_seq
    kv_size = n_ctx if kv_unified else pad(n_ctx // n_seq, KV_PAD)
    if hp.n_swa and any(hp.is_swa) and not swa_full:
        swa_size = pad(min(kv_size, hp.n_swa * (n_seq if kv_unified else 1) + n_ubatch), KV_PAD)
    else:
        swa_size = kv_size
    return KvLayout(kv_size=kv_size, swa_size=swa_size, n_stream=n_stream)


def kv_layer_bytes(hp: HParams, il: int, layout: KvLayout, type_k: str = "f16", type_v: str = "f16") -> int:
    """Bytes of layer ``il``'s K and V cache (0 for layers without one)."""
    if il >= hp.n_layer_kv or hp.is_recurrent[il]:
        return 0
    cells = layout.swa_size if hp.is_swa[il] else layout.kv_size
    k = row_bytes(cache_type(type_k), hp.n_embd_k_gqa(il)) * cells * layout.n_stream
    v = 0 if hp.is_mla else row_bytes(cache_type(type_v), hp.n_embd_v_gqa(il)) * cells * layout.n_stream
    return k + v


def kv_bytes_per_token(hp: HParams, type_k: str = "f16", type_v: str = "f16", *, swa: bool = True) -> int:
    """Cache bytes one token of context costs over all layers (``swa=False``: full-attention layers only)."""
    total = 0
    for il in range(hp.n_layer_kv):
        if hp.is_recurrent[il] or (hp.is_swa[il] and not swa):
            continue
        total += row_bytes(cache_type(type_k), hp.n_embd_k_gqa(il))
        if not hp.is_mla:
            total += row_bytes(cache_type(type_v), hp.n_embd_v_gqa(il))
    return total


def recurrent_layer_bytes(hp: HParams, il: int, n_seq: int) -> int:
    """F32 recurrent state of layer ``il`` for ``n_seq`` sequences (llama-hparams.cpp n_embd_r/n_embd_s).

    Mamba-style: conv state ``(d_conv - 1) * (d_inner + 2 * n_group * d_state)`` and SSM state
    ``d_state * d_inner`` per sequence.
    """
    if not (il < len(hp.is_recurrent) and (hp.is_recurrent[il] or (hp.parallel_ssm and il < hp.n_layer_kv))):
        return 0
    if hp.n_shortconv_l_cache:  # LFM2's short convolution: a conv state only
        return hp.n_embd * (hp.n_shortconv_l_cache - 1) * 4 * n_seq
    n_group = hp.ssm_n_group or 1
    conv = (max(hp.ssm_d_conv, 1) - 1) * (hp.ssm_d_inner + 2 * n_group * hp.ssm_d_state)
    state = hp.ssm_d_state * hp.ssm_d_inner
    return (conv + state) * 4 * n_seq
