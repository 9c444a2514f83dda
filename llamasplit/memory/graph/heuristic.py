"""The closed-form guide for archs the builder does not replay (the plan then says "compute
estimated, not replayed")."""

from __future__ import annotations

from collections.abc import Sequence

from llamasplit.devices.device import Device
from llamasplit.model.profile import ModelProfile, Role
from llamasplit.memory.graph.scheduler import GGML_SCHED_MAX_COPIES
from llamasplit.memory.kv import KvLayout
from llamasplit.memory.settings import LlamaSettings
from llamasplit.memory.weights import _override_map, _tables


def heuristic_bytes(model: ModelProfile, devices: Sequence[Device], layer_dev: Sequence[int | None],
                    settings: LlamaSettings, *, layout: KvLayout, n_ubatch: int, n_outputs: int,
                    flash: bool) -> list[int]:
    """For archs the builder does not replay: the largest phase per device plus its inputs.

    What the replay shows dominates: the graph inputs live on the CPU (the KQ masks, f16 under
    flash attention, and the unused ``inp_embd``), every device that runs attention holds a copy
    of the masks, pipeline parallelism keeps four copies of both; then the largest of
    attention's f32 KQ scores (without flash attention), the FFN's or experts' activations, and
    on the output device the logits. A guide, not a replay: forced onto the replayed models it
    lands within max(15 %, 20 MiB) of llama.cpp on 98 % of device rows (within max(3 %, 8 MiB)
    on 84 %), mostly above.
    """
    hp = model.hparams
    n_dev = len(devices)
    T_ = n_ubatch
    out_dev = layer_dev[hp.n_layer]
    n_kv_full = layout.kv_size * layout.n_stream
    n_kv_swa = layout.swa_size * layout.n_stream
    kinds = {hp.is_swa[il] for il in range(hp.n_layer_kv) if not hp.is_recurrent[il]}
    masks = sum(n_kv_swa if swa else n_kv_full for swa in kinds) * T_ * (2 if flash else 4)
    pipeline = (n_dev > 1 and all(d is not None for d in layer_dev) and settings.split_mode == "layer"
                and not settings.effective_overrides and settings.offload_kqv)
    copies = GGML_SCHED_MAX_COPIES if pipeline else 1
    n_used = max(hp.n_expert_used, 1)
    expert_devs: set[int] = set()
    if hp.n_expert:
        override_of = _override_map(_tables(model).names, settings.effective_overrides)
        names = {dv.name: i for i, dv in enumerate(devices)}
        for t in model.tensors:
            if t.role is Role.EXPERTS and t.layer is not None:
                dev = layer_dev[t.layer]
                buft = override_of.get(t.name)
                if buft is not None:
                    dev = None if buft.upper() == "CPU" else names.get(buft, dev)
                expert_devs.add(n_dev if dev is None else dev)
    out: list[int] = []
    for d in range(n_dev + 1):
        layers = [il for il in range(hp.n_layer_kv) if (layer_dev[il] if layer_dev[il] is not None else n_dev) == d]
        is_out = (out_dev if out_dev is not None else n_dev) == d
        base = (masks + hp.n_embd * T_ * 4) * copies if d == n_dev else (masks * copies if layers else 0)
        phases = [0]
        # a hybrid's recurrent (and nemotron-h's MLP-only) layers hold no KQ
        attn_layers = [il for il in layers if not hp.is_recurrent[il] and hp.n_head_kv[il] > 0]
        if attn_layers:
            n_head = max(hp.n_head[il] for il in attn_layers)
            n_kv_max = max(n_kv_swa if hp.is_swa[il] else n_kv_full for il in attn_layers)
            if not flash:
                phases.append(n_kv_max * T_ * n_head * 4 + hp.n_embd * T_ * 8)
        if layers:
            n_ff = max(hp.n_ff[il] for il in layers)
            phases.append((3 * n_ff + 2 * hp.n_embd) * T_ * 4)
        if hp.ssm_d_inner and any(hp.is_recurrent[il] for il in layers):
            # a Mamba-2 block (mamba-base.cpp build_mamba2_layer): the in-projection, the conv
            # input and output, the scan's y, all f32 per token
            conv_dim = hp.ssm_d_inner + 2 * max(hp.ssm_n_group, 1) * hp.ssm_d_state
            d_in_proj = hp.ssm_d_inner + conv_dim + hp.ssm_dt_rank
            phases.append((d_in_proj + 2 * conv_dim + 2 * hp.ssm_d_inner) * T_ * 4)
        if d in expert_devs:
            phases.append((3 * hp.n_ff_exp + 2 * hp.n_embd) * n_used * T_ * 4)
        if is_out:
            phases.append(hp.n_vocab * n_outputs * 4 + 2 * hp.n_embd * T_ * 4)
        out.append(base + max(phases))
    return out
