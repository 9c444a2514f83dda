"""The memory estimator: what llama.cpp would allocate on each device, from the header alone.

``estimate(model, devices, settings)`` is a pure function. Its parts, each from llama.cpp's source:

- weights: layers are placed by the float32 prefix-sum rule of ``llama_model::load_tensors``
  (input layer on the CPU, ``-ngl N`` = output layer + the last N-1 blocks), ``-ot`` overrides by
  first regex match, a tied embedding duplicated on the output device; buffer bytes are the sum
  of each tensor's allocation size padded to the backend's alignment (CUDA: 128 bytes, plus one
  row of ``512 - ne0 % 512`` elements for quantised tensors; CPU and RPC-over-CPU: 32 bytes);
  host weights under mmap are the file span of the mapped tensors;
- context: the KV cache (``planner.kv``) and recurrent state on the device of each layer
  (on the CPU under ``-nkvo``);
- compute: a model of the graph's peak per device, see ``compute_bytes``;
- overhead: what a CUDA device loses outside llama.cpp's breakdown (the context, cuBLAS's workspace,
  the pool's temporaries; ``planner.cuda_rules``, each figure cited there), present in the free
  memory a user sees drop.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

from llamasplit.devices.device import Device
from llamasplit.errors import UsageError
from llamasplit.model.profile import ModelProfile, Role
from llamasplit.memory import cuda_rules, kv, mtp, repack
from llamasplit.memory.f32 import f32, prefix_fractions
from llamasplit.memory.repack import CpuFeatures
from llamasplit.memory.settings import LlamaSettings
from llamasplit.memory.graph import compute_bytes, heuristic_bytes
from llamasplit.memory.graph.mtp import MTP_CACHE_TYPE, mtp_compute_bytes
from llamasplit.memory.weights import HOST, _Tables, _Weights, _backend, _override_map, _tables, alloc_bytes

MiB = 1024 * 1024


@dataclass
class DeviceEstimate:
    """Bytes one device (or the host) would hold, by llama.cpp's breakdown categories."""

    name: str
    model_bytes: int = 0
    context_bytes: int = 0
    compute_bytes: int = 0
    output_bytes: int = 0
    """Host only: the logits/embeddings output buffer (not in llama.cpp's breakdown)."""
    overhead_bytes: int = 0
    overhead_parts: dict[str, int] = field(default_factory=dict)
    """``overhead_bytes`` by part (``cuda_rules.Overhead.parts``)."""
    layers: list[int] = field(default_factory=list)
    """Repeating layers whose weights live here (``n_layer`` = the output layer)."""
    read_bytes: float = 0.0
    """Weight bytes one decoded token reads here (MoE: routed experts times n_expert_used / n_expert)."""
    extra_buffers: dict[str, int] = field(default_factory=dict)
    """Host only: weights in the CPU's extra buffer types (``AMX``, ``CPU_REPACK``; ``planner.repack``),
    bytes by buffer type. Not in ``model_bytes`` (llama-fit-params' Host row leaves them out), in
    ``total_bytes`` (the real allocation has them)."""
    companion_parts: dict[str, int] = field(default_factory=dict)
    """What models loaded beside this one hold here (``memory.companions``: a draft model's
    ``draft_model``/``draft_context``/``draft_compute``/``draft_output``, LoRA adapters' ``lora``),
    bytes by part; in ``total_bytes``, not in the main model's categories."""

    @property
    def extra_bytes(self) -> int:
        return sum(self.extra_buffers.values())

    @property
    def companion_bytes(self) -> int:
        return sum(self.companion_parts.values())

    @property
    def total_bytes(self) -> int:
        return (self.model_bytes + self.extra_bytes + self.context_bytes + self.compute_bytes + self.output_bytes
                + self.overhead_bytes + self.companion_bytes)

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "model_bytes": self.model_bytes,
            "context_bytes": self.context_bytes,
            "compute_bytes": self.compute_bytes,
            "output_bytes": self.output_bytes,
            "overhead_bytes": self.overhead_bytes,
            "overhead_parts": dict(self.overhead_parts),
            "extra_buffers": dict(self.extra_buffers),
            "companion_parts": dict(self.companion_parts),
            "total_bytes": self.total_bytes,
            "layers": list(self.layers),
        }


@dataclass(frozen=True)
class Estimate:
    """Per-device estimates in llama.cpp's device order, then the host."""

    devices: tuple[DeviceEstimate, ...]
    host: DeviceEstimate
    n_ctx: int
    layer_device: tuple[int | None, ...]
    """Device index of each layer 0..n_layer (the last is the output layer); ``None`` = CPU."""
    flash_attn: bool
    host_mapped_bytes: int = 0
    """With mmap: the file span llama.cpp maps for the host's weights (its CPU_Mapped buffer line)."""

    def by_name(self, name: str) -> DeviceEstimate:
        for d in (*self.devices, self.host):
            if d.name == name:
                return d
        raise KeyError(name)



_POOL_CACHE: dict[tuple[int, int, int], tuple[ModelProfile, list[int]]] = {}


def pool_high_water(model: ModelProfile, slots: Sequence[int], n_ubatch: int, n_outputs: int) -> int:
    """[estimate] The largest temporary a CUDA device's pool holds for the weights of ``slots``: the
    q8_1 copy of the activations for a quantised mat-mul (MMQ), the f16 copies of a cuBLAS one,
    at ``n_ubatch`` tokens (the output layer: ``n_outputs`` rows). Kernels run one after the other
    and free their temporaries, so the pool's high-water mark is about the largest one.
    """
    per_slot = pool_slots(model, n_ubatch, n_outputs)
    return max((per_slot[s] for s in slots), default=0)


def pool_slots(model: ModelProfile, n_ubatch: int, n_outputs: int) -> list[int]:
    """``pool_high_water`` of each slot alone (cached per model)."""
    key = (id(model), n_ubatch, n_outputs)
    cached = _POOL_CACHE.get(key)
    if cached is None or cached[0] is not model:
        hp = model.hparams
        per_slot = [0] * (hp.n_layer + 1)
        for item in _tables(model).items:
            t = item.tensor
            if item.slot is None or len(t.shape) < 2 or t.shape[1] <= 1:
                continue
            ne10, ne01 = t.shape[0], t.shape[1]
            ne11 = min(n_ubatch, n_outputs) if item.slot == hp.n_layer else n_ubatch
            if len(t.shape) >= 3 and t.role is Role.EXPERTS:
                ne11 *= max(hp.n_expert_used or 1, 1)  # mmq.cu: ne12 * n_expert_used rows for MUL_MAT_ID
            if t.is_quantized:
                need = cuda_rules.mmq_src1_bytes(ne10, ne11)
            else:
                need = cuda_rules.cublas_src_f16_bytes(ne10, ne11, ne01)
            per_slot[item.slot] = max(per_slot[item.slot], need)
        if len(_POOL_CACHE) > 64:
            _POOL_CACHE.clear()
        _POOL_CACHE[key] = cached = (model, per_slot)
    return cached[1]


def fattn_pool_high_water(model: ModelProfile, device: Device, settings: LlamaSettings, n_kv: int,
                          token_counts: Sequence[int]) -> int:
    """[estimate] Flash attention's pool temporaries on a CUDA device at the graphs llama.cpp reserves
    (``token_counts``: the prompt ubatch and the decode step), for the kernel ``cuda_rules`` picks."""
    hp = model.hparams
    if not hp.n_head or not hp.n_head_kv or not hp.n_head_kv[0]:
        return 0
    cc = cuda_rules.cc_of(device.compute_capability)
    n_head, n_head_kv = max(hp.n_head), max(hp.n_head_kv)
    out = 0
    for n_tokens in token_counts:
        kernel = cuda_rules.best_fattn_kernel(
            cc if cc is not None else cuda_rules.CC_TURING, head_k=hp.n_embd_head_k, head_v=hp.n_embd_head_v,
            n_tokens=n_tokens, gqa_ratio=max(n_head // n_head_kv, 1), n_kv=n_kv,
            type_k=int(kv.cache_type(settings.type_k)), type_v=int(kv.cache_type(settings.type_v)))
        out = max(out, cuda_rules.fattn_pool_bytes(kernel, head_v=hp.n_embd_head_v, n_head=n_head,
                                                   n_tokens=n_tokens, n_kv=n_kv))
    return out


_FLOAT_CACHE: dict[int, tuple[ModelProfile, list[bool]]] = {}


def float_matmul_slots(model: ModelProfile) -> list[bool]:
    """Per slot (layer, ``n_layer`` = output): whether it holds an unquantised matrix (F16/BF16/F32
    weights with more than one row: an MoE router, an unquantised model) that CUDA multiplies through cuBLAS."""
    cached = _FLOAT_CACHE.get(id(model))
    if cached is None or cached[0] is not model:
        out = [False] * (model.hparams.n_layer + 1)
        for item in _tables(model).items:
            t = item.tensor
            if item.slot is not None and len(t.shape) >= 2 and t.shape[1] > 1 and not t.is_quantized:
                out[item.slot] = True
        if len(_FLOAT_CACHE) > 16:
            _FLOAT_CACHE.clear()
        _FLOAT_CACHE[id(model)] = cached = (model, out)
    return cached[1]


def cuda_overhead(model: ModelProfile, device: Device, slots: Sequence[int], n_ubatch: int, n_outputs: int,
                  *, tensor_peers: int = 0, fattn_bytes: int = 0, flash: bool = True) -> cuda_rules.Overhead:
    """A CUDA device's memory outside llama.cpp's breakdown (``cuda_rules.overhead``). An RPC worker's
    free memory was read by a process that already holds its CUDA context, so only the cuBLAS
    workspace and the pool count there. The pool holds the largest temporary: a mat-mul's, or
    flash attention's (``fattn_bytes``); kernels run one at a time and free theirs."""
    return cuda_rules.overhead(
        cuda_rules.cc_of(device.compute_capability),
        pool_high_water_bytes=max(pool_high_water(model, slots, n_ubatch, n_outputs), fattn_bytes),
        context_in_free=device.backend.upper() == "RPC",
        tensor_peers=tensor_peers,
        sm_count=device.sm_count,
        cublas=cuda_rules.uses_cublas(float_matmul_weight=any(float_matmul_slots(model)[s] for s in slots), flash_attn=flash),
    )



def layer_devices(n_layer: int, n_devices: int, n_gpu_layers: int | None, split: Sequence[float]) -> list[int | None]:
    """Device of each layer 0..n_layer (n_layer = output), llama.cpp's float32 rule; ``None`` = CPU.

    >>> layer_devices(30, 2, None, [1, 2])[:12]
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]
    >>> layer_devices(4, 1, 2, [1])
    [None, None, None, 0, 0]
    """
    ngl = n_layer + 1 if n_gpu_layers is None or n_gpu_layers < 0 else n_gpu_layers
    if n_devices == 0:
        return [None] * (n_layer + 1)
    try:
        splits = prefix_fractions(split)
    except ValueError as exc:
        raise UsageError("--tensor-split must give some device a positive share", remedy="e.g. -ts 1,1") from exc
    i_gpu_start = max(n_layer + 1 - ngl, 0)
    act = min(ngl, n_layer + 1)
    out: list[int | None] = []
    for il in range(n_layer + 1):
        if il < i_gpu_start or il - i_gpu_start >= act:
            out.append(None)
            continue
        frac = f32(f32(il - i_gpu_start) / f32(act))
        out.append(bisect.bisect_right(splits, frac))
    return out


def _split_weights(devices: Sequence[Device], settings: LlamaSettings) -> list[float]:
    if settings.tensor_split is not None:
        if len(settings.tensor_split) > len(devices):
            raise UsageError(
                f"--tensor-split has {len(settings.tensor_split)} values for {len(devices)} devices",
                remedy="give one value per device, in llama.cpp's device order",
            )
        values = list(settings.tensor_split) + [0.0] * (len(devices) - len(settings.tensor_split))
        if any(values):
            return values
    free = [d.free_bytes for d in devices]
    if any(f is None for f in free):
        raise UsageError(
            "a device's free memory is unknown, so llama.cpp's default split cannot be predicted",
            remedy="give --tensor-split",
        )
    return [float(f) for f in free]  # type: ignore[arg-type]


_EXTRA_CACHE: dict[tuple[int, CpuFeatures], tuple[ModelProfile, list[str | None]]] = {}


def _host_extras(model: ModelProfile, tables: _Tables, layer_dev: Sequence[int | None], override_of: dict[str, str],
                 cpu: CpuFeatures, settings: LlamaSettings, host: DeviceEstimate) -> int | None:
    """Move the host's weights that llama.cpp repacks out of ``host.model_bytes`` into
    ``host.extra_buffers``; return the mapped file span of what stays (``None``: nothing moved)."""
    key = (id(model), cpu)
    cached = _EXTRA_CACHE.get(key)
    if cached is None or cached[0] is not model:
        if len(_EXTRA_CACHE) > 16:
            _EXTRA_CACHE.clear()
        n_out = model.hparams.n_layer
        cached = (model, [repack.extra_buffer(item.tensor, cpu, tied_output=item.dup and item.slot == n_out
                                              and item.tensor.role is Role.TOKEN_EMBD) for item in tables.items])
        _EXTRA_CACHE[key] = cached
    extras = cached[1]
    if not any(extras):
        return None
    spans: dict[int, list[int]] = {}
    for item, buft in zip(tables.items, extras):
        t = item.tensor
        target = override_of.get(t.name)
        if target is not None:
            on_host = target.upper() == "CPU"  # -ot ...=CPU still considers the extra types
        else:
            on_host = item.slot is None or layer_dev[item.slot] is None
        if not on_host:
            continue
        if buft is not None:
            host.extra_buffers[buft] = host.extra_buffers.get(buft, 0) + repack.extra_alloc_bytes(t, buft)
            if settings.use_mmap:
                host.model_bytes -= 0 if item.dup else t.n_bytes
            else:
                host.model_bytes -= alloc_bytes(t, "CPU")
        elif not item.dup:
            span = spans.setdefault(t.file_index, [t.offset, t.offset + t.n_bytes])
            span[0] = min(span[0], t.offset)
            span[1] = max(span[1], t.offset + t.n_bytes)
    return sum(hi - lo for lo, hi in spans.values()) if settings.use_mmap else None


def with_host_extras(model: ModelProfile, devices: Sequence[Device], settings: LlamaSettings, est: Estimate,
                     cpu: CpuFeatures) -> Estimate:
    """``est`` (made without ``cpu``) with the host's repacked weights moved into its extra buffers:
    the same as ``estimate(..., cpu=cpu)``, without replaying the graph again."""
    if est.host.extra_buffers or not settings.repack or any(_backend(d) == "CUDA" for d in devices):
        return est
    if mtp.enabled(settings.spec_type) and mtp.in_model(model):
        model = mtp.with_mtp(model)
    host = dataclasses.replace(est.host, layers=list(est.host.layers), extra_buffers={})
    tables = _tables(model)
    override_of = _override_map(tables.names, settings.effective_overrides)
    span = _host_extras(model, tables, est.layer_device, override_of, cpu, settings, host)
    return dataclasses.replace(est, host=host, host_mapped_bytes=est.host_mapped_bytes if span is None else span)


def _add_mtp_context(model: ModelProfile, devices: Sequence[Device], layer_dev: Sequence[int | None],
                     settings: LlamaSettings, ests: list[DeviceEstimate], host: DeviceEstimate, *, layout: kv.KvLayout,
                     n_ubatch: int, n_outputs: int, flash: bool, main_compute: Sequence[int],
                     type_k: str = MTP_CACHE_TYPE, type_v: str = MTP_CACHE_TYPE) -> None:
    """The MTP context's buffers (``memory.mtp``) as ``companion_parts``: its KV cache of the NextN
    blocks on their layers' devices (the CPU under -nkvo), its compute buffer (the MTP graph
    replayed, ``graph.mtp``; for an arch whose MTP graph is not replayed, [estimate] the main
    context's, which the measured MTP buffers stayed under), and on the host the output buffers
    as they stand once drafting runs (llama-context.cpp ``output_reserve``, grown at the first
    decode): the MTP context's per output row (``n_outputs_max = n_parallel``) logits, its masked
    ``embd_nextn`` (n_embd) and the backend sampler's floats (2 x n_vocab) and tokens (1 + n_vocab);
    the main context's unmasked ``embd_nextn``, n_embd for each of ``n_batch`` tokens
    (``llama_set_embeddings_nextn(ctx_tgt, true, false)``, common/speculative.cpp)."""
    hp = model.hparams

    def add(e: DeviceEstimate, part: str, n: int) -> None:
        if n:
            e.companion_parts[part] = e.companion_parts.get(part, 0) + n

    for il in range(hp.n_layer_kv, hp.n_layer):
        where = (host if layer_dev[il] is None else ests[layer_dev[il]]) if settings.offload_kqv else host
        add(where, "mtp_context", mtp.kv_layer_bytes(hp, il, layout, type_k, type_v))
    n_seq = settings.seq_count
    compute = mtp_compute_bytes(model, devices, layer_dev, settings, layout=layout, n_ubatch=n_ubatch,
                                n_outputs=n_seq, flash=flash, type_k=type_k, type_v=type_v)
    for e, c in zip((*ests, host), compute if compute is not None else main_compute):
        add(e, "mtp_compute", c)
    n_batch = min(kv.pad(settings.n_ctx or hp.n_ctx_train or 4096, kv.KV_PAD), settings.n_batch)
    add(host, "mtp_output", (4 * hp.n_vocab + hp.n_embd + 1) * n_seq * 4 + hp.n_embd * n_batch * 4)


def _as_mtp_sidecar(model: ModelProfile, devices: Sequence[Device], layer_dev: Sequence[int | None],
                    settings: LlamaSettings, ests: list[DeviceEstimate], host: DeviceEstimate, *, layout: kv.KvLayout,
                    n_ubatch: int, n_outputs: int, flash: bool, main_compute: Sequence[int]) -> None:
    """An MTP sidecar (``-md FILE --spec-type draft-mtp``): common_speculative_init_result loads it as
    the draft model (``load_mtp`` set: all its tensors, the NextN block) and creates only the MTP
    context on it (``ctx_type = LLAMA_CONTEXT_TYPE_MTP``), so its context, compute and output are
    that context's (``_add_mtp_context``), and the output no main context's ``embd_nextn``."""
    for e in (*ests, host):
        e.context_bytes = e.compute_bytes = 0
        e.companion_parts.clear()
    # the sidecar is the draft model: its cache types are the draft's (-ctkd/-ctvd), in its settings
    _add_mtp_context(model, devices, layer_dev, settings, ests, host, layout=layout, n_ubatch=n_ubatch,
                     n_outputs=n_outputs, flash=flash, main_compute=main_compute, type_k=settings.type_k,
                     type_v=settings.type_v)
    hp = model.hparams
    n_batch = min(kv.pad(settings.n_ctx or hp.n_ctx_train or 4096, kv.KV_PAD), settings.n_batch)
    for e in (*ests, host):
        parts = e.companion_parts
        e.context_bytes = parts.pop("mtp_context", 0)
        e.compute_bytes = parts.pop("mtp_compute", 0)
        if e is host:
            e.output_bytes = parts.pop("mtp_output", 0) - hp.n_embd * n_batch * 4
        parts.clear()


def estimate(model: ModelProfile, devices: Sequence[Device], settings: LlamaSettings, *, fast: bool = False,
             cpu: CpuFeatures | None = None, mtp_role: str = "main") -> Estimate:
    """What llama.cpp would allocate for ``model`` on ``devices`` (llama.cpp order) with ``settings``.

    ``fast=True`` sizes compute buffers with the closed-form heuristic (mostly a little above
    llama.cpp) instead of replaying llama.cpp's graph reservation; the planner searches with it
    and checks its answer exactly. ``cpu``: the host CPU's features, which decide the weights
    llama.cpp repacks into the CPU's extra buffer types (``planner.repack``); ``None`` models none.
    ``settings.spec_type`` with draft-mtp: the NextN blocks' weights, and the MTP context's KV,
    compute and output buffers in ``companion_parts`` (``memory.mtp``). ``mtp_role`` with an MTP
    sidecar (``-md``): ``"beside-draft"`` for the main model (its NextN weights still load, the MTP
    context is the sidecar's), ``"sidecar"`` for the sidecar (its context, compute and output are
    the MTP context's; it has no main context).
    """
    if mtp_role not in ("main", "beside-draft", "sidecar"):
        raise ValueError(f"mtp_role {mtp_role!r}")
    drafting = mtp.enabled(settings.spec_type)
    if drafting and mtp.in_model(model):
        model = mtp.with_mtp(model)
    with_mtp_context = drafting and mtp.in_model(model) and mtp_role == "main"
    sidecar = drafting and mtp_role == "sidecar"
    hp = model.hparams
    if settings.split_mode == "none":
        if not 0 <= settings.main_gpu < max(len(devices), 1):
            raise UsageError(f"--main-gpu {settings.main_gpu} is not a device index (0..{len(devices) - 1})")
        devices = [devices[settings.main_gpu]] if devices else []
    if settings.split_mode in ("row", "tensor"):
        raise UsageError(
            f"-sm {settings.split_mode} is planned by the tensor-split estimator, not the layer estimator",
            remedy="use -sm layer or -sm none",
        )
    ests = [DeviceEstimate(d.name) for d in devices]
    host = DeviceEstimate(HOST)
    split = _split_weights(devices, settings) if devices else []
    layer_dev = layer_devices(hp.n_layer, len(devices), settings.n_gpu_layers, split)

    def target(dev_index: int | None) -> DeviceEstimate:
        return host if dev_index is None else ests[dev_index]

    for i, dev_index in enumerate(layer_dev):
        target(dev_index).layers.append(i)

    tables = _tables(model)
    override_of = _override_map(tables.names, settings.effective_overrides)
    names = {d.name: i for i, d in enumerate(devices)}
    backends = [_backend(d) for d in devices]
    mapped_spans: dict[int, list[int]] = {}

    def add_span(file_index: int, lo: int, hi: int) -> None:
        span = mapped_spans.setdefault(file_index, [lo, hi])
        span[0] = min(span[0], lo)
        span[1] = max(span[1], hi)

    def put(w: _Weights, dev_index: int | None, spans: dict[int, tuple[int, int]] | None) -> None:
        if dev_index is None:
            # mmap: the tensors' bytes stay in the mapped file (llama.cpp's breakdown counts the
            # tensors, its CPU_Mapped buffer line the file span they cover); else a CPU buffer
            host.model_bytes += w.mapped_bytes if settings.use_mmap else w.cpu_bytes
            host.read_bytes += w.read_bytes
            if settings.use_mmap and spans:
                for fi, (lo, hi) in spans.items():
                    add_span(fi, lo, hi)
            return
        e = ests[dev_index]
        e.model_bytes += w.cuda_bytes if backends[dev_index] == "CUDA" else w.cpu_bytes
        e.read_bytes += w.read_bytes

    moved = [(item, override_of[item.tensor.name]) for item in tables.items if item.tensor.name in override_of]
    removed: dict[int | None, _Weights] = {}
    for item, _ in moved:
        removed.setdefault(item.slot, _Weights()).add(item)
    put(tables.input, None, tables.input_spans)
    for slot, w in enumerate(tables.slots):
        r = removed.get(slot)
        put(w.minus(r) if r else w, layer_dev[slot], tables.slot_spans[slot])
    for item, buft in moved:
        if buft.upper() == "CPU":
            dev_index = None
        elif buft in names:
            dev_index = names[buft]
        else:
            raise UsageError(f"-ot ...={buft}: no device called {buft}", remedy=f"use CPU or one of {', '.join(names)}")
        single = _Weights()
        single.add(item)
        put(single, dev_index, {item.tensor.file_index: (item.tensor.offset, item.tensor.offset + item.tensor.n_bytes)})
    host_mapped_span = sum(end - start for start, end in mapped_spans.values())
    if cpu is not None and settings.repack and not any(_backend(d) == "CUDA" for d in devices):
        # make_cpu_buft_list: CUDA_Host comes before the extra types and, under mmap, becomes CPU
        span = _host_extras(model, tables, layer_dev, override_of, cpu, settings, host)
        if span is not None:
            host_mapped_span = span

    # context: KV cache and recurrent state, on each layer's device unless -nkvo
    n_ctx = settings.n_ctx or hp.n_ctx_train or 4096
    n_ctx_padded = kv.pad(n_ctx, kv.KV_PAD)
    n_seq = settings.seq_count
    n_batch = min(n_ctx_padded, settings.n_batch)
    n_ubatch = min(n_batch, settings.n_ubatch)
    layout = kv.kv_layout(hp, n_ctx=n_ctx_padded, n_seq=n_seq, n_ubatch=n_ubatch, kv_unified=settings.unified, swa_full=settings.swa_full)
    for il in range(hp.n_layer_kv):
        where = target(layer_dev[il]) if settings.offload_kqv else host
        where.context_bytes += kv.kv_layer_bytes(hp, il, layout, settings.type_k, settings.type_v)
        # llama-memory-recurrent.cpp: the state on the layer's device when offloading (offload_kqv),
        # mem_size * (1 + n_rs_seq) rows (snapshots for speculative rollback, memory.mtp.n_rs_seq)
        where.context_bytes += kv.recurrent_layer_bytes(hp, il, n_seq) * (1 + mtp.n_rs_seq(model.arch, settings.spec_type,
                                                                                    settings.spec_draft_n_max))

    flash = settings.flash_attn != "off"
    n_outputs = n_ubatch if settings.binary in ("llama-completion", "llama-cli", "llama-fit-params") else n_seq
    if settings.binary == "llama-server" and settings.spec_type:
        n_outputs = mtp.server_outputs(n_batch, n_seq, settings.spec_type, settings.spec_draft_n_max)  # a row per drafted token too

    compute = (heuristic_bytes if fast else compute_bytes)(model, devices, layer_dev, settings, layout=layout, n_ubatch=n_ubatch, n_outputs=n_outputs, flash=flash)
    for e, c in zip(ests, compute[:-1]):
        e.compute_bytes = c
    host.compute_bytes = compute[-1]
    host.output_bytes = (hp.n_vocab + (hp.n_embd if settings.binary == "llama-server" else 0)) * max(n_outputs, n_seq) * 4
    if with_mtp_context:
        _add_mtp_context(model, devices, layer_dev, settings, ests, host, layout=layout, n_ubatch=n_ubatch,
                         n_outputs=n_outputs, flash=flash, main_compute=compute)
    elif drafting and mtp_role == "beside-draft":  # the main context's embd_nextn (_add_mtp_context)
        host.companion_parts["mtp_output"] = hp.n_embd * n_batch * 4
    elif sidecar:
        _as_mtp_sidecar(model, devices, layer_dev, settings, ests, host, layout=layout, n_ubatch=n_ubatch,
                        n_outputs=n_outputs, flash=flash, main_compute=compute)
    # the CUDA overhead, cuda_overhead's arithmetic with its per-slot tables read once (the planner
    # estimates often, over up to 64 devices): same GPU, same pool high-water, same overhead
    fattn_by_cc: dict[tuple[int, int] | None, int] = {}
    overheads: dict[tuple, tuple[int, dict[str, int]]] = {}
    per_slot_pool, per_slot_float = None, None
    for e, d in zip(ests, devices):
        if _backend(d) != "CUDA":
            continue
        if per_slot_pool is None:
            per_slot_pool, per_slot_float = pool_slots(model, n_ubatch, n_outputs), float_matmul_slots(model)
        fa = 0
        if flash and e.layers:  # e.layers: the slots whose weights live here
            if d.compute_capability not in fattn_by_cc:
                fattn_by_cc[d.compute_capability] = fattn_pool_high_water(model, d, settings, layout.kv_size, (n_ubatch, n_seq))
            fa = fattn_by_cc[d.compute_capability]
        high_water = max(max((per_slot_pool[s] for s in e.layers), default=0), fa)
        cublas = cuda_rules.uses_cublas(float_matmul_weight=any(per_slot_float[s] for s in e.layers), flash_attn=flash)
        key = (d.compute_capability, d.sm_count, d.backend.upper() == "RPC", high_water, cublas)
        known = overheads.get(key)
        if known is None:
            o = cuda_rules.overhead(cuda_rules.cc_of(d.compute_capability), pool_high_water_bytes=high_water,
                                    context_in_free=key[2], sm_count=d.sm_count, cublas=cublas)
            known = overheads[key] = (o.total_bytes, o.parts())
        e.overhead_bytes, e.overhead_parts = known[0], dict(known[1])
    return Estimate(
        devices=tuple(ests), host=host, n_ctx=n_ctx_padded, layer_device=tuple(layer_dev), flash_attn=flash,
        host_mapped_bytes=host_mapped_span,
    )
