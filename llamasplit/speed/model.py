"""How fast a configuration decodes and prefills: per device, the bytes a token reads and the FLOPs
a prompt costs, over that device's speed, plus what crosses the links between devices.

Layer split runs its stages one after another with an activation hop between them; tensor split
runs every device at once on its slices, with two all-reduces per layer (``planner/comm.py``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from llamasplit.devices.device import Device
from llamasplit.errors import UsageError
from llamasplit.planner.comm import ACTIVATION_BYTES, ALLREDUCES_PER_LAYER, Algorithm, allreduce_seconds
from llamasplit.speed.links import LinkCost

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
