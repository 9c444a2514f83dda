"""A model of llama.cpp's compute buffers.

llama.cpp sizes them by building the worst-case graph (``n_tokens = n_ubatch``) and letting
ggml-alloc place every intermediate tensor; there is no closed form. This model follows the shape
of that graph, per device:

- graph inputs each device keeps a copy of: the KQ mask of each cache the device's layers read
  (``n_kv x n_tokens`` f32, plus its f16 cast under flash attention) and the layer input
  (``n_embd x n_tokens`` f32);
- the live intermediates of the largest phase the device runs: attention (without flash
  attention the ``n_kv x n_tokens x n_head`` f32 scores dominate), the FFN (``n_ff x n_tokens``
  activations; MoE: the selected experts' rows), and on the output device the logits
  (``n_vocab x n_outputs`` f32).

The coefficients were calibrated against ``llama-fit-params -fitp on`` on the real fixtures
(SmolLM2, Gemma-3) over CPU and RPC devices; ``benchmarks/accuracy.py`` prints how close it is.
"""

from __future__ import annotations

from collections.abc import Sequence

from llamasplit.devices.device import Device
from llamasplit.model.profile import ModelProfile
from llamasplit.planner.kv import KvLayout, pad
from llamasplit.planner.settings import LlamaSettings

KQ_MASK_PAD = 64
"""GGML_KQ_MASK_PAD: the mask's token dimension is padded to this."""


def compute_bytes(
    model: ModelProfile,
    devices: Sequence[Device],
    layer_dev: Sequence[int | None],
    settings: LlamaSettings,
    *,
    layout: KvLayout,
    n_ubatch: int,
    n_outputs: int,
    flash: bool,
) -> list[int]:
    """Compute buffer bytes per device, then the host (last)."""
    hp = model.hparams
    n_dev = len(devices)
    T = n_ubatch
    T_mask = pad(T, KQ_MASK_PAD)
    out: list[int] = []
    out_dev = layer_dev[hp.n_layer]
    n_kv_full = layout.kv_size * layout.n_stream
    n_kv_swa = layout.swa_size * layout.n_stream
    # bytes per mask cell, calibrated: the f32 mask, its f16 cast and the scheduler's copies
    mask_elem = MASK_BYTES_FLASH if flash else MASK_BYTES_NO_FLASH
    kinds_all = {hp.is_swa[il] for il in range(hp.n_layer_kv) if not hp.is_recurrent[il]}
    n_kv_all = sum(n_kv_swa if swa else n_kv_full for swa in kinds_all)
    # pipeline parallelism (llama-context.cpp): several devices, every layer offloaded, layer split,
    # no tensor overrides, KV offloaded. The scheduler then keeps copies of the split inputs
    # (GGML_SCHED_MAX_COPIES) and the phases of a device no longer share memory.
    pipeline = (
        n_dev > 1
        and all(d is not None for d in layer_dev)
        and settings.split_mode == "layer"
        and not settings.effective_overrides
        and settings.offload_kqv
    )

    for d in [*range(n_dev), None]:
        layers = [il for il in range(hp.n_layer_kv) if layer_dev[il] == d]
        is_out = out_dev == d
        total = 0
        if pipeline and (layers or is_out or d is None):
            # with several backends each keeps its copy of the graph inputs: the masks of all caches
            total = n_kv_all * T_mask * mask_elem
        attn = ffn = 0
        if layers:
            n_head = max(hp.n_head[il] for il in layers)
            n_ff = max(hp.n_ff[il] for il in layers) if any(hp.n_ff) else hp.n_ff_exp * max(hp.n_expert_used, 1)
            n_kv_max = max(n_kv_swa if hp.is_swa[il] else n_kv_full for il in layers)
            if not flash:
                attn = n_kv_max * T * n_head * 4  # the f32 KQ scores
            ffn = int(n_ff * T * 4 * FFN_FACTOR)
        logits = hp.n_vocab * n_outputs * 4 + hp.n_embd * T * 4 if is_out else 0
        if not pipeline:
            # one allocator per backend reuses everything: the mask (f32, plus f16 under flash) lives with attention
            mask = n_kv_all * T_mask * (6 if flash else 4) if layers else 0
            total += max(attn + mask, ffn, logits)
        else:
            total += max(attn, ffn + logits)
        out.append(total)
    return out


MASK_BYTES_FLASH = 8
MASK_BYTES_NO_FLASH = 16
FFN_FACTOR = 5.5
