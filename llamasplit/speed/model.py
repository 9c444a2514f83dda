"""How fast a configuration decodes and prefills: the one speed model every part of llamasplit uses.

**Decode.** A token runs through the stages in order. On each device it reads the bytes its
layers hold (``estimate()``'s ``read_bytes``: weights, routed experts times used/total, the
output matrix) plus the KV cache at the current depth, at that device's *effective* bandwidth;
each layer adds a fixed cost (kernel launches and small ops a roofline misses), on a measured CPU
each matrix row of a plain (not repacked) kernel one dot product's overhead (``StageRows``), and
each device a fixed cost per token (graph launch and synchronisation; over RPC the round trips). Each boundary
between stages costs its link (``speed/links.py``: PCIe, NVLink, network or loopback RPC), and
the logits cross from the last device to the host.

**Prefill.** Each ubatch costs its matmul FLOPs over the device's effective compute rate for each
weight type (the rate of the kernel the pinned llama.cpp runs it with: ``prefill_path``), without
flash attention the KQ matrix's traffic at the device's bandwidth, on a measured CPU the per-row
overhead per prompt token and (where bench measured it, ``prefill_read_bytes_s``) the weights read
once per ubatch, the output matrix read once for the ubatch's last token, plus the same fixed and
transfer costs; layer split pipelines ubatches over the stages.

**Where the numbers come from** (``speed.json``, every coefficient with its source): ``measured``
when ``llamasplit bench`` measured the device (``Device.measured``, in the inventory); else
``calibrated`` for a GPU whose architecture family was fitted to published llama-bench results
(``llama_bench.csv``); else ``datasheet`` (the device's stated bandwidth/TFLOPS with median
efficiencies); the host CPU without a measurement and without a stated bandwidth is ``assumed``.
A device none of this applies to (an RPC worker nobody measured) has an unknown speed: the
prediction is ``None``, never a guess and never a reason to call a configuration infeasible.

Layer split runs its stages one after another with an activation hop between them; tensor split
runs every device at once on its slices, with two all-reduces per layer (``speed/comm.py``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from llamasplit.devices.device import Device, Fleet, HostInfo
from llamasplit.errors import UsageError
from llamasplit.speed.comm import ACTIVATION_BYTES, ALLREDUCES_PER_LAYER, Algorithm, allreduce_seconds
from llamasplit.speed.data import coefficients
from llamasplit.speed.links import LinkCost, device_link, host_link

MEASURED, CALIBRATED, DATASHEET, ASSUMED = "measured", "calibrated", "datasheet", "assumed"
"""Where a device's speed comes from, best first."""
IDLE = "idle"
"""The basis of a device that does no work in a configuration (its speed does not matter)."""

KV_FILL: float = coefficients()["decode_kv_fill"]["value"]
"""Decode reads the KV cache at this share of the context (the planner's convention: half full)."""

NO_FA_BYTES_PER_KQ = 20
"""Prefill without flash attention: bytes of memory traffic per element of the KQ matrix
(n_head x n_kv per prompt token). llama.cpp's non-FA attention (src/llama-graph.cpp
``build_attn_mha``) materialises KQ = mul_mat(k, q) in F32 (written: 4), ``soft_max_ext`` reads
and writes it (4 + 4), and mul_mat(v, kq) on cuBLAS converts it to F16 (read 4, write 2) and
reads that (2). Flash attention keeps KQ on chip; the time this traffic takes at the device's
bandwidth is why published pp512 with ``fa=0`` runs 5-20 % slower than with ``fa=1``."""

HOST_NAME = "CPU"
"""The host's column in a workload (its layers come first: llama.cpp offloads the last ``-ngl``)."""


def gpu_family(compute_capability: tuple[int, int] | None, coeffs: dict[str, Any] | None = None) -> str | None:
    """The architecture family of a CUDA compute capability (``(8, 6)`` -> ``ampere``).

    >>> gpu_family((8, 9)), gpu_family((12, 0)), gpu_family((7, 0)), gpu_family(None)
    ('ada', 'blackwell', 'volta', None)
    """
    if compute_capability is None:
        return None
    table = (coeffs or coefficients())["architectures_by_compute_capability"]
    major, minor = compute_capability
    return table.get(f"{major}.{minor}") or table.get(str(major))


@dataclass(frozen=True)
class DeviceSpeed:
    """How fast one device reads weights and multiplies, and its fixed costs: the speed model's
    only device inputs."""

    bandwidth_bytes_s: float
    """Effective bytes per second a decoded token reads at."""
    flops: float
    """Effective FLOP/s of prefill matmuls."""
    layer_s: float = 0.0
    """Fixed cost per layer and graph evaluation (a decoded token or a prompt ubatch)."""
    token_s: float = 0.0
    """Fixed cost per graph evaluation on this device."""
    basis: str = DATASHEET
    """``measured``, ``calibrated``, ``datasheet`` or ``assumed``."""
    types: tuple[tuple[str, float, float], ...] = ()
    """(weight type, bytes/s, FLOP/s) for types whose kernels run at their own speed."""
    row_s: float = 0.0
    """Fixed cost per matrix row a decoded token computes (one dot product: on a CPU the call and
    the store around it; ``llamasplit bench`` measures it, GPUs fold it into ``layer_s``)."""
    prefill_row_s: float = 0.0
    """The same per matrix row and prompt token of a ubatch."""
    type_prefill_row_s: tuple[tuple[str, float], ...] = ()
    """(weight type, seconds per matrix row and prompt token) for types whose prompt kernels have a
    per-row cost of their own (``MeasuredSpeed.types``' third element), instead of ``prefill_row_s``."""
    prefill_read_bytes_s: float | None = None
    """Bytes/s at which each prompt ubatch reads the weights it multiplies, once, on top of its
    FLOPs (``MeasuredSpeed.prefill_read_gb_s``; ``None``: no such cost, the read is hidden)."""

    def rates(self, ggml_type: str) -> tuple[float, float]:
        for name, bw, fl in self.types:
            if name == ggml_type:
                return bw, fl
        return self.bandwidth_bytes_s, self.flops


MMQ_TYPES = frozenset({
    "Q1_0", "Q2_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
    "IQ1_S", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ4_XS", "IQ4_NL", "MXFP4", "NVFP4",
})
"""Weight types the pinned llama.cpp's CUDA backend multiplies with its MMQ kernels
(ggml-cuda/mmq.cu ``ggml_cuda_should_use_mmq``: the ``mmq_supported`` switch)."""

MMQ, CUBLAS = "mmq", "cublas"


def prefill_path(compute_capability: tuple[int, int] | None, ggml_type: str) -> tuple[str, str] | None:
    """Which kernel and which datasheet rate a prompt-sized matmul (a ubatch of >= 64 tokens) of
    ``ggml_type`` weights runs on an NVIDIA GPU of ``compute_capability``, as the pinned llama.cpp
    picks it: (``mmq`` or ``cublas``, the rate's name). ``None``: a rate the catalog does not hold.

    ggml-cuda.cu ``ggml_cuda_mul_mat`` tries MMF (only for <= 16 tokens), MMVQ (small batches),
    then MMQ (mmq.cu ``ggml_cuda_should_use_mmq``), else cuBLAS (``ggml_cuda_mul_mat_cublas``):

    - MMQ types from Turing (7.5) on: ``turing_mma_available`` -> int8 tensor cores (``int8_tops``);
    - Volta (7.0): ``fp16_mma_hardware_available`` and 512 >= ``MMQ_DP4A_MAX_BATCH_SIZE`` (64) -> cuBLAS,
      the weights dequantized to F16 and multiplied with ``CUBLAS_COMPUTE_16F`` (``fp16_acc16_tflops``);
    - Pascal 6.1: no FP16 tensor cores -> MMQ on dp4a (``int8_tops`` holds the dp4a rate);
    - P100 (6.0): below ``GGML_CUDA_CC_DP4A`` and not MoE -> cuBLAS, F16 compute (``fp16_acc16_tflops``);
    - F16 weights: cuBLAS ``CUBLAS_COMPUTE_16F`` where ``fast_fp16_hardware_available`` (not 6.1),
      else F32 (on 6.1: the FP32 rate, a quarter of the dp4a rate: ``int8_tops/4``);
    - BF16: ``CUBLAS_COMPUTE_32F``, tensor cores from Ampere (``fast_bf16_hardware_available``) at the
      FP32-accumulate rate (``fp16_tflops``); F32: TF32 tensor cores from Ampere (common.cuh sets
      ``CUBLAS_TF32_TENSOR_OP_MATH``), half that rate (``fp16_tflops/2``); other types dequantize
      to F16 for cuBLAS like quantized types on Volta.

    >>> prefill_path((8, 9), "Q4_K"), prefill_path((8, 9), "F16"), prefill_path((7, 0), "Q4_0")
    (('mmq', 'int8_tops'), ('cublas', 'fp16_acc16_tflops'), ('cublas', 'fp16_acc16_tflops'))
    >>> prefill_path((6, 1), "Q4_0"), prefill_path((6, 1), "F16"), prefill_path((7, 5), "BF16")
    (('mmq', 'int8_tops'), ('cublas', 'int8_tops/4'), None)
    """
    if compute_capability is None:
        return None
    cc = compute_capability[0] * 10 + compute_capability[1]
    if ggml_type == "BF16":
        return (CUBLAS, "fp16_tflops") if cc >= 80 else None
    if ggml_type == "F32":
        return (CUBLAS, "fp16_tflops/2") if cc >= 80 else None
    if ggml_type == "F16":
        return (CUBLAS, "int8_tops/4") if cc == 61 else (CUBLAS, "fp16_acc16_tflops") if cc >= 60 else None
    if ggml_type in MMQ_TYPES and (cc >= 75 or 61 <= cc < 70):
        return MMQ, "int8_tops"
    if cc >= 60 and cc != 61:
        return CUBLAS, "fp16_acc16_tflops"
    return None


def _rate_tflops(d: Device, name: str) -> float | None:
    if name == "int8_tops":
        return d.int8_tops
    if name == "int8_tops/4":
        return d.int8_tops / 4 if d.int8_tops else None
    if name == "fp16_acc16_tflops":
        return d.fp16_acc16_tflops
    if name == "fp16_tflops":
        return d.fp16_tflops
    if name == "fp16_tflops/2":
        return d.fp16_tflops / 2 if d.fp16_tflops else None
    raise ValueError(name)


def device_speed(d: Device, coeffs: dict[str, Any] | None = None) -> DeviceSpeed | None:
    """A device's effective speed: measured, else calibrated for its GPU family, else from its
    datasheet; ``None`` when nothing is known (an RPC worker nobody measured).

    Prefill: each weight type's matmuls run at the datasheet rate of the kernel llama.cpp picks
    for it (``prefill_path``) times the family's efficiency for that kernel (``prefill_mmq_efficiency``
    or ``prefill_cublas_efficiency``); ``flops`` is the rate of quantized weights (and attention),
    ``types`` holds every type whose rate differs. A rate the device does not state falls back to
    its FP16 figure (or ``tflops_per_gb_s_when_unknown`` x its bandwidth) at the datasheet's
    ``prefill_fallback_efficiency``. Every prefill rate is scaled by ``power_factor``: a card that
    may draw little power per SM (a 300 W workstation AD102, a 70 W T4) sustains a lower clock in
    compute-bound kernels than its boost clock, on which the datasheet rates are computed."""
    if d.measured is not None:
        return _measured(d.measured)
    if d.bandwidth_gb_s is None:
        return None
    coeffs = coeffs or coefficients()
    cuda = d.backend.upper() in ("CUDA", "RPC")
    family = gpu_family(d.compute_capability, coeffs) if cuda else None
    fitted = coeffs["families"].get(family) if family else None
    c = fitted or coeffs["datasheet"]
    ds = coeffs["datasheet"]
    bw = d.bandwidth_gb_s * 1e9 * c["decode_bandwidth_efficiency"]
    fallback = (d.fp16_tflops or d.bandwidth_gb_s * ds["tflops_per_gb_s_when_unknown"]) * 1e12 * ds["prefill_fallback_efficiency"]
    eff = {MMQ: c["prefill_mmq_efficiency"], CUBLAS: c["prefill_cublas_efficiency"]}
    scale = power_factor(d, coeffs)
    fallback *= scale

    def flops(ggml_type: str) -> float:
        path = prefill_path(d.compute_capability, ggml_type) if cuda else None
        rate = _rate_tflops(d, path[1]) if path else None
        return rate * 1e12 * eff[path[0]] * scale if rate else fallback

    main = flops("Q4_0")
    types = tuple((name, bw, f) for name in _all_type_names() if (f := flops(name)) != main)
    return DeviceSpeed(bw, main, c["layer_us"] * 1e-6, c["token_us"] * 1e-6, CALIBRATED if fitted else DATASHEET, types)


def power_factor(d: Device, coeffs: dict[str, Any] | None = None) -> float:
    """How much of its datasheet compute rate a GPU sustains, relative to one that may draw the
    reference power per SM: ``(board_power_w / sm_count / reference_w_per_sm) ** exponent``
    (``speed.json`` ``prefill_power``); 1 when its power or SM count is unknown. The exponent is
    the cube law of dynamic power (P ~ f V^2 with V ~ f, so a power-capped clock goes as P^(1/3)).

    >>> from llamasplit.devices.device import Device
    >>> d = Device("x", "CUDA0", "x", "CUDA", None, None, sm_count=100, board_power_w=400.0)
    >>> power_factor(d), power_factor(Device("x", "CUDA0", "x", "CUDA", None, None))
    (1.0, 1.0)
    >>> round(power_factor(Device("x", "CUDA0", "x", "CUDA", None, None, sm_count=142, board_power_w=300.0)), 3)
    0.808
    """
    if not d.board_power_w or not d.sm_count:
        return 1.0
    c = (coeffs or coefficients())["prefill_power"]
    return (d.board_power_w / d.sm_count / c["reference_w_per_sm"]) ** c["exponent"]


@functools.lru_cache(maxsize=1)
def _all_type_names() -> tuple[str, ...]:
    from llamasplit.gguf_constants import GGMLQuantizationType

    return tuple(t.name for t in GGMLQuantizationType)


def host_speed(host: HostInfo, coeffs: dict[str, Any] | None = None) -> DeviceSpeed:
    """The host CPU's effective speed: measured, else its stated RAM bandwidth (``datasheet``),
    else the assumption in ``speed.json`` (``assumed``)."""
    if host.measured is not None:
        return _measured(host.measured)
    c = (coeffs or coefficients())["cpu"]
    bw = host.ram_bandwidth_gb_s or c["default_bandwidth_gb_s"]
    cores = host.cpu_cores or c["default_cores"]
    return DeviceSpeed(bw * 1e9 * c["decode_bandwidth_efficiency"], cores * c["gflops_per_core"] * 1e9,
                       c["layer_us"] * 1e-6, c["token_us"] * 1e-6, DATASHEET if host.ram_bandwidth_gb_s else ASSUMED)


def _measured(m) -> DeviceSpeed:
    items = sorted((m.types or {}).items())
    types = tuple((k, v[0] * 1e9, v[1] * 1e9) for k, v in items)
    typed_rows = tuple((k, v[2] * 1e-9) for k, v in items if len(v) > 2 and v[2] is not None)
    return DeviceSpeed(m.decode_gb_s * 1e9, m.prefill_gflops * 1e9, m.layer_us * 1e-6, m.token_us * 1e-6, MEASURED, types,
                       m.row_ns * 1e-9, m.prefill_row_ns * 1e-9, typed_rows,
                       m.prefill_read_gb_s * 1e9 if m.prefill_read_gb_s else None)


@dataclass(frozen=True)
class StageRows:
    """The per-row work of one layer-split stage, and what its ubatches read once.

    A matrix of ``ne1`` rows costs ``ne1`` dot products per token; ``llamasplit bench`` measures a
    CPU's fixed cost of each (``DeviceSpeed.row_s``), which a model with a large vocabulary or
    narrow layers pays far more often per byte than the probes do. A prompt ubatch computes the
    logits of its last token only (llama-bench, llama-server and llama-cli mark only that token
    as an output), so the output matrix is read once per ubatch, at its type's decode rate."""

    decode: float = 0.0
    """Rows a decoded token computes (routed experts in the share the router picks)."""
    prefill: float = 0.0
    """Rows each prompt token computes (the layers' matrices, not the output's)."""
    output_bytes: float = 0.0
    """Bytes of the output matrix this stage reads once per ubatch."""
    output_rows: float = 0.0
    output_type: str = ""
    prefill_types: tuple[tuple[str, float], ...] = ()
    """Of ``prefill``, the rows of each weight type (a type may have a per-row cost of its own)."""


@dataclass(frozen=True)
class Workload:
    """What a configuration asks of its devices, in the order the work happens.

    ``stages[s][j]`` = (weight and cache bytes device ``j`` reads per decoded token, matmul FLOPs per
    prompt token) in stage ``s``; ``layers[s]`` = how many transformer layers stage ``s`` runs (the
    fixed per-layer cost). Layer split: one stage per device (the host's CPU layers first), run
    one after another, with an activation hop between stages. Tensor split: attention and FFN of
    every layer and the output are stages that all devices run at once (a stage lasts as long as
    its slowest device), each attention/FFN stage ending in an all-reduce.
    """

    mode: str
    devices: tuple[str, ...]
    stages: tuple[tuple[tuple[float, float], ...], ...]
    n_embd: int
    n_vocab: int
    n_allreduce: int = 0
    algorithm: Algorithm = Algorithm.NONE
    n_subgraphs: int = 0
    """Tensor split: Meta subgraphs per graph evaluation (one more than the all-reduces)."""
    layers: tuple[float, ...] = ()
    """Layers per stage (empty: no per-layer cost)."""
    type_mix: tuple[tuple[tuple[str, float, float], ...], ...] = ()
    """Per column: (weight type, bytes read per token, FLOPs per prompt token) of the weights that
    column holds. Layer split: those run at the type's rate, the rest of a stage's bytes (the KV
    cache) and FLOPs (attention) at the device's main rates; tensor split: the whole stage runs at
    the mix's harmonic-mean rate (every stage holds a slice of the same types)."""
    prefill_bytes: tuple[tuple[float, ...], ...] = ()
    """Per stage and column: bytes each prompt token moves at the device's bandwidth on top of its
    FLOPs (the KQ matrix without flash attention, ``NO_FA_BYTES_PER_KQ``); empty: none."""
    rows: tuple[StageRows, ...] = ()
    """Layer split, per stage: the matrix rows its device computes and the output matrix it reads
    once per ubatch (empty: none; tensor split has none)."""

    @property
    def n_devices(self) -> int:
        return len(self.devices)

    def active(self) -> list[int]:
        """Columns (devices) that do any work."""
        return [j for j in range(self.n_devices) if any(st[j][0] or st[j][1] for st in self.stages)]


@dataclass(frozen=True)
class SpeedEstimate:
    """Predicted decode and prefill speed of one configuration, with the share communication takes.

    ``decode_tok_s``/``prefill_tok_s`` are ``None`` when a device that does work has an unknown
    speed (named in ``unknown``); ``basis`` gives each device's basis, in ``devices`` order."""

    mode: str
    devices: tuple[str, ...]
    decode_tok_s: float | None
    prefill_tok_s: float | None
    decode_comm_s: float
    """Per decoded token: all-reduces (tensor) or activation hops (layer)."""
    prefill_comm_s: float
    """Per prompt: all-reduces or hops of every ubatch."""
    prompt_tokens: int
    basis: tuple[str | None, ...] = ()
    unknown: tuple[str, ...] = ()

    @property
    def known(self) -> bool:
        return self.decode_tok_s is not None

    @property
    def decode_comm_share(self) -> float:
        return self.decode_comm_s * self.decode_tok_s if self.decode_tok_s else 0.0

    @property
    def speed_basis(self) -> str:
        """The weakest basis among the devices that work: ``measured`` only if all are measured."""
        return overall_basis(self.basis)

    def to_dict(self) -> dict[str, object]:
        return {
            "mode": self.mode, "devices": list(self.devices), "decode_tok_s": self.decode_tok_s,
            "prefill_tok_s": self.prefill_tok_s, "decode_comm_s": self.decode_comm_s,
            "prefill_comm_s": self.prefill_comm_s, "prompt_tokens": self.prompt_tokens,
            "speed_basis": dict(zip(self.devices, self.basis)) if self.basis else None,
            "unknown": list(self.unknown),
        }


def overall_basis(bases: Sequence[str | None]) -> str:
    """The weakest of several bases (``unknown`` if any is unknown).

    >>> overall_basis(["measured", "calibrated"]), overall_basis(["measured", None]), overall_basis(["measured", "idle"])
    ('calibrated', 'unknown', 'measured')
    """
    order = [MEASURED, CALIBRATED, DATASHEET, ASSUMED]
    working = [b for b in bases if b != IDLE]
    if not working or any(b is None for b in working):
        return "unknown"
    return max(working, key=order.index)  # type: ignore[arg-type]


def predict(
    work: Workload, speeds: Sequence[DeviceSpeed | None], link: LinkCost | None, *,
    hops: Sequence[LinkCost] = (), host_link: LinkCost | None = None, prompt_tokens: int = 512, n_ubatch: int = 512,
    parallel: float | None = None, fixed_s: float = 0.0,
) -> SpeedEstimate:
    """Decode and prefill tok/s of ``work`` on devices of ``speeds`` (``None``: unknown).

    ``link``: the slowest link among the devices (tensor split's all-reduces and subgraphs);
    ``hops``: the link of each boundary between consecutive stages (layer split; each costs a copy
    and one more device graph); ``host_link``: how the logits reach the host each step (one copy
    of ``n_vocab`` floats); ``parallel``: how many devices can compute at the same time (``None``:
    all of them; RPC workers sharing a host's cores: fewer), so a stage lasts
    ``max(slowest device, sum over devices / parallel)``; ``fixed_s``: per decoded token and per
    prompt ubatch, on top of the devices' own fixed costs.
    """
    n = work.n_devices
    active = work.active()
    basis = tuple((s.basis if s is not None else None) if j in active else IDLE for j, s in enumerate(speeds))
    unknown = tuple(work.devices[j] for j in active if speeds[j] is None)
    p = float(parallel) if parallel else float(n)
    ub = max(1, min(prompt_tokens, n_ubatch))
    k = math.ceil(prompt_tokens / ub)
    if work.mode == "tensor":
        launch = work.n_subgraphs * (link.subgraph_s if link is not None else 0.0)
        comm_dec = work.n_allreduce * allreduce_seconds(work.n_embd, n, work.algorithm, link) + launch
        comm_pre_ub = work.n_allreduce * allreduce_seconds(ub * work.n_embd, n, work.algorithm, link) + launch
    else:
        comm_dec = sum(h.seconds(work.n_embd * ACTIVATION_BYTES) + h.subgraph_s for h in hops)
        comm_pre_ub = sum(h.seconds(ub * work.n_embd * ACTIVATION_BYTES) + h.subgraph_s for h in hops)
    if unknown:
        return SpeedEstimate(work.mode, work.devices, None, None, comm_dec, comm_pre_ub * k, prompt_tokens, basis, unknown)
    sp: list[DeviceSpeed] = [s if s is not None else DeviceSpeed(1.0, 1.0) for s in speeds]
    fetch = host_link.seconds(work.n_vocab * ACTIVATION_BYTES) if host_link else 0.0
    layers = work.layers or (0.0,) * len(work.stages)
    # tensor split: every stage holds a slice of every layer, so a device's weight types are mixed
    # alike in all of them; it runs each stage at its type mix's harmonic-mean rate
    rates = [(s.bandwidth_bytes_s, s.flops) for s in sp]
    if work.mode == "tensor" and work.type_mix:
        for j, s in enumerate(sp):
            if not s.types or j >= len(work.type_mix):
                continue
            mixed = []
            for pick in (0, 1):
                total = sum((b, f)[pick] for _, b, f in work.type_mix[j])
                seconds = sum((b, f)[pick] / s.rates(name)[pick] for name, b, f in work.type_mix[j])
                mixed.append(total / seconds if total and seconds else rates[j][pick])
            rates[j] = (mixed[0], mixed[1])

    def stage_time(stage: Sequence[tuple[float, float]], n_layers: float, pick: int, scale: float,
                   extra: Sequence[float] = (), rows: StageRows | None = None) -> float:
        times = []
        for j, (pair, s) in enumerate(zip(stage, sp)):
            if not (pair[0] or pair[1]):
                times.append(0.0)
                continue
            rate = rates[j][pick]
            amount, seconds = pair[pick], 0.0
            if s.types and work.type_mix and work.mode == "layer":
                for name, b, f in work.type_mix[j]:
                    part = b if pick == 0 else f
                    typed = s.rates(name)[pick]
                    if typed != rate:
                        seconds += part / typed
                        amount -= part
            if extra and extra[j]:
                seconds += extra[j] / s.bandwidth_bytes_s
            fixed = n_layers * s.layer_s
            if rows is not None and pick == 0:
                fixed += rows.decode * s.row_s
            elif rows is not None:
                seconds += rows.prefill * s.prefill_row_s
                typed_rows = dict(rows.prefill_types)
                for name, c in s.type_prefill_row_s:  # a type's own per-row cost instead
                    seconds += typed_rows.get(name, 0.0) * (c - s.prefill_row_s)
                if s.prefill_read_bytes_s:  # the ubatch reads the stage's weights once (the output's, above)
                    fixed += max(0.0, pair[0] - rows.output_bytes) / s.prefill_read_bytes_s
                out_bw = s.rates(rows.output_type)[0]
                fixed += rows.output_bytes / out_bw + rows.output_rows * s.row_s
            times.append((amount / rate + seconds) * scale + fixed)
        return max(max(times, default=0.0), sum(times) / p)

    row_costs = work.rows or (None,) * len(work.stages)
    compute_dec = sum(stage_time(st, nl, 0, 1.0, (), r) for st, nl, r in zip(work.stages, layers, row_costs))
    extras = work.prefill_bytes or ((),) * len(work.stages)
    per_ub = [stage_time(st, nl, 1, ub, ex, r) for st, nl, ex, r in zip(work.stages, layers, extras, row_costs)]
    if work.mode == "tensor":
        token = max((sp[j].token_s for j in active), default=0.0) + fixed_s
        pre = k * (sum(per_ub) + comm_pre_ub + token) + fetch
        comm_pre = comm_pre_ub * k
    else:
        token = sum(sp[j].token_s for j in active) + fixed_s
        # pipelined over ubatches: the first goes through every stage, the rest at the slowest stage's pace
        pre = sum(per_ub) + comm_pre_ub + (k - 1) * max(per_ub + [comm_pre_ub]) + k * token + fetch
        comm_pre = comm_pre_ub * k
    dec = compute_dec + comm_dec + fetch + token
    return SpeedEstimate(work.mode, work.devices, 1.0 / dec, prompt_tokens / pre, comm_dec, comm_pre, prompt_tokens,
                         basis, ())


# ---------------------------------------------------------------------------------------------
# calibration: fit a link and the devices to measured runs


@dataclass(frozen=True)
class Observation:
    """One measured run: a workload, how many prompt tokens, and the seconds llama.cpp reported."""

    work: Workload
    prompt_tokens: int
    decode_s: float
    """Per generated token (llama.cpp's ``eval time`` / runs)."""
    prefill_s: float
    """For the whole prompt (``prompt eval time``)."""
    n_ubatch: int = 512


@dataclass(frozen=True)
class Calibration:
    """Device speed, link and compute parallelism fitted to measured runs of identical devices."""

    speed: DeviceSpeed
    link: LinkCost
    parallel: float
    residual: float
    """Root mean square of the relative errors over the fitted runs."""

    def to_dict(self) -> dict[str, object]:
        return {
            "bandwidth_gb_s": self.speed.bandwidth_bytes_s / 1e9, "gflops": self.speed.flops / 1e9,
            "link": self.link.to_dict(), "parallel": self.parallel, "residual": self.residual,
        }


_FIT_PARAMS = ("inv_bandwidth", "inv_flops", "subgraph", "latency", "inv_link_bandwidth")
_TINY = 1e-30


def _model_times(obs: Observation, theta: Sequence[float], parallel: float, kind: str) -> tuple[float, float]:
    inv_bw, inv_f, sub, lat, inv_lb = theta
    speed = DeviceSpeed(1.0 / max(inv_bw, _TINY), 1.0 / max(inv_f, _TINY))
    link = LinkCost(kind, lat, 1.0 / max(inv_lb, _TINY), staged=True, subgraph_s=sub)
    hops = [link] * max(len(obs.work.stages) - 1, 0)
    est = predict(obs.work, [speed] * obs.work.n_devices, link, hops=hops, host_link=link,
                  prompt_tokens=obs.prompt_tokens, n_ubatch=obs.n_ubatch, parallel=parallel)
    return 1.0 / est.decode_tok_s, obs.prompt_tokens / est.prefill_tok_s


def fit_link(observations: Sequence[Observation], *, kind: str = "rpc-loopback", parallel_grid: Sequence[float] = (1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0)) -> Calibration:
    """Least squares on relative error: device bandwidth and FLOP/s, the per-subgraph cost, the
    per-copy latency and bandwidth of the link, and the compute parallelism (a grid). Every time
    the model predicts is linear in the five inverse quantities for a fixed parallelism, so the
    fit is exact linear algebra (non-negative, by trying every subset of active parameters)."""
    import itertools

    import numpy as np

    if not observations:
        raise UsageError("no measured runs to calibrate from")
    best: Calibration | None = None
    for par in parallel_grid:
        rows, rhs = [], []
        for obs in observations:
            for phase, measured in ((0, obs.decode_s), (1, obs.prefill_s)):
                coef = []
                for k in range(len(_FIT_PARAMS)):
                    theta = [0.0] * len(_FIT_PARAMS)
                    theta[k] = 1.0
                    coef.append(_model_times(obs, theta, par, kind)[phase])
                rows.append([c / measured for c in coef])
                rhs.append(1.0)
        a, y = np.asarray(rows), np.asarray(rhs)
        fit = None
        for r in range(len(_FIT_PARAMS), 0, -1):
            for active in itertools.combinations(range(len(_FIT_PARAMS)), r):
                sol, *_ = np.linalg.lstsq(a[:, active], y, rcond=None)
                if np.any(sol < 0):
                    continue
                theta = np.zeros(len(_FIT_PARAMS))
                theta[list(active)] = sol
                res = float(np.sqrt(np.mean((a @ theta - y) ** 2)))
                if fit is None or res < fit[1] - 1e-12:
                    fit = (theta, res)
        if fit is None:
            continue
        theta, res = fit
        if best is None or res < best.residual:
            inv_bw, inv_f, sub, lat, inv_lb = theta
            best = Calibration(
                DeviceSpeed(1.0 / max(inv_bw, _TINY), 1.0 / max(inv_f, _TINY)),
                LinkCost(kind, float(lat), 1.0 / max(inv_lb, _TINY), staged=True, subgraph_s=float(sub), note="fitted"),
                par, res,
            )
    if best is None:
        raise UsageError("the measured runs admit no non-negative fit")
    return best


def predict_calibrated(obs_work: Workload, cal: Calibration, *, prompt_tokens: int, n_ubatch: int = 512) -> SpeedEstimate:
    """Speed of a workload on the calibrated devices and link."""
    hops = [cal.link] * max(len(obs_work.stages) - 1, 0)
    return predict(obs_work, [cal.speed] * obs_work.n_devices, cal.link, hops=hops, host_link=cal.link,
                   prompt_tokens=prompt_tokens, n_ubatch=n_ubatch, parallel=cal.parallel)


# ---------------------------------------------------------------------------------------------
# workloads from a model and its estimates


def _flops_weight(t) -> float:
    """Matmul FLOPs per token a weight costs: 2 x its elements."""
    if len(t.shape) < 2:
        return 0.0
    elems = 1.0
    for d in t.shape:
        elems *= d
    return 2.0 * elems


def _attention_flops(model, il: int, heads: float, ctx: float) -> float:
    hp = model.hparams
    head = hp.n_embd_head_k_swa if hp.is_swa[il] else hp.n_embd_head_k
    return 4.0 * head * heads * ctx


def _is_output(t) -> bool:
    from llamasplit.model.profile import Block

    return t.block is Block.OUTPUT or t.name == "token_embd.weight"


def host_cpu(host: HostInfo):
    """The host's CPU features as the repack rules read them (``memory.repack``), or ``None``."""
    from llamasplit.memory.repack import CpuFeatures

    if host.cpu_flags is None:
        return None
    return CpuFeatures(frozenset(host.cpu_flags), host.cpu_machine or "x86_64", amx_built=True)


def layer_workload(
    model, est, names: Sequence[str], *, prompt_tokens: int = 512, kv_fill: float = KV_FILL, host: bool = False,
    n_ubatch: int = 512, cpu=None,
) -> Workload:
    """Layer split: each device reads and multiplies the layers ``est`` put on it (``estimate()``).

    With ``host``, the layers left on the CPU are a first stage in an extra column (``HOST_NAME``).
    Without flash attention (``est.flash_attn`` false) each prompt token also moves its row of the
    KQ matrix (``NO_FA_BYTES_PER_KQ`` per head and cell; a ubatch attends to every cell filled so
    far, the ``k``-th of ``K`` to ``k x n_ubatch``, so ``n_ubatch x (K + 1) / 2`` on average).

    Matrix rows (``StageRows``) count only weights that run on plain, row-at-a-time kernels: with
    ``cpu`` (the host repacks, ``est.host.extra_buffers``), the host's repacked weights (``AMX``,
    ``CPU_REPACK``: interleaved kernels that compute 4-8 rows per call) cost no per-row time."""
    from llamasplit.memory import repack
    from llamasplit.memory.weights import _tables

    if not est.host.extra_buffers:
        cpu = None  # this estimate repacks nothing (no CPU features, -nr, or a CUDA device present)

    hp = model.hparams
    n = len(est.devices)
    cols = n + (1 if host else 0)
    active = hp.n_expert_used / hp.n_expert if hp.n_expert and hp.n_expert_used else 1.0
    flops = [0.0] * cols
    kq_bytes = [0.0] * cols
    ub = max(1, min(prompt_tokens, n_ubatch))
    n_kv = ub * (math.ceil(prompt_tokens / ub) + 1) / 2
    mix: list[dict[str, list[float]]] = [{} for _ in range(cols)]
    rows = [[0.0, 0.0, 0.0, 0.0] for _ in range(cols)]  # decode rows, prefill rows, output bytes, output rows
    typed_rows: list[dict[str, float]] = [{} for _ in range(cols)]  # prefill rows by weight type
    out_type = [""] * cols
    for item in _tables(model).items:
        if item.slot is None:
            continue
        dev = est.layer_device[item.slot]
        t = item.tensor
        if dev is None:
            if not host:
                continue
            dev = n
        type_name = _type_name(t.ggml_type)
        kind = mix[dev].setdefault(type_name, [0.0, 0.0])
        kind[0] += item.read_bytes
        share = active if t.role.value == "experts" else 1.0
        repacked = (cpu is not None and dev == n and host
                    and repack.extra_buffer(t, cpu, tied_output=item.dup and item.slot == hp.n_layer) is not None)
        n_rows = 0.0 if repacked else _rows(t) * share
        rows[dev][0] += n_rows
        if _is_output(t):
            # prefill computes the logits of the last token only: the matrix is read once per ubatch
            rows[dev][2] += item.read_bytes
            rows[dev][3] += n_rows
            if len(t.shape) >= 2:  # the matrix, not output_norm
                out_type[dev] = _type_name(t.ggml_type)
            continue
        rows[dev][1] += n_rows
        if n_rows:
            typed_rows[dev][type_name] = typed_rows[dev].get(type_name, 0.0) + n_rows
        flops[dev] += _flops_weight(t) * share
        kind[1] += _flops_weight(t) * share
    for il in range(hp.n_layer_kv):
        dev = est.layer_device[il]
        if dev is None and host:
            dev = n
        if dev is not None and not hp.is_recurrent[il]:
            flops[dev] += _attention_flops(model, il, hp.n_head[il], prompt_tokens / 2)
            if not est.flash_attn:
                kq_bytes[dev] += hp.n_head[il] * n_kv * NO_FA_BYTES_PER_KQ
    stages, layers, extra, stage_rows = [], [], [], []
    parts = [(n, est.host)] if host else []
    parts += list(enumerate(est.devices))
    for j, e in parts:
        if not e.read_bytes:
            continue
        row = [(0.0, 0.0)] * cols
        row[j] = (e.read_bytes + e.context_bytes * kv_fill, flops[j])
        stages.append(tuple(row))
        layers.append(float(sum(1 for il in e.layers if il < hp.n_layer)))
        extra.append(tuple(kq_bytes[j] if k == j else 0.0 for k in range(cols)))
        stage_rows.append(StageRows(*rows[j], out_type[j], tuple(sorted(typed_rows[j].items()))))
    all_names = (*names, HOST_NAME) if host else tuple(names)
    type_mix = tuple(tuple((k, v[0], v[1]) for k, v in sorted(m.items())) for m in mix)
    return Workload("layer", all_names, tuple(stages), hp.n_embd, hp.n_vocab, layers=tuple(layers), type_mix=type_mix,
                    prefill_bytes=tuple(extra) if any(kq_bytes) else (), rows=tuple(stage_rows))


def _rows(t) -> float:
    """Matrix rows of a weight (``ne1 x ne2 ...``): the dot products it costs per token."""
    if len(t.shape) < 2:
        return 0.0
    out = 1.0
    for d in t.shape[1:]:
        out *= d
    return out


def _type_name(ggml_type: int) -> str:
    from llamasplit.gguf_constants import GGMLQuantizationType

    try:
        return GGMLQuantizationType(ggml_type).name
    except ValueError:
        return str(ggml_type)


def tensor_workload(model, test, names: Sequence[str], algorithm: Algorithm, *, prompt_tokens: int = 512, kv_fill: float = KV_FILL) -> Workload:
    """Tensor split: per layer an attention and an FFN stage (then the output), each device working
    on its slices (``estimate_tensor()``), two all-reduces per layer on the Meta device."""
    from llamasplit.memory.tensor_split import kv_slices

    hp = model.hparams
    n = len(test.devices)
    active = hp.n_expert_used / hp.n_expert if hp.n_expert and hp.n_expert_used else 1.0
    by_name = {t.name: t for t in model.tensors}
    groups: dict[tuple[int, int], list[list[float]]] = {}
    order: list[tuple[int, int]] = []
    mix: list[dict[str, list[float]]] = [{} for _ in range(n)]

    def group(key: tuple[int, int]) -> list[list[float]]:
        if key not in groups:
            groups[key] = [[0.0, 0.0] for _ in range(n)]
            order.append(key)
        return groups[key]

    for sl in test.slices:
        t = by_name.get(sl.name)
        if t is None:
            continue
        if t.layer is not None and t.block.value == "layer":
            key = (t.layer, 1 if "ffn" in t.name else 0)
        else:
            key = (hp.n_layer, 2)
        g = group(key)
        share = active if t.role.value == "experts" else 1.0
        for j in range(n):
            frac = sl.n_bytes[j] / t.n_bytes if t.n_bytes else 0.0
            g[j][0] += sl.n_bytes[j] * share
            kind = mix[j].setdefault(_type_name(t.ggml_type), [0.0, 0.0])
            kind[0] += sl.n_bytes[j] * share
            if not _is_output(t):
                g[j][1] += _flops_weight(t) * frac * share
                kind[1] += _flops_weight(t) * frac * share
    for il in range(hp.n_layer_kv):
        if not test.layer_on_meta[il] or hp.is_recurrent[il]:
            continue
        k, _ = kv_slices(model, n, test.tensor_split, il)
        head = hp.n_embd_head_k_swa if hp.is_swa[il] else hp.n_embd_head_k
        n_gqa = hp.n_head[il] // max(hp.n_head_kv[il], 1)
        g = group((il, 0))
        for j in range(n):
            g[j][0] += test.layer_kv_bytes[il][j] * kv_fill
            g[j][1] += _attention_flops(model, il, k[j] / head * n_gqa if head else 0.0, prompt_tokens / 2)
    keys = sorted(order)
    stages = tuple(tuple((a, b) for a, b in groups[key]) for key in keys)
    n_allreduce = ALLREDUCES_PER_LAYER * sum(1 for il in range(hp.n_layer) if test.layer_on_meta[il])
    layers = tuple(0.5 if key[1] < 2 else 0.0 for key in keys)  # attention and FFN: half a layer each
    type_mix = tuple(tuple((k, v[0], v[1]) for k, v in sorted(m.items())) for m in mix)
    return Workload("tensor", tuple(names), stages, hp.n_embd, hp.n_vocab, n_allreduce, algorithm, n_allreduce + 1,
                    layers=layers, type_mix=type_mix)


# ---------------------------------------------------------------------------------------------
# the entry points: a layer split or a tensor split of a model over a fleet


def layer_split_speed(
    model, fleet: Fleet, devices: Sequence[Device], est, *, prompt_tokens: int = 512, kv_fill: float = KV_FILL,
    n_ubatch: int = 512, coeffs: dict[str, Any] | None = None,
) -> SpeedEstimate:
    """Decode and prefill speed of the layer split ``est`` (``estimate()`` over ``devices``): the
    CPU layers first at the host's speed, then each device that holds layers, the activation
    crossing each boundary, the logits coming back to the host."""
    if len(est.devices) != len(devices):
        raise ValueError(f"the estimate covers {len(est.devices)} devices, not the {len(devices)} given")
    work = layer_workload(model, est, [d.name for d in devices], prompt_tokens=prompt_tokens, kv_fill=kv_fill, host=True,
                          n_ubatch=n_ubatch, cpu=host_cpu(fleet.host))
    speeds = [device_speed(d, coeffs) for d in devices] + [host_speed(fleet.host, coeffs)]
    n = len(devices)
    order = [j for st in work.stages for j in range(len(st)) if st[j][0] or st[j][1]]
    hops: list[LinkCost] = []
    for a, b in zip(order, order[1:]):
        if a == n:
            hops.append(host_link(devices[b], coeffs))
        else:
            hops.append(device_link(fleet, devices[a], devices[b], coeffs))
    fetch = host_link(devices[order[-1]], coeffs) if order and order[-1] != n else None
    return predict(work, speeds, None, hops=hops, host_link=fetch, prompt_tokens=prompt_tokens, n_ubatch=n_ubatch)


def tensor_split_speed(
    model, fleet: Fleet, devices: Sequence[Device], test, algorithm: Algorithm, link: LinkCost | None, *,
    prompt_tokens: int = 512, kv_fill: float = KV_FILL, n_ubatch: int = 512, coeffs: dict[str, Any] | None = None,
) -> SpeedEstimate:
    """Decode and prefill speed of the tensor split ``test`` (``estimate_tensor()`` over ``devices``)."""
    work = tensor_workload(model, test, [d.name for d in devices], algorithm, prompt_tokens=prompt_tokens, kv_fill=kv_fill)
    speeds = [device_speed(d, coeffs) for d in devices]
    fetch = host_link(devices[0], coeffs) if devices else None
    return predict(work, speeds, link, host_link=fetch, prompt_tokens=prompt_tokens, n_ubatch=n_ubatch)
