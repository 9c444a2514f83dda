"""The estimator's entry point: build the arch's graph, schedule it, allocate it."""

from __future__ import annotations

from collections.abc import Sequence

from llamasplit.devices.device import Device
from llamasplit.model.profile import Block, ModelProfile, Role
from llamasplit.memory.graph import transformer
from llamasplit.memory.graph.allocator import allocate_graph
from llamasplit.memory.graph.base import Ctx
from llamasplit.memory.graph.builder import Builder
from llamasplit.memory.graph.heuristic import heuristic_bytes
from llamasplit.memory.graph.registry import NOT_REPLAYED, family_of
from llamasplit.memory.graph.scheduler import GGML_SCHED_MAX_COPIES, backends_of, schedule
from llamasplit.memory import mtp
from llamasplit.memory.kv import KvLayout, cache_type
from llamasplit.memory.settings import LlamaSettings
from llamasplit.memory.weights import _override_map, _tables


def replayable(model: ModelProfile) -> bool:
    """Whether ``Builder`` can replay this model's graph: a decoder-only transformer whose every
    layer has attention (Q/K/V, fused QKV, or deepseek2's MLA) and an FFN (dense or experts)."""
    hp = model.hparams
    names = {t.name for t in model.tensors}
    own = family_of(model.arch).replayable
    if own is not None and model.arch not in NOT_REPLAYED:
        return "token_embd.weight" in names and own(model)
    if "token_embd.weight" not in names or any(hp.is_recurrent) or model.arch in NOT_REPLAYED:
        return False
    mla = hp.is_mla and family_of(model.arch).mla
    for il in range(hp.n_layer_kv):
        def has(stem: str) -> bool:
            return f"blk.{il}.{stem}.weight" in names
        if mla:
            attn = has("attn_kv_a_mqa") and has("attn_k_b") and has("attn_v_b") and (has("attn_q") or has("attn_q_b"))
        else:
            attn = has("attn_qkv") or (has("attn_q") and has("attn_k") and has("attn_v"))
        experts = has("ffn_down_exps") and has("ffn_gate_inp") and (has("ffn_gate_up_exps") or has("ffn_up_exps"))
        ffn = has("ffn_down") or experts  # a layer missing one of them is planned by heuristic_bytes
        if not (attn and has("attn_output") and ffn):
            return False
    return True


def weight_backends(model: ModelProfile, devices: Sequence[Device], layer_dev: Sequence[int | None],
                    settings: LlamaSettings) -> dict[str, int]:
    """The backend each weight lives on (device index, ``len(devices)`` = CPU): estimate.py's rule."""
    hp = model.hparams
    cpu = len(devices)
    names = {d.name: i for i, d in enumerate(devices)}
    override_of = _override_map(_tables(model).names, settings.effective_overrides)
    out_dev = layer_dev[hp.n_layer]
    result: dict[str, int] = {}
    for t in model.tensors:
        if t.block is Block.INPUT:
            dev: int | None = None
        elif t.block is Block.OUTPUT:
            dev = out_dev
        elif t.role is Role.ROPE and t.layer is None:
            dev = layer_dev[0]
        else:
            dev = layer_dev[t.layer if t.layer is not None else 0]
        buft = override_of.get(t.name)
        if buft is not None:
            dev = None if buft.upper() == "CPU" else names.get(buft, dev)
        result[t.name] = cpu if dev is None else dev
    return result


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
    """Compute buffer bytes per device, then the host (last).

    A replay of llama.cpp's reservation (``replayable`` models), else ``heuristic_bytes``.
    """
    if not replayable(model):
        return heuristic_bytes(model, devices, layer_dev, settings, layout=layout, n_ubatch=n_ubatch,
                               n_outputs=n_outputs, flash=flash)
    hp = model.hparams
    n_dev = len(devices)
    cpu = n_dev
    n_seq = settings.seq_count
    n_tokens = n_ubatch
    if n_tokens % n_seq:
        n_tokens = (n_tokens + n_seq - 1) // n_seq * n_seq
    full_offload = settings.n_gpu_layers is None or settings.n_gpu_layers < 0 or settings.n_gpu_layers > hp.n_layer
    layer_backend = [cpu if d is None else d for d in layer_dev]
    ctx = Ctx(
        n_tokens=n_tokens,
        n_outputs=max(1, min(n_outputs, n_tokens)),
        n_seqs=n_seq,
        flash=flash,
        kv_unified=settings.unified,
        offload_kqv=settings.offload_kqv,
        type_k=int(cache_type(settings.type_k)),
        type_v=int(cache_type(settings.type_v)),
        cpu=cpu,
        layer_backend=layer_backend,
        weight_backend=weight_backends(model, devices, layer_dev, settings),
        layout=layout,
        pin_norms=(n_tokens < 32 or full_offload),
    )
    ctx.layers = list(range(hp.n_layer_kv))
    ctx.n_rs_seq = mtp.n_rs_seq(model.arch, settings.spec_type, settings.spec_draft_n_max)  # 0 unless a rollback arch drafts
    family = family_of(model.arch)
    b = Builder(model, ctx, family)
    (family.build or transformer.build_transformer)(b)
    graph = b.finish()
    # llama-fit-params measures through ggml_backend_sched_reserve_size, which resets the
    # scheduler after the graph was built: the callback's pins are gone
    pins = {} if settings.binary == "llama-fit-params" else ctx.pins
    pipeline = (
        n_dev > 1
        and full_offload
        and settings.split_mode == "layer"
        and settings.offload_kqv
        and not settings.effective_overrides
    )
    backends = backends_of(devices)
    nodes, node_b, leafs, leaf_b = schedule(graph, backends, pins, GGML_SCHED_MAX_COPIES if pipeline else 1)
    sizes = allocate_graph(nodes, node_b, leafs, leaf_b, backends, len(graph.all))
    return sizes
