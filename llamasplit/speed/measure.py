"""``llamasplit bench``: measure the speed model's coefficients on the user's own devices.

For the host CPU (``-ngl 0``) and for each RPC worker alone (``--rpc EP -ngl 99``), llama-bench runs
the probe models (``speed/probe.py``: the same layer count at ~13 MB and ~215 MB a token, and four
times the layers at almost no bytes) and the SmolLM2 fixture. Each result is one equation of the
speed model for that device, ``seconds = bytes / bandwidth + layers x layer cost + token cost``
(decode) and ``FLOPs / rate + the same fixed costs`` (prefill), where bytes, layers and FLOPs come
from our own estimator, exactly as the planner computes them; a non-negative least-squares fit on
relative error gives the device's ``MeasuredSpeed``. With two or more workers, one more run splits
SmolLM2 over the first two: what it takes beyond the two workers' own shares is the cost of one
stage boundary between workers, stored as their link's latency.

The host's link to a measured device is inside that device's token cost (llama-bench measured it
with the host in the loop), so the speed model does not add it again (``speed/links.py``, FOLDED).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from llamasplit.devices.device import Device, Fleet, Link, LinkKind
from llamasplit.devices.measured import MeasuredSpeed
from llamasplit.errors import LaunchError

N_PROMPT = 128
"""Prompt tokens per prefill run (one ubatch; small enough for a 1-thread worker)."""
N_GEN = 32
"""Generated tokens per decode run (on average 16 cells of KV cache in use)."""
REPETITIONS = 5
"""Repetitions per llama-bench test; the fastest counts (on a shared 2-core VM, identical 2-thread runs differed 1.7x)."""


@dataclass(frozen=True)
class BenchResult:
    """One llama-bench run of one model: seconds per generated token and for the prompt."""

    model: str
    decode_s: float
    prefill_s: float | None
    """Seconds for the whole prompt; ``None`` when no prefill test was run (``n_prompt`` 0)."""
    n_prompt: int
    n_gen: int


def parse_llama_bench(text: str) -> dict[str, tuple[float, int, int]]:
    """llama-bench ``-o json`` -> ``{"pp"|"tg": (seconds per test, n_prompt, n_gen)}``: the fastest
    repetition (``samples_ns``), since on a shared machine other work only ever slows a run down;
    the average when there are no samples.

    >>> parse_llama_bench('[{"n_prompt": 128, "n_gen": 0, "avg_ns": 3000000, "samples_ns": [2000000, 4000000]},'
    ...                   ' {"n_prompt": 0, "n_gen": 32, "avg_ns": 320000000}]')
    {'pp': (0.002, 128, 0), 'tg': (0.32, 0, 32)}
    """
    out = {}
    for row in json.loads(text):
        kind = "tg" if row["n_gen"] else "pp"
        ns = min(row.get("samples_ns") or [row["avg_ns"]])
        out[kind] = (ns / 1e9, int(row["n_prompt"]), int(row["n_gen"]))
    return out


def bench_argv(
    binary: str | Path, model: str | Path, *, rpc: Sequence[str] = (), ngl: int, tensor_split: Sequence[float] | None = None,
    n_prompt: int = N_PROMPT, n_gen: int = N_GEN, repetitions: int = REPETITIONS, device: str | None = None,
) -> list[str]:
    """llama-bench's argv for one prefill and one decode test.

    >>> bench_argv("llama-bench", "m.gguf", ngl=99, device="CUDA1", repetitions=2)
    ['llama-bench', '-m', 'm.gguf', '-p', '128', '-n', '32', '-r', '2', '-ngl', '99', '-o', 'json', '-dev', 'CUDA1']
    >>> bench_argv("llama-bench", "m.gguf", ngl=99, rpc=["a:1", "b:2"], tensor_split=[1, 2.5])[-4:]
    ['--rpc', 'a:1,b:2', '-ts', '1/2.5']
    """
    argv = [str(binary), "-m", str(model), "-p", str(n_prompt), "-n", str(n_gen), "-r", str(repetitions),
            "-ngl", str(ngl), "-o", "json"]
    if device:
        argv += ["-dev", device]
    if rpc:
        argv += ["--rpc", ",".join(rpc)]
    if tensor_split:
        argv += ["-ts", "/".join(f"{x:g}" for x in tensor_split)]
    return argv


def run_llama_bench(
    binary: str | Path, model: str | Path, *, rpc: Sequence[str] = (), ngl: int, tensor_split: Sequence[float] | None = None,
    n_prompt: int = N_PROMPT, n_gen: int = N_GEN, repetitions: int = REPETITIONS, timeout_s: float = 600.0,
    device: str | None = None,
) -> BenchResult:
    """Run llama-bench once (a prefill test and a decode test) and return the averages. ``device``
    is a llama.cpp device name (``CUDA0``) that takes every offloaded layer (``-dev``)."""
    from llamasplit.runner.processes import run_to_end

    argv = bench_argv(binary, model, rpc=rpc, ngl=ngl, tensor_split=tensor_split, n_prompt=n_prompt, n_gen=n_gen,
                      repetitions=repetitions, device=device)
    done = run_to_end(argv, timeout_s=timeout_s)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise LaunchError(f"llama-bench failed (exit {done.returncode}): {last}",
                          remedy="check that every RPC worker is running and reachable")
    try:
        runs = parse_llama_bench(done.stdout)
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise LaunchError(f"llama-bench printed no JSON results: {exc}") from exc
    pp, tg = runs.get("pp"), runs["tg"]
    return BenchResult(Path(model).name, tg[0] / n_gen, pp[0] if pp else None, n_prompt, n_gen)


@dataclass(frozen=True)
class Features:
    """What the speed model says one run asks of the device: bytes per token, prompt FLOPs, layers."""

    bytes_per_token: float
    prompt_flops: float
    layers: float


def features(model, *, on_host: bool, n_prompt: int = N_PROMPT, n_gen: int = N_GEN) -> Features:
    """Our estimator's view of a llama-bench run with everything on one device (or the CPU)."""
    from llamasplit.memory.estimate import estimate
    from llamasplit.memory.settings import LlamaSettings
    from llamasplit.speed.model import layer_workload

    dev = Device("bench", "BENCH0", "bench", "RPC", 1 << 40, 1 << 40)
    devices = [] if on_host else [dev]
    s = LlamaSettings(n_ctx=n_prompt + n_gen, n_gpu_layers=0 if on_host else None, binary="llama-completion")
    est = estimate(model, devices, s, fast=True)
    work = layer_workload(model, est, [d.name for d in devices], prompt_tokens=n_prompt,
                          kv_fill=(n_gen / 2) / est.n_ctx, host=True)
    col = len(devices) if on_host else 0
    b = sum(st[col][0] for st in work.stages)
    f = sum(st[col][1] for st in work.stages)
    layers = sum(nl for st, nl in zip(work.stages, work.layers) if st[col][0] or st[col][1])
    return Features(b, f * n_prompt, layers)


def _nnls_relative(rows: Sequence[Sequence[float]], times: Sequence[float]) -> list[float]:
    """Non-negative x minimising sum((a.x / t - 1)^2), by trying every subset of active columns."""
    import numpy as np

    a = np.array([[v / t for v in r] for r, t in zip(rows, times)])
    y = np.ones(len(times))
    best, best_res = None, None
    k = a.shape[1]
    for r in range(k, 0, -1):
        for active in itertools.combinations(range(k), r):
            sol, *_ = np.linalg.lstsq(a[:, active], y, rcond=None)
            if np.any(sol < 0):
                continue
            x = np.zeros(k)
            x[list(active)] = sol
            res = float(np.sum((a @ x - y) ** 2))
            if best_res is None or res < best_res - 1e-15:
                best, best_res = x, res
    if best is None:
        raise LaunchError("the measured runs admit no non-negative fit")
    return [float(v) for v in best]


def fit_device(observations: Sequence[tuple[Features, BenchResult]], *, threads: int | None, how: str) -> MeasuredSpeed:
    """The device's MeasuredSpeed from its runs (decode: bandwidth, layer and token cost; prefill: rate)."""
    rows = [(f.bytes_per_token, f.layers, 1.0) for f, _ in observations]
    times = [r.decode_s for _, r in observations]
    inv_bw, layer_s, token_s = _nnls_relative(rows, times)
    if inv_bw <= 0:  # noise swamped the bytes (a busy machine): bandwidth alone, no fixed costs
        (inv_bw,) = _nnls_relative([(b,) for b, _, _ in rows], times)
        layer_s = token_s = 0.0
    if inv_bw <= 0:
        raise LaunchError("the decode runs do not depend on the bytes read: cannot measure a bandwidth",
                          remedy="run llamasplit bench again when the machine is idle")
    pre = [(f.prompt_flops, r.prefill_s - f.layers * layer_s - token_s) for f, r in observations
           if f.prompt_flops and r.prefill_s is not None]
    (inv_f,) = _nnls_relative([(fl,) for fl, _ in pre], [max(t, 1e-9) for _, t in pre])
    return MeasuredSpeed(decode_gb_s=round(1 / inv_bw / 1e9, 4), prefill_gflops=round(1 / inv_f / 1e9, 3),
                         layer_us=round(layer_s * 1e6, 2), token_us=round(token_s * 1e6, 1), threads=threads, how=how)


def prompt_tokens(model_name: str) -> int:
    """The wide probe only decodes (it is there for the bandwidth; its prefill would take a
    one-thread CPU worker half a minute)."""
    return 0 if model_name == "probe-wide" else N_PROMPT


def bench_models(progress: Callable[[str], None]) -> tuple[list[tuple[str, Path]], list[tuple[str, Path]], tuple[str, Path]]:
    """(the Q4_0 probes, one probe per other weight type, the SmolLM2 fixture for the hop), written
    into or fetched to the cache on first use."""
    from llamasplit.realmodels import fetch_model
    from llamasplit.speed.probe import PROBES, TYPE_PROBES, probe_path

    main, typed = [], []
    for shape in PROBES:
        progress(f"probe model {shape.name}")
        main.append((shape.name, probe_path(shape)))
    for shape in TYPE_PROBES:
        progress(f"probe model {shape.name}")
        typed.append((shape.qtype, probe_path(shape)))
    return main, typed, ("smollm2", Path(fetch_model("smollm2")))


def _wide_prefill(m: MeasuredSpeed, f: Features, r: BenchResult) -> MeasuredSpeed:
    """The prefill rate of the 1024-wide reference probe instead of the narrow probes' fit: a
    matrix multiplication's rate grows with its width (here the 256-wide probes' rate made the
    1536-wide check model's prefill 20-30 % slower than measured), and the models people run are
    wider still; the fixed costs stay the narrow probes'.

    >>> m = MeasuredSpeed(decode_gb_s=10.0, prefill_gflops=50.0, layer_us=10.0, token_us=100.0)
    >>> _wide_prefill(m, Features(50e6, 9e9, 8), BenchResult("ref", 0.01, 0.1 + 180e-6, 128, 32)).prefill_gflops
    90.0
    """
    if r.prefill_s is None or not f.prompt_flops:
        return m
    seconds = r.prefill_s - f.layers * m.layer_us * 1e-6 - m.token_us * 1e-6
    if seconds <= 0:
        return m
    return dataclasses.replace(m, prefill_gflops=round(f.prompt_flops / seconds / 1e9, 3))


def _typed_rates(m: MeasuredSpeed, runs: Sequence[tuple[str, Features, BenchResult]],
                 reference: tuple[Features, BenchResult] | None = None) -> dict[str, list[float]]:
    """Per weight type: its decode bandwidth and prefill rate. With ``reference`` (the same probe
    shape in Q4_0, the main probes' type): the main rates scaled by the type's speed over the
    reference's, so the shape's own effects cancel (``probe.TYPE_REFERENCE``); without it, the rates
    the probe implies given the device's fixed costs.

    >>> m = MeasuredSpeed(decode_gb_s=10.0, prefill_gflops=100.0, layer_us=0.0, token_us=0.0)
    >>> ref = (Features(50e6, 10e9, 8), BenchResult("ref", 50e6 / 16e9, 10e9 / 80e9, 128, 32))
    >>> q41 = ("Q4_1", Features(55e6, 10e9, 8), BenchResult("q41", 55e6 / 16e9, 10e9 / 40e9, 128, 32))
    >>> _typed_rates(m, [q41], ref)  # as fast a read as Q4_0 on that shape, half its prefill rate
    {'Q4_1': [10.0, 50.0]}
    >>> _typed_rates(m, [q41])
    {'Q4_1': [16.0, 40.0]}
    """
    def implied(f: Features, r: BenchResult) -> tuple[float, float] | None:
        fixed = f.layers * m.layer_us * 1e-6 + m.token_us * 1e-6
        dec = r.decode_s - fixed
        pre = (r.prefill_s - fixed) if r.prefill_s is not None else None
        if dec <= 0 or not pre or pre <= 0:
            return None
        return f.bytes_per_token / dec, f.prompt_flops / pre

    base = implied(*reference) if reference is not None else None
    out = {}
    for qtype, f, r in runs:
        rates = implied(f, r)
        if rates is None:
            continue
        if base is not None:
            bw, fl = m.decode_gb_s * 1e9 * rates[0] / base[0], m.prefill_gflops * 1e9 * rates[1] / base[1]
        else:
            bw, fl = rates
        out[qtype] = [round(bw / 1e9, 4), round(fl / 1e9, 3)]
    return out


def measure_fleet(
    fleet: Fleet, *, binary: str | Path, progress: Callable[[str], None] = lambda _: None, host: bool = True,
    hop: bool = True, models: Sequence[tuple[str, Path]] | None = None,
    type_models: Sequence[tuple[str, Path]] | None = None, hop_model: tuple[str, Path] | None = None,
    log: list | None = None, type_reference: Path | None = None,
) -> Fleet:
    """``fleet`` with a MeasuredSpeed on the host and on every RPC worker, and the measured
    worker-to-worker hop on their links. ``models`` (the Q4_0 probes), ``type_models`` ((weight
    type, probe)) and ``hop_model`` replace ``bench_models()``'s. ``log`` collects (device, model,
    Features, BenchResult) of every run. ``type_reference`` is the type probes' shape in Q4_0
    (default ``probe.TYPE_REFERENCE``), run once per device when there are type probes."""
    from llamasplit.model.profile import read_model
    from llamasplit.speed.probe import TYPE_REFERENCE, probe_path

    if models is None or type_models is None or hop_model is None:
        d_main, d_typed, d_hop = bench_models(progress)
        models = d_main if models is None else models
        type_models = d_typed if type_models is None else type_models
        hop_model = d_hop if hop_model is None else hop_model
    main = [(name, path, read_model(path)) for name, path in models]
    typed = [(q, path, read_model(path)) for q, path in type_models]
    ref_model = None
    if typed:
        ref_path = type_reference or probe_path(TYPE_REFERENCE)
        ref_model = (ref_path, read_model(ref_path))
    when = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%MZ")
    how = (f"llama-bench -p {N_PROMPT} -n {N_GEN} -r {REPETITIONS} on {', '.join(n for n, _, _ in main)}"
           + (f" and {', '.join(q for q, _, _ in typed)} probes (relative to Q4_0 on their shape)" if typed else "")
           + f", {when}")

    def measure(label: str, on_host: bool, rpc: list[str], threads: int | None, dev: str | None = None) -> MeasuredSpeed:
        obs = []
        ngl = 0 if on_host else 99
        for name, path, m in main:
            progress(f"{label}: {name}")
            n_prompt = prompt_tokens(name)
            obs.append((features(m, on_host=on_host, n_prompt=n_prompt or N_PROMPT),
                        run_llama_bench(binary, path, rpc=rpc, ngl=ngl, n_prompt=n_prompt, device=dev)))
        speed = fit_device(obs, threads=threads, how=how)
        runs = []
        for q, path, m in typed:
            progress(f"{label}: {q} probe")
            runs.append((q, features(m, on_host=on_host), run_llama_bench(binary, path, rpc=rpc, ngl=ngl, device=dev)))
        reference = None
        if runs and ref_model is not None:
            progress(f"{label}: Q4_0 reference probe")
            reference = (features(ref_model[1], on_host=on_host), run_llama_bench(binary, ref_model[0], rpc=rpc, ngl=ngl,
                                                                                   device=dev))
        if reference is not None:
            speed = _wide_prefill(speed, *reference)
        if runs:
            speed = dataclasses.replace(speed, types=_typed_rates(speed, runs, reference) or None)
        if log is not None:
            log.extend((label, n, f, r) for (n, _, _), (f, r) in zip(main, obs))
            log.extend((label, f"probe-{q}", f, r) for q, f, r in runs)
        return speed

    out_host = fleet.host
    if host:
        out_host = dataclasses.replace(fleet.host, measured=measure("CPU", True, [], fleet.host.cpu_cores))
    devices = list(fleet.devices)
    for i, d in enumerate(devices):
        if d.backend.upper() == "CUDA" and d.cuda_index is not None:
            # a local GPU alone: llama-bench -dev CUDAn -ngl 99 (CUDA's own device order, as cuda_index holds it)
            devices[i] = dataclasses.replace(d, measured=measure(d.name, False, [], None, dev=f"CUDA{d.cuda_index}"))
    endpoints = {}
    for i, d in enumerate(devices):
        if d.backend.upper() != "RPC":
            continue
        ep = d.id.split(":", 1)[1].split("#")[0]
        if ep in endpoints:
            continue  # a worker with several devices: llama-bench offloads to all of them
        endpoints[ep] = i
        devices[i] = dataclasses.replace(d, measured=measure(d.name, False, [ep], None))
    out = dataclasses.replace(fleet, devices=tuple(devices), host=out_host)
    eps = list(endpoints)
    if hop and len(eps) >= 2:
        name, path = hop_model
        out = _measure_hop(out, eps[:2], [devices[endpoints[e]] for e in eps[:2]], (name, path, read_model(path)),
                           binary, progress)
    return out


def _measure_hop(fleet: Fleet, eps: list[str], pair: list[Device], model, binary, progress) -> Fleet:
    """SmolLM2 split evenly over two workers: its time beyond the two shares is one boundary's cost."""
    from llamasplit.memory.estimate import estimate
    from llamasplit.memory.settings import LlamaSettings
    from llamasplit.speed.model import layer_split_speed

    name, path, m = model
    progress(f"hop {pair[0].name} -> {pair[1].name}: {name}")
    run = run_llama_bench(binary, path, rpc=eps, ngl=99, tensor_split=(1.0, 1.0))
    zero = Link(pair[0].id, pair[1].id, LinkKind.UNKNOWN, latency_us=0.0)
    trial = Fleet(devices=tuple(pair), host=fleet.host, links=(zero,))
    s = LlamaSettings(n_ctx=N_PROMPT + N_GEN, tensor_split=(1.0, 1.0), binary="llama-completion")
    est = estimate(m, list(pair), s, fast=True)
    sp = layer_split_speed(m, trial, list(pair), est, prompt_tokens=N_PROMPT, kv_fill=(N_GEN / 2) / est.n_ctx)
    hop_us = max(0.0, (run.decode_s - 1 / sp.decode_tok_s) * 1e6)
    progress(f"hop: {hop_us:.0f} us per token")
    rpc_ids = [d.id for d in fleet.devices if d.backend.upper() == "RPC"]
    links = [link for link in fleet.links if not (link.a in rpc_ids and link.b in rpc_ids)]
    for i, a in enumerate(rpc_ids):
        for b in rpc_ids[i + 1:]:
            old = fleet.link(a, b)
            kind = old.kind if old is not None else LinkKind.UNKNOWN
            links.append(Link(a, b, kind, latency_us=round(hop_us, 1)))
    return dataclasses.replace(fleet, links=tuple(links))


def host_fleet() -> Fleet:
    """This machine with no accelerator: its CPU and RAM."""
    from llamasplit.devices.nvml import local_host

    return Fleet(devices=(), host=local_host(), source="local")


__all__ = ["BenchResult", "Features", "features", "fit_device", "host_fleet", "measure_fleet", "parse_llama_bench", "run_llama_bench"]


def in_sample(m: MeasuredSpeed, f: Features, r: BenchResult) -> tuple[float, float | None]:
    """The fitted model's decode and prefill seconds for one of the bench's own runs."""
    fixed = f.layers * m.layer_us * 1e-6 + m.token_us * 1e-6
    dec = f.bytes_per_token / (m.decode_gb_s * 1e9) + fixed
    pre = f.prompt_flops / (m.prefill_gflops * 1e9) + fixed if r.prefill_s is not None else None
    return dec, pre  # the main (Q4_0) rates: a typed probe's own rates reproduce it exactly
