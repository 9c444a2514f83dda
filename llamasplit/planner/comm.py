"""What ``-sm tensor`` sends between devices, what that costs on each kind of link, and the speed
of tensor against layer split.

**How many all-reduces.** llama.cpp's Meta backend (ggml/src/ggml-backend-meta.cpp,
``ggml_backend_meta_graph_compute``) cuts the graph after every node whose split state is PARTIAL:
the product of a weight split on axis 0 (its input columns) with an input split the same way.
In a transformer block those are ``attn_output`` and ``ffn_down`` (``ffn_down_exps`` for MoE): two
all-reduces per layer of an ``n_embd x n_tokens`` F32 activation, none after the output matrix
(split by vocab rows, its logits are gathered, not summed). Checked on the real stack: over two RPC
workers every graph evaluation of SmolLM2 (30 layers) makes each worker send 61 tensors, 2 x 30
all-reduce pushes plus the logits (tests/test_tensor_split_real.py). Independent partial
branches that are summed (parallel attention + FFN blocks, MoE expert sums) are merged into one
all-reduce; ``allreduces_per_layer`` is 2 for the sequential block.

**Which algorithm.** ``allreduce_algorithm``:

- CUDA on Linux, built with NCCL (``GGML_CUDA_NCCL`` defaults ON; used when NCCL is found): NCCL's
  ring, F32 for small tensors and BF16 (2 bytes) above 32768 / 131072 / 262144 elements for
  2 / 3 / 4+ GPUs;
- CUDA without NCCL: llama.cpp's internal pipeline for exactly 2 GPUs, else the butterfly fallback;
- everything else (RPC, Vulkan, Metal, CPU): the Meta backend's butterfly: ``ceil(log2 n)`` steps
  in which every device sends its whole tensor to a partner and adds what it receives (a device
  count that is not a power of two first folds the excess in and copies the result back after);
- over RPC each of those copies goes through the client (``ggml_backend_tensor_copy``: a blocking
  ``get_tensor`` from one server, a ``set_tensor`` to the other), one after another.

**Cost.** Each step costs ``latency + bytes / bandwidth`` on the slowest link among the devices.
A ring moves ``2(n-1)/n`` of the data per device in ``2(n-1)`` steps; the butterfly moves the
whole tensor in each of its ``ceil(log2 n)`` steps. Link figures come from the fleet (NVLink,
NVSwitch, PCIe peer-to-peer, host-staged PCIe, network for RPC); ``DEFAULT_LATENCY_US`` fills in
what a fleet does not know; RPC on loopback was calibrated on the real stack (``tensor_compat.json``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from llamasplit.devices.device import Device, Fleet, Link, LinkKind
from llamasplit.errors import UsageError

ALLREDUCES_PER_LAYER = 2
"""attn_output and ffn_down each end a Meta subgraph with an all-reduce."""

ACTIVATION_BYTES = 4
"""llama.cpp all-reduces F32 activations (NCCL compresses large ones to BF16 on the wire)."""

NCCL_F32_BELOW = {2: 32768, 3: 131072}
NCCL_F32_BELOW_MANY = 262144
"""ggml-cuda.cu ``ggml_backend_cuda_comm_allreduce_nccl``: element counts under which it reduces in F32."""


class Algorithm(str, Enum):
    NCCL_RING = "nccl-ring"
    CUDA_INTERNAL = "cuda-internal"
    BUTTERFLY = "butterfly"
    BUTTERFLY_HOST = "butterfly-host-staged"
    NONE = "none"


def allreduce_algorithm(devices: Sequence[Device], *, nccl: bool = True) -> tuple[Algorithm, str]:
    """Which all-reduce llama.cpp runs for these devices, and why."""
    n = len(devices)
    if n <= 1:
        return Algorithm.NONE, "one device: nothing to reduce"
    backends = {d.backend.upper() for d in devices}
    if backends == {"CUDA"}:
        if nccl:
            return Algorithm.NCCL_RING, "CUDA on Linux uses NCCL (ring all-reduce) when llama.cpp was built with it"
        if n == 2:
            return Algorithm.CUDA_INTERNAL, "CUDA without NCCL: llama.cpp's internal all-reduce for 2 GPUs"
        return Algorithm.BUTTERFLY, "CUDA without NCCL and not 2 GPUs: the Meta backend's butterfly"
    if "RPC" in backends:
        return Algorithm.BUTTERFLY_HOST, "RPC devices: the Meta backend's butterfly, every copy staged through the client"
    if backends == {"SYCL"} and n == 2:
        return Algorithm.CUDA_INTERNAL, "SYCL has its own all-reduce for 2 devices (F32)"
    return Algorithm.BUTTERFLY, f"{'/'.join(sorted(backends))}: no backend all-reduce, the Meta backend's butterfly"


def butterfly_steps(n: int) -> int:
    """``ceil(log2 n)``: llama.cpp's ``n_reduce_steps`` (fold-in and copy-back included)."""
    return math.ceil(math.log2(n)) if n > 1 else 0


def host_staged_transfers(n: int) -> int:
    """Copies one butterfly all-reduce makes over RPC: fold-in, ``p log2 p`` exchanges, copy-back
    (``p`` = the largest power of two <= n).

    >>> [host_staged_transfers(n) for n in (1, 2, 3, 4, 5, 8)]
    [0, 2, 4, 8, 10, 24]
    """
    if n <= 1:
        return 0
    p = 1 << (n.bit_length() - 1)
    return 2 * (n - p) + p * int(math.log2(p))


def ring_factor(n: int) -> float:
    """Share of the data each device sends (and receives) in a ring all-reduce: ``2(n-1)/n``."""
    return 2 * (n - 1) / n if n > 1 else 0.0


# ---------------------------------------------------------------------------------------------
# links


def _loopback() -> dict[str, float]:
    from llamasplit.planner.tensor_split import compat_record

    return compat_record()["calibration"]["rpc_loopback"]


DEFAULT_LATENCY_US = {"nvlink": 8.0, "pcie-p2p": 12.0, "host-staged": 25.0, "network": 780.0}
"""Per-copy latency (launch, sync and wire) when the fleet does not say. NVLink/PCIe: typical small
NCCL/cudaMemcpyPeer latencies. RPC on loopback is measured (``tensor_compat.json`` ``calibration``:
about 580 us per copy on a 2-core host); RPC over a LAN: that plus a LAN round trip (~250 us) less
loopback's (~50 us)."""

DEFAULT_BANDWIDTH_GB_S = {"pcie-p2p": 16.0, "host-staged": 8.0, "network": 1.25}


@dataclass(frozen=True)
class LinkCost:
    """What moving data between two devices costs.

    One copy costs ``latency_s + bytes / bandwidth_bytes_s``, twice the bytes when ``staged`` (the
    data goes to the host and back out: RPC, PCIe without peer-to-peer). ``subgraph_s`` is what
    each Meta subgraph costs beyond its compute (launch and synchronisation; over RPC the whole
    subgraph is serialised and sent every time, since its graph id changes from one to the next).
    """

    kind: str
    latency_s: float
    bandwidth_bytes_s: float
    staged: bool = False
    subgraph_s: float = 0.0
    note: str = ""

    def seconds(self, n_bytes: float) -> float:
        return self.latency_s + (2 if self.staged else 1) * n_bytes / self.bandwidth_bytes_s

    def to_dict(self) -> dict[str, object]:
        return {
            "kind": self.kind, "latency_us": self.latency_s * 1e6, "bandwidth_gb_s": self.bandwidth_bytes_s / 1e9,
            "staged": self.staged, "subgraph_us": self.subgraph_s * 1e6, "note": self.note,
        }


DEFAULT_SUBGRAPH_US = {"nvlink": 6.0, "pcie-p2p": 6.0, "host-staged": 8.0, "network": 200.0}
"""Per Meta subgraph and token: a CUDA graph launch and stream sync; over RPC a serialised graph."""


def _link_cost(a: Device, b: Device, link: Link | None, loopback: LinkCost | None) -> LinkCost:
    rpc = a.backend.upper() == "RPC" or b.backend.upper() == "RPC"
    if rpc:
        hosts = {d.host.rsplit(":", 1)[0] for d in (a, b) if d.backend.upper() == "RPC"}
        local = hosts <= {"127.0.0.1", "localhost", "::1", "[::1]"}
        kind = "rpc-loopback" if local else "network"
        if local:
            if loopback is not None:
                return loopback
            cal = _loopback()
            latency = link.latency_us if link is not None and link.latency_us is not None else cal["latency_us"]
            bandwidth = link.bandwidth_gb_s if link is not None and link.bandwidth_gb_s else cal["bandwidth_gb_s"]
            return LinkCost(kind, latency * 1e-6, bandwidth * 1e9, True, cal["subgraph_us"] * 1e-6,
                            "calibrated on loopback (tensor_compat.json)")
    elif link is None:
        kind = "pcie-p2p"
    elif link.kind in (LinkKind.NVLINK, LinkKind.NVSWITCH):
        kind = "nvlink"
    elif link.p2p is False or link.kind in (LinkKind.NODE, LinkKind.SYS):
        kind = "host-staged"
    else:
        kind = "pcie-p2p"
    latency = link.latency_us if link is not None and link.latency_us is not None else DEFAULT_LATENCY_US[kind]
    if link is not None and link.bandwidth_gb_s:
        bandwidth = link.bandwidth_gb_s
    else:
        bandwidth = DEFAULT_BANDWIDTH_GB_S.get(kind, 16.0)
    staged = kind in ("host-staged", "network", "rpc-loopback")
    return LinkCost(kind, latency * 1e-6, bandwidth * 1e9, staged, DEFAULT_SUBGRAPH_US[kind] * 1e-6, f"{a.name}<->{b.name}")


def group_link(fleet: Fleet | None, devices: Sequence[Device], *, loopback: LinkCost | None = None) -> LinkCost | None:
    """The slowest link among ``devices`` (a collective is as slow as its slowest hop); ``None`` for one device."""
    worst: LinkCost | None = None
    for i, a in enumerate(devices):
        for b in devices[i + 1:]:
            cost = _link_cost(a, b, fleet.link(a.id, b.id) if fleet else None, loopback)
            if worst is None or cost.seconds(1 << 20) > worst.seconds(1 << 20):
                worst = cost
    return worst


def allreduce_seconds(n_elements: int, n: int, algorithm: Algorithm, link: LinkCost | None) -> float:
    """Time of one all-reduce of ``n_elements`` F32 values over ``n`` devices."""
    if n <= 1 or link is None or algorithm is Algorithm.NONE:
        return 0.0
    n_bytes = n_elements * ACTIVATION_BYTES
    if algorithm is Algorithm.NCCL_RING:
        if n_elements >= NCCL_F32_BELOW.get(n, NCCL_F32_BELOW_MANY):
            n_bytes = n_elements * 2  # reduced as BF16
        steps = 2 * (n - 1)
        return steps * link.latency_s + ring_factor(n) * n_bytes / link.bandwidth_bytes_s
    if algorithm is Algorithm.CUDA_INTERNAL:
        return link.seconds(n_bytes)
    if algorithm is Algorithm.BUTTERFLY:
        p = 1 << (n.bit_length() - 1)
        steps = butterfly_steps(n) + (1 if p != n else 0)  # the fold-in before, the copy back after
        return steps * link.seconds(n_bytes)
    # host-staged: each copy is a get to the client and a set from it, one after another
    return host_staged_transfers(n) * link.seconds(n_bytes)


# ---------------------------------------------------------------------------------------------
# traffic: the arithmetic the design document does


@dataclass(frozen=True)
class Traffic:
    """All-reduce traffic of tensor parallelism for one forward pass over ``tokens`` tokens."""

    n_embd: int
    n_layer: int
    tp: int
    tokens: int
    dtype_bytes: int
    allreduces_per_layer: int = ALLREDUCES_PER_LAYER

    @property
    def activation_bytes(self) -> int:
        """One all-reduced activation: ``tokens x n_embd x dtype_bytes``."""
        return self.tokens * self.n_embd * self.dtype_bytes

    @property
    def layer_bytes(self) -> int:
        """The activations all-reduced in one layer (attention output + FFN output)."""
        return self.allreduces_per_layer * self.activation_bytes

    @property
    def model_bytes(self) -> int:
        return self.n_layer * self.layer_bytes

    def wire_bytes_per_device(self, factor: float) -> float:
        """Bytes each device sends per layer at a given ring factor."""
        return factor * self.layer_bytes

    @property
    def ring_factor(self) -> float:
        return ring_factor(self.tp)

    @property
    def butterfly_bytes_per_layer(self) -> int:
        """llama.cpp's butterfly fallback: the whole activation in each of ceil(log2 n) steps."""
        p = 1 << (self.tp.bit_length() - 1)
        steps = butterfly_steps(self.tp) + (1 if p != self.tp else 0)
        return steps * self.layer_bytes


# ---------------------------------------------------------------------------------------------
# speed


@dataclass(frozen=True)
class DeviceSpeed:
    """How fast one device reads weights and multiplies: the speed model's only device inputs."""

    bandwidth_bytes_s: float
    flops: float
    """Effective FLOP/s of prefill matmuls."""


PREFILL_EFFICIENCY = 0.4
"""Share of a GPU's dense FP16 tensor TFLOPS llama.cpp's prefill matmuls reach (quantised weights)."""

KV_FILL = 0.5
"""Decode reads the KV cache at this share of the context (the planner's convention: half full)."""


def device_speed(d: Device) -> DeviceSpeed | None:
    """From a device's catalog figures; ``None`` when its bandwidth is unknown (an RPC worker)."""
    if d.bandwidth_gb_s is None:
        return None
    tflops = d.fp16_tflops if d.fp16_tflops else d.bandwidth_gb_s / 10.0
    return DeviceSpeed(d.bandwidth_gb_s * 1e9, tflops * 1e12 * PREFILL_EFFICIENCY)


@dataclass(frozen=True)
class Workload:
    """What a configuration asks of its devices, in the order the work happens.

    ``stages[s][j]`` = (weight and cache bytes device ``j`` reads per decoded token, matmul FLOPs per
    prompt token) in stage ``s``. Layer split: one stage per device, run one after another, with an
    activation hop between stages. Tensor split: attention and FFN of every layer and the output
    are stages that all devices run at once (a stage lasts as long as its slowest device), each
    attention/FFN stage ending in an all-reduce.
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

    @property
    def n_devices(self) -> int:
        return len(self.devices)


@dataclass(frozen=True)
class SpeedEstimate:
    """Predicted decode and prefill speed of one configuration, with the share communication takes."""

    mode: str
    devices: tuple[str, ...]
    decode_tok_s: float
    prefill_tok_s: float
    decode_comm_s: float
    """Per decoded token: all-reduces (tensor) or activation hops (layer)."""
    prefill_comm_s: float
    """Per prompt: all-reduces or hops of every ubatch."""
    prompt_tokens: int

    @property
    def decode_comm_share(self) -> float:
        return self.decode_comm_s * self.decode_tok_s

    def to_dict(self) -> dict[str, object]:
        return {
            "mode": self.mode, "devices": list(self.devices), "decode_tok_s": self.decode_tok_s,
            "prefill_tok_s": self.prefill_tok_s, "decode_comm_s": self.decode_comm_s,
            "prefill_comm_s": self.prefill_comm_s, "prompt_tokens": self.prompt_tokens,
        }


def predict(
    work: Workload, speeds: Sequence[DeviceSpeed | None], link: LinkCost | None, *,
    hops: Sequence[LinkCost] = (), host_link: LinkCost | None = None, prompt_tokens: int = 512, n_ubatch: int = 512,
    parallel: float | None = None, fixed_s: float = 0.0,
) -> SpeedEstimate:
    """Decode and prefill tok/s of ``work`` on devices of ``speeds``.

    ``link``: the slowest link among the devices (tensor split's all-reduces and subgraphs);
    ``hops``: the link of each boundary between consecutive stages (layer split); ``host_link``:
    how the logits reach the host each step (one copy of ``n_vocab`` floats); ``parallel``: how
    many devices can compute at the same time (``None``: all of them; RPC workers sharing a
    host's cores: fewer), so a stage lasts ``max(slowest device, sum over devices / parallel)``;
    ``fixed_s``: per decoded token and per prompt ubatch, what the bandwidth and FLOP model misses
    (kernel launches).
    """
    if any(s is None for s in speeds):
        raise UsageError("a device's memory bandwidth is unknown, so its speed cannot be predicted",
                         remedy="plan for a --fleet or --inventory that states it, or calibrate")
    sp: list[DeviceSpeed] = list(speeds)  # type: ignore[arg-type]
    n = work.n_devices
    p = float(parallel) if parallel else float(n)
    fetch = host_link.seconds(work.n_vocab * ACTIVATION_BYTES) if host_link else 0.0

    def stage_time(stage: Sequence[tuple[float, float]], pick: int, scale: float) -> float:
        times = [pair[pick] * scale / (s.bandwidth_bytes_s if pick == 0 else s.flops) for pair, s in zip(stage, sp)]
        return max(max(times, default=0.0), sum(times) / p)

    ub = max(1, min(prompt_tokens, n_ubatch))
    k = math.ceil(prompt_tokens / ub)
    compute_dec = sum(stage_time(st, 0, 1.0) for st in work.stages)
    per_ub = [stage_time(st, 1, ub) for st in work.stages]
    if work.mode == "tensor":
        launch = work.n_subgraphs * (link.subgraph_s if link is not None else 0.0)
        comm_dec = work.n_allreduce * allreduce_seconds(work.n_embd, n, work.algorithm, link) + launch
        comm_pre = work.n_allreduce * allreduce_seconds(ub * work.n_embd, n, work.algorithm, link) + launch
        pre = k * (sum(per_ub) + comm_pre + fixed_s) + fetch
        comm_pre *= k
    else:
        comm_dec = sum(h.seconds(work.n_embd * ACTIVATION_BYTES) for h in hops)
        hop_ub = sum(h.seconds(ub * work.n_embd * ACTIVATION_BYTES) for h in hops)
        # pipelined over ubatches: the first goes through every stage, the rest at the slowest stage's pace
        pre = sum(per_ub) + hop_ub + (k - 1) * max(per_ub + [hop_ub]) + k * fixed_s + fetch
        comm_pre = hop_ub * k
    dec = compute_dec + comm_dec + fetch + fixed_s
    return SpeedEstimate(work.mode, work.devices, 1.0 / dec, prompt_tokens / pre, comm_dec, comm_pre, prompt_tokens)


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


def layer_workload(model, est, names: Sequence[str], *, prompt_tokens: int = 512, kv_fill: float = KV_FILL) -> Workload:
    """Layer split: each device reads and multiplies the layers ``est`` put on it (``estimate()``)."""
    from llamasplit.planner.estimate import _tables

    hp = model.hparams
    n = len(est.devices)
    active = hp.n_expert_used / hp.n_expert if hp.n_expert and hp.n_expert_used else 1.0
    flops = [0.0] * n
    for item in _tables(model).items:
        if item.slot is None:
            continue
        dev = est.layer_device[item.slot]
        t = item.tensor
        if dev is None or _is_output(t):
            continue  # prefill computes the logits of the last token only
        share = active if t.role.value == "experts" else 1.0
        flops[dev] += _flops_weight(t) * share
    for il in range(hp.n_layer_kv):
        dev = est.layer_device[il]
        if dev is not None and not hp.is_recurrent[il]:
            flops[dev] += _attention_flops(model, il, hp.n_head[il], prompt_tokens / 2)
    stages = []
    for j, e in enumerate(est.devices):
        if not e.read_bytes:
            continue
        row = [(0.0, 0.0)] * n
        row[j] = (e.read_bytes + e.context_bytes * kv_fill, flops[j])
        stages.append(tuple(row))
    return Workload("layer", tuple(names), tuple(stages), hp.n_embd, hp.n_vocab)


def tensor_workload(model, test, names: Sequence[str], algorithm: Algorithm, *, prompt_tokens: int = 512, kv_fill: float = KV_FILL) -> Workload:
    """Tensor split: per layer an attention and an FFN stage (then the output), each device working
    on its slices (``estimate_tensor()``), two all-reduces per layer on the Meta device."""
    from llamasplit.planner.tensor_split import kv_slices

    hp = model.hparams
    n = len(test.devices)
    active = hp.n_expert_used / hp.n_expert if hp.n_expert and hp.n_expert_used else 1.0
    by_name = {t.name: t for t in model.tensors}
    groups: dict[tuple[int, int], list[list[float]]] = {}
    order: list[tuple[int, int]] = []

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
            if not _is_output(t):
                g[j][1] += _flops_weight(t) * frac * share
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
    stages = tuple(tuple((a, b) for a, b in groups[key]) for key in sorted(order))
    n_allreduce = ALLREDUCES_PER_LAYER * sum(1 for il in range(hp.n_layer) if test.layer_on_meta[il])
    return Workload("tensor", tuple(names), stages, hp.n_embd, hp.n_vocab, n_allreduce, algorithm, n_allreduce + 1)


# ---------------------------------------------------------------------------------------------
# single device, layer split, tensor split or one replica per GPU?


@dataclass(frozen=True)
class Option:
    """One way to run the model on (part of) the fleet, with its predicted speed, or why not."""

    kind: str
    """``single``, ``layer``, ``tensor`` or ``data-parallel``."""
    devices: tuple[str, ...]
    speed: SpeedEstimate | None
    argv: tuple[str, ...] = ()
    why_not: str | None = None
    detail: str = ""
    replicas: int = 1

    @property
    def fits(self) -> bool:
        return self.speed is not None

    @property
    def decode_tok_s(self) -> float:
        """Single-stream decode speed (data parallel: one replica's)."""
        return self.speed.decode_tok_s if self.speed else 0.0

    @property
    def total_decode_tok_s(self) -> float:
        return self.decode_tok_s * self.replicas

    def to_dict(self) -> dict[str, object]:
        return {
            "kind": self.kind, "devices": list(self.devices), "fits": self.fits, "why_not": self.why_not,
            "replicas": self.replicas, "speed": self.speed.to_dict() if self.speed else None,
            "total_decode_tok_s": self.total_decode_tok_s if self.speed else None, "argv": list(self.argv),
            "detail": self.detail,
        }


@dataclass(frozen=True)
class Recommendation:
    """Every option with its numbers, the pick, and the one-line reason."""

    model: str
    options: tuple[Option, ...]
    best: Option | None
    verdict: str
    prompt_tokens: int

    def to_dict(self) -> dict[str, object]:
        return {
            "model": self.model, "prompt_tokens": self.prompt_tokens, "verdict": self.verdict,
            "best": self.best.to_dict() if self.best else None, "options": [o.to_dict() for o in self.options],
        }


def _budgets_ok(totals: Sequence[int], devices: Sequence[Device], margin_bytes: int) -> str | None:
    for t, d in zip(totals, devices):
        free = d.free_bytes if d.free_bytes is not None else d.total_bytes
        if free is not None and t > free - margin_bytes:
            return f"{d.name} would need {t / 2**30:.1f} GiB of {max(free - margin_bytes, 0) / 2**30:.1f} GiB"
    return None


def _tensor_groups(fleet: Fleet) -> list[tuple[Device, ...]]:
    """Device groups worth trying tensor split on: every group of identical cards, and all devices."""
    groups: list[tuple[Device, ...]] = []
    by_kind: dict[str, list[Device]] = {}
    for d in fleet.devices:
        by_kind.setdefault(d.description, []).append(d)
    for members in by_kind.values():
        if len(members) >= 2:
            groups.append(tuple(members))
    if len(fleet.devices) >= 2 and tuple(fleet.devices) not in groups:
        groups.append(tuple(fleet.devices))
    return groups


def _hop_links(fleet: Fleet, devices: Sequence[Device]) -> list[LinkCost]:
    out = []
    for a, b in zip(devices, devices[1:]):
        out.append(_link_cost(a, b, fleet.link(a.id, b.id), None))
    return out


GPU_LAYER_OVERHEAD_S = 15e-6
"""Per layer and decoded token on a GPU: kernel launches and small ops the bandwidth model misses
(llama.cpp runs roughly ten kernels per layer; CUDA graphs keep each to a few microseconds)."""


def recommend(
    model, fleet: Fleet, settings=None, *, prompt_tokens: int = 2048, margin_bytes: int = 1 << 30, nccl: bool = True,
) -> Recommendation:
    """Compare one device, layer split, tensor split and one replica per GPU for ``model`` on
    ``fleet``: predicted prefill and decode speed of each (pure; the fleet is a snapshot).

    Layer and tensor split are compared on the same devices (the group tensor split does best on);
    tensor split is only proposed for archs the compatibility record says run."""
    import dataclasses as dc

    from llamasplit.errors import NoFeasiblePlan
    from llamasplit.planner.estimate import estimate
    from llamasplit.planner.plan import PlanOptions, plan
    from llamasplit.planner.settings import LlamaSettings
    from llamasplit.planner.tensor_split import arch_status, estimate_tensor

    settings = settings or LlamaSettings(n_ctx=4096)
    if settings.n_ctx is None:
        settings = settings.replace(n_ctx=4096)
    ub = settings.n_ubatch
    host = LinkCost("pcie-p2p", DEFAULT_LATENCY_US["pcie-p2p"] * 1e-6, DEFAULT_BANDWIDTH_GB_S["pcie-p2p"] * 1e9)
    name_of = {d.id: d.name for d in fleet.devices}
    overhead = GPU_LAYER_OVERHEAD_S * model.hparams.n_layer

    def layer_speed(devs: Sequence[Device], est) -> SpeedEstimate:
        used = [d for d, e in zip(devs, est.devices) if e.read_bytes]
        work = layer_workload(model, est, [name_of.get(d.id, d.name) for d in devs], prompt_tokens=prompt_tokens)
        speeds = [device_speed(d) for d in used]
        return predict(work, speeds, None, hops=_hop_links(fleet, used), host_link=host, prompt_tokens=prompt_tokens,
                       n_ubatch=ub, fixed_s=overhead)

    def single_option(d: Device) -> Option:
        sub = dc.replace(fleet, devices=(d,), links=())
        try:
            p = plan(model, sub, PlanOptions(settings=settings, fixed=frozenset({"n_ctx"}), margin_bytes=margin_bytes))
        except (NoFeasiblePlan, UsageError) as err:
            return Option("single", (d.name,), None, why_not=err.message)
        if p.settings.n_gpu_layers is not None:
            return Option("single", (d.name,), None, why_not=f"only {p.settings.n_gpu_layers} of {model.hparams.n_layer + 1} layers fit")
        devs = list(p.fleet.devices)
        try:
            speed = layer_speed(devs, estimate(model, devs, p.settings))
        except UsageError as err:
            return Option("single", (d.name,), None, why_not=err.message)
        return Option("single", (d.name,), speed, tuple(p.argv()))

    def layer_option(group: Sequence[Device]) -> Option:
        names = tuple(d.name for d in group)
        # llama.cpp's default: layers in proportion to free memory (no -ts) when the fleet knows it
        known = all(d.free_bytes is not None for d in group)
        s = settings.replace(split_mode="layer", tensor_split=None if known else (1.0,) * len(group), n_gpu_layers=None)
        try:
            est = estimate(model, list(group), s)
        except UsageError as err:
            return Option("layer", names, None, why_not=err.message)
        short = _budgets_ok([e.total_bytes for e in est.devices], group, margin_bytes)
        if short:
            return Option("layer", names, None, why_not=short)
        try:
            speed = layer_speed(group, est)
        except UsageError as err:
            return Option("layer", names, None, why_not=err.message)
        return Option("layer", names, speed, ("llama-server", "-m", model.path, *s.to_args()))

    def tensor_option(group: Sequence[Device], ts) -> Option:
        names = tuple(d.name for d in group)
        s = settings.replace(split_mode="tensor", tensor_split=ts, n_gpu_layers=None,
                             flash_attn="on" if settings.flash_attn == "off" else settings.flash_attn)
        try:
            test = estimate_tensor(model, group, s)
        except UsageError as err:
            return Option("tensor", names, None, why_not=err.message)
        short = _budgets_ok([e.total_bytes for e in test.devices], group, margin_bytes)
        if short:
            return Option("tensor", names, None, why_not=short)
        algo, algo_why = allreduce_algorithm(group, nccl=nccl)
        link = group_link(fleet, group)
        work = tensor_workload(model, test, names, algo, prompt_tokens=prompt_tokens)
        try:
            speed = predict(work, [device_speed(d) for d in group], link, host_link=host, prompt_tokens=prompt_tokens,
                            n_ubatch=ub, fixed_s=overhead)
        except UsageError as err:
            return Option("tensor", names, None, why_not=err.message)
        detail = f"{algo.value} over {link.kind if link else '-'}, {work.n_allreduce} all-reduces per token: {algo_why}"
        return Option("tensor", names, speed, ("llama-server", "-m", model.path, *s.to_args()), detail=detail)

    options: list[Option] = []
    singles = [single_option(d) for d in fleet.devices]
    fitting = [o for o in singles if o.fits]
    options.append(max(fitting, key=lambda o: o.decode_tok_s) if fitting
                   else Option("single", (), None, why_not="the model does not fit on any one device"))
    groups = _tensor_groups(fleet)
    status, why = arch_status(model.arch)
    tensors: list[Option] = []
    for group in groups:
        if status != "works":
            break
        bw = [d.bandwidth_gb_s or 1.0 for d in group]
        for ts in [None] if len(set(bw)) == 1 else [None, tuple(round(b / min(bw), 2) for b in bw)]:
            tensors.append(tensor_option(group, ts))
    fit_t = [o for o in tensors if o.fits]
    best_t = max(fit_t, key=lambda o: o.decode_tok_s) if fit_t else None
    if groups:
        # layer split on the same devices as the best tensor split (or the largest group)
        group = next(g for g in groups if best_t is None or tuple(d.name for d in g) == best_t.devices)
        if best_t is None:
            group = max(groups, key=len)
        options.append(layer_option(group))
        if best_t is not None:
            options.append(best_t)
        elif status != "works":
            options.append(Option("tensor", (), None, why_not=f"not proposed for {model.arch} ({status} under -sm tensor "
                                  "at the pinned llama.cpp, see tensor_compat.json)", detail=why))
        else:
            options.append(tensors[-1] if tensors else Option("tensor", (), None, why_not="no group of two devices"))
    if len(fitting) >= 2:
        per = SpeedEstimate("data-parallel", tuple(o.devices[0] for o in fitting),
                            sum(o.decode_tok_s for o in fitting) / len(fitting),
                            sum(o.speed.prefill_tok_s for o in fitting) / len(fitting), 0.0, 0.0, prompt_tokens)
        options.append(Option("data-parallel", per.devices, per, fitting[0].argv, replicas=len(fitting),
                              detail="one llama-server per device: throughput adds up, each request runs at one device's speed"))
    elif len(fleet.devices) > 1:
        options.append(Option("data-parallel", (), None, why_not="the model fits whole on fewer than two devices"))

    single_stream = [o for o in options if o.fits and o.kind != "data-parallel"]
    best = max(single_stream, key=lambda o: o.decode_tok_s) if single_stream else None
    return Recommendation(model.name or model.path, tuple(options), best, _verdict(best, options), prompt_tokens)


def _verdict(best: Option | None, options: Sequence[Option]) -> str:
    if best is None:
        return "no option fits or can be predicted: " + "; ".join(f"{o.kind}: {o.why_not}" for o in options if o.why_not)
    others = [o for o in options if o.fits and o is not best and o.kind != "data-parallel"]
    where = ",".join(best.devices)
    line = f"{best.kind} split over {where}" if best.kind in ("layer", "tensor") else f"a single device ({where})"
    line = f"use {line}: {best.decode_tok_s:.0f} tok/s decode, {best.speed.prefill_tok_s:.0f} tok/s prefill"
    if others:
        line += " vs " + ", ".join(f"{o.kind} {o.decode_tok_s:.0f}" for o in others)
    if best.kind == "tensor":
        share = best.speed.decode_comm_share
        line += f" (all-reduces take {share:.0%} of a token)"
    else:
        tensor = next((o for o in options if o.kind == "tensor"), None)
        if tensor is not None and tensor.fits:
            line += f"; tensor split loses: all-reduces take {tensor.speed.decode_comm_share:.0%} of its token time"
        elif tensor is not None and tensor.why_not:
            line += f"; no tensor split: {tensor.why_not}"
    dp = next((o for o in options if o.kind == "data-parallel" and o.fits), None)
    if dp is not None and dp.total_decode_tok_s > best.decode_tok_s:
        line += f"; for many concurrent requests one replica per GPU serves {dp.total_decode_tok_s:.0f} tok/s in total"
    return line
