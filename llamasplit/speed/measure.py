"""``llamasplit bench``: measure the speed model's coefficients on the user's own devices.

For the host CPU (``-ngl 0``) and for each RPC worker alone (``--rpc EP -ngl 99``), llama-bench runs
the probe models (``speed/probe.py``: Q4_0 at ~13 MB and ~215 MB a token with the same layer count,
four times the layers at almost no bytes, a 262,144-row vocabulary in Q8_0, and one probe per
other common weight type with a Q4_0 reference of the same shape). Each result is one equation of
the speed model for that device, ``seconds = bytes / bandwidth + layers x layer cost + plain-kernel
matrix rows x row cost + token cost`` (decode) and ``FLOPs / rate + rows x prompt tokens x row cost
+ the output matrix read once + weights / read rate + the same fixed costs`` (prefill; the wide
probe's 64- and 16-token prompts in one run give the once-per-ubatch read of the weights), where bytes, layers, rows and
FLOPs come from our own estimator, exactly as the planner computes them (the host's repacked
weights, ``memory.repack``, cost no per-row time). A non-negative least-squares fit on relative
error over the Q4_0 and Q8_0 probes gives the device's ``MeasuredSpeed``; every other type's
rates are Q4_0's times its probe's speed over the reference's; a type with no tiled prompt kernel
(Q4_1, the K-quants) has a narrow probe too, whose prompt against the type probe's gives the type's
own cost per row and prompt token. With two or more workers, one
more run splits SmolLM2 over the first two: what it takes beyond the two workers' own shares is
the cost of one stage boundary between workers, stored as their link's latency.

The host's link to a measured device is inside that device's token cost (llama-bench measured it
with the host in the loop), so the speed model does not add it again (``speed/links.py``, FOLDED).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
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
WIDE_PROMPT, SHORT_PROMPT = 64, 16
"""The wide probe's two prompts, in one llama-bench run (``-p 64,16``): the once-per-ubatch read
of its 215 MB of weights (``MeasuredSpeed.prefill_read_gb_s``) is what the 16-token prompt takes
beyond a quarter of the 64-token one (``read_rate``). One run, because this VM's speed drifts by
1.3-1.5x over minutes while a run's repetitions agree within a few per cent: measured in separate
runs, the read rate took the drift with it. Here a -t 2 RPC worker took 1.15-1.45x longer per
token over 16 tokens than over 64 on the wide probe, the 250 MB check model and the Q4_0
reference; the host, flat (its repacked kernels hide the read). 64 rather than 128 tokens: a
one-thread worker takes half a minute for the wide probe's 10 repetitions of 128."""
N_UBATCH = 512
"""llama-bench's default ubatch (``-ub 512``), so every probe's prompt is one ubatch."""
REPETITIONS = 10
"""Repetitions per llama-bench test; the fastest counts. On this shared 2-core VM the fastest of 5
back-to-back repetitions of one probe moved by +-15 % from one llama-bench run to the next, a second
apart (fast moments recur every few seconds); the fastest of 10 spans more of them."""


PASSES = 2
"""Passes over every device's probes; each probe's fastest run over all passes counts. One pass's
fitted type rates moved by up to 30 % from one bench to the next here, since a probe and its
reference, measured seconds apart, could fall into different slow spells of the machine. A pass
covers all devices before the next begins, so a probe's passes are minutes apart: the same
llama-bench run (SmolLM2, the fastest of 10 repetitions), repeated for 6 minutes on this idle VM,
ranged over 1.35-1.5x, in spells of a minute or more."""


@dataclass(frozen=True)
class BenchResult:
    """One llama-bench run of one model: seconds per generated token and for the prompt."""

    model: str
    decode_s: float
    prefill_s: float | None
    """Seconds for the whole prompt; ``None`` when no prefill test was run (``n_prompt`` 0)."""
    n_prompt: int
    n_gen: int
    short_prefill_s: float | None = None
    """Seconds for a ``SHORT_PROMPT``-token prompt in the same llama-bench run (``None``: not run)."""


def fastest(a: BenchResult, b: BenchResult) -> BenchResult:
    """The faster decode and the faster prefill of two runs of the same test. The short prompt
    stays with its run's long one (their ratio is what counts, ``read_rate``).

    >>> fastest(BenchResult("m", 0.02, 0.5, 128, 32), BenchResult("m", 0.01, 0.7, 128, 32))
    BenchResult(model='m', decode_s=0.01, prefill_s=0.5, n_prompt=128, n_gen=32, short_prefill_s=None)
    """
    pres = [x for x in (a, b) if x.prefill_s is not None]
    best = min(pres, key=lambda x: x.prefill_s) if pres else a
    return dataclasses.replace(a, decode_s=min(a.decode_s, b.decode_s), prefill_s=best.prefill_s,
                               short_prefill_s=best.short_prefill_s)


def parse_llama_bench(text: str) -> dict[str, tuple[float, int, int]]:
    """llama-bench ``-o json`` -> ``{"pp"|"tg": (seconds per test, n_prompt, n_gen)}``: the fastest
    repetition (``samples_ns``), since on a shared machine other work only ever slows a run down;
    the average when there are no samples.

    Every prompt test is also keyed ``pp<n>`` (``-p 64,16``: ``pp64`` and ``pp16``; ``pp`` is the first).

    >>> parse_llama_bench('[{"n_prompt": 128, "n_gen": 0, "avg_ns": 3000000, "samples_ns": [2000000, 4000000]},'
    ...                   ' {"n_prompt": 0, "n_gen": 32, "avg_ns": 320000000}]')
    {'pp': (0.002, 128, 0), 'pp128': (0.002, 128, 0), 'tg': (0.32, 0, 32)}
    """
    out = {}
    for row in json.loads(text):
        ns = min(row.get("samples_ns") or [row["avg_ns"]])
        value = (ns / 1e9, int(row["n_prompt"]), int(row["n_gen"]))
        if row["n_gen"]:
            out["tg"] = value
        else:
            out.setdefault("pp", value)
            out[f"pp{int(row['n_prompt'])}"] = value
    return out


def bench_argv(
    binary: str | Path, model: str | Path, *, rpc: Sequence[str] = (), ngl: int, tensor_split: Sequence[float] | None = None,
    n_prompt: int = N_PROMPT, n_gen: int = N_GEN, repetitions: int = REPETITIONS, device: str | None = None,
    short_prompt: int | None = None,
) -> list[str]:
    """llama-bench's argv for one prefill and one decode test.

    >>> bench_argv("llama-bench", "m.gguf", ngl=99, device="CUDA1", repetitions=2)
    ['llama-bench', '-m', 'm.gguf', '-p', '128', '-n', '32', '-r', '2', '-ngl', '99', '-o', 'json', '-dev', 'CUDA1']
    >>> bench_argv("llama-bench", "m.gguf", ngl=99, rpc=["a:1", "b:2"], tensor_split=[1, 2.5])[-4:]
    ['--rpc', 'a:1,b:2', '-ts', '1/2.5']
    """
    prompts = f"{n_prompt},{short_prompt}" if short_prompt else str(n_prompt)
    argv = [str(binary), "-m", str(model), "-p", prompts, "-n", str(n_gen), "-r", str(repetitions),
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
    device: str | None = None, short_prompt: int | None = None,
) -> BenchResult:
    """Run llama-bench once (a prefill test and a decode test) and return the averages. ``device``
    is a llama.cpp device name (``CUDA0``) that takes every offloaded layer (``-dev``)."""
    from llamasplit.runner.processes import run_to_end

    argv = bench_argv(binary, model, rpc=rpc, ngl=ngl, tensor_split=tensor_split, n_prompt=n_prompt, n_gen=n_gen,
                      repetitions=repetitions, device=device, short_prompt=short_prompt)
    done = run_to_end(argv, timeout_s=timeout_s)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise LaunchError(f"llama-bench failed (exit {done.returncode}): {last}",
                          remedy="check that every RPC worker is running and reachable")
    try:
        runs = parse_llama_bench(done.stdout)
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise LaunchError(f"llama-bench printed no JSON results: {exc}") from exc
    pp, tg = runs.get(f"pp{n_prompt}"), runs["tg"]
    short = runs.get(f"pp{short_prompt}") if short_prompt else None
    return BenchResult(Path(model).name, tg[0] / n_gen, pp[0] if pp else None, n_prompt, n_gen, short[0] if short else None)


@dataclass(frozen=True)
class Features:
    """What the speed model says one run asks of the device: bytes per token, prompt FLOPs, layers,
    matrix rows (``speed.model.StageRows``)."""

    bytes_per_token: float
    prompt_flops: float
    layers: float
    rows: float = 0.0
    """Matrix rows a decoded token computes."""
    prompt_rows: float = 0.0
    """Matrix rows the whole prompt computes (rows per prompt token x prompt tokens)."""
    output_bytes: float = 0.0
    """The output matrix, read once by the prompt's last token."""
    output_rows: float = 0.0
    joint_bytes: float = 0.0
    """Of ``bytes_per_token``, the bytes of ``JOINT_TYPE`` weights (fitted at their own rate)."""
    joint_flops: float = 0.0
    """Of ``prompt_flops``, the FLOPs of ``JOINT_TYPE`` weights."""
    output_type: str = ""
    ubatch_bytes: float = 0.0
    """Weight bytes the prompt's ubatches read once each (``MeasuredSpeed.prefill_read_gb_s``; not
    the output matrix, whose read ``output_bytes`` already is)."""

    def prefill_fixed_s(self, m: MeasuredSpeed, row_ns: float | None = None) -> float:
        """The prompt's seconds that do not depend on the matmul rate: fixed costs, the per-row
        cost of every token's dot products (``row_ns`` each, default ``m.prefill_row_ns``: a
        type's own, or 0 for none), the output matrix read once, the weights' read."""
        row_ns = m.prefill_row_ns if row_ns is None else row_ns
        return (self.layers * m.layer_us * 1e-6 + m.token_us * 1e-6 + self.prompt_rows * row_ns * 1e-9
                + self.output_bytes / (_decode_rate(m, self.output_type) * 1e9) + self.output_rows * m.row_ns * 1e-9
                + (self.ubatch_bytes / (m.prefill_read_gb_s * 1e9) if m.prefill_read_gb_s else 0.0))

    def decode_fixed_s(self, m: MeasuredSpeed) -> float:
        """A decoded token's seconds that do not depend on the bandwidth."""
        return self.layers * m.layer_us * 1e-6 + m.token_us * 1e-6 + self.rows * m.row_ns * 1e-9


JOINT_TYPE = "Q8_0"
"""The weight type fitted together with the Q4_0 probes: the vocabulary probe holds it, so that its
rows run on a plain kernel on every x86 device (the host repacks Q4_0 into interleaved kernels
with no per-row cost to measure, never Q8_0: ggml-cpu/repack.cpp repacks Q8_0 on ARM only)."""


def _decode_rate(m: MeasuredSpeed, ggml_type: str) -> float:
    """GB/s a decoded token reads ``ggml_type`` weights at on the measured device."""
    rate = (m.types or {}).get(ggml_type)
    return rate[0] if rate and rate[0] > 0 else m.decode_gb_s


def features(model, *, on_host: bool, n_prompt: int = N_PROMPT, n_gen: int = N_GEN, cpu=None) -> Features:
    """Our estimator's view of a llama-bench run with everything on one device (or the CPU);
    ``cpu``: the host's CPU features, for which of its weights llama.cpp repacks."""
    from llamasplit.memory.estimate import estimate
    from llamasplit.memory.settings import LlamaSettings
    from llamasplit.speed.model import layer_workload

    dev = Device("bench", "BENCH0", "bench", "RPC", 1 << 40, 1 << 40)
    devices = [] if on_host else [dev]
    s = LlamaSettings(n_ctx=n_prompt + n_gen, n_gpu_layers=0 if on_host else None, binary="llama-completion")
    est = estimate(model, devices, s, fast=True, cpu=cpu if on_host else None)
    work = layer_workload(model, est, [d.name for d in devices], prompt_tokens=n_prompt,
                          kv_fill=(n_gen / 2) / est.n_ctx, host=True, cpu=cpu if on_host else None)
    col = len(devices) if on_host else 0
    mine = [i for i, st in enumerate(work.stages) if st[col][0] or st[col][1]]
    b = sum(work.stages[i][col][0] for i in mine)
    f = sum(work.stages[i][col][1] for i in mine)
    layers = sum(work.layers[i] for i in mine)
    r = [work.rows[i] for i in mine] if work.rows else []
    joint = [(jb, jf) for name, jb, jf in work.type_mix[col] if name == JOINT_TYPE] if work.type_mix else []
    return Features(b, f * n_prompt, layers, sum(x.decode for x in r), sum(x.prefill for x in r) * n_prompt,
                    sum(x.output_bytes for x in r), sum(x.output_rows for x in r),
                    sum(jb for jb, _ in joint), sum(jf for _, jf in joint) * n_prompt,
                    next((x.output_type for x in r if x.output_type), ""),
                    max(0.0, b - sum(x.output_bytes for x in r)) * math.ceil(n_prompt / N_UBATCH))


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


def fit_device(observations: Sequence[tuple[Features, BenchResult]], *, threads: int | None, how: str,
               read_pair: tuple[Features, Features, BenchResult] | None = None) -> MeasuredSpeed:
    """The device's MeasuredSpeed from its runs of the Q4_0 probes and the ``JOINT_TYPE`` ones.

    Decode: one non-negative least-squares fit (relative error) of the Q4_0 and the joint type's
    bandwidths and the per-layer, per-row and per-token costs. Prefill, given those fixed costs:
    the two types' matmul rates and the per-row cost per prompt token (probes of the same rows and
    other widths, or the same width and other rows, separate them). The joint type's rates go to
    ``types``; without joint-type runs its columns are zero and it gets none. ``read_pair`` (the
    wide probe's features at its two prompts and its run) gives the weights' read per ubatch
    (``read_rate``), charged to every prompt before the prefill fit; without it, none."""
    rows = [(f.bytes_per_token - f.joint_bytes, f.joint_bytes, f.layers, f.rows, 1.0) for f, _ in observations]
    times = [r.decode_s for _, r in observations]
    inv_bw, inv_bw_j, layer_s, row_s, token_s = _nnls_relative(rows, times)
    if inv_bw <= 0:  # noise swamped the bytes (a busy machine): bandwidth alone, no fixed costs
        (inv_bw,) = _nnls_relative([(b + j,) for b, j, _, _, _ in rows], times)
        inv_bw_j, layer_s, row_s, token_s = inv_bw, 0.0, 0.0, 0.0
    if inv_bw <= 0:
        raise LaunchError("the decode runs do not depend on the bytes read: cannot measure a bandwidth",
                          remedy="run llamasplit bench again when the machine is idle")
    if inv_bw_j <= 0:
        inv_bw_j = inv_bw
    types = {JOINT_TYPE: [1 / inv_bw_j / 1e9, 1.0]}
    dec = MeasuredSpeed(decode_gb_s=1 / inv_bw / 1e9, prefill_gflops=1.0, layer_us=layer_s * 1e6, token_us=token_s * 1e6,
                        row_ns=row_s * 1e9, types=types)
    read_s = (read_rate(*read_pair, dec) if read_pair is not None else None) or 0.0
    pre = [((f.prompt_flops - f.joint_flops, f.joint_flops, f.prompt_rows),
            r.prefill_s - f.prefill_fixed_s(dec) - f.ubatch_bytes * read_s)
           for f, r in observations if f.prompt_flops and r.prefill_s is not None]
    cols = [c for c, _ in pre]
    ts = [max(t, 1e-9) for _, t in pre]
    inv_f, inv_f_j, prow_s = _nnls_relative(cols, ts)
    if inv_f <= 0:
        (inv_f,) = _nnls_relative([(a + b,) for a, b, _ in cols], ts)
        inv_f_j, prow_s = inv_f, 0.0
    if inv_f_j <= 0:
        inv_f_j = inv_f
    joint = any(f.joint_bytes for f, _ in observations)
    return MeasuredSpeed(decode_gb_s=round(1 / inv_bw / 1e9, 4), prefill_gflops=round(1 / inv_f / 1e9, 3),
                         layer_us=round(layer_s * 1e6, 2), token_us=round(token_s * 1e6, 1), row_ns=round(row_s * 1e9, 3),
                         prefill_row_ns=round(prow_s * 1e9, 3), threads=threads, how=how,
                         prefill_read_gb_s=round(1 / read_s / 1e9, 4) if read_s > 0 else None,
                         types={JOINT_TYPE: [round(1 / inv_bw_j / 1e9, 4), round(1 / inv_f_j / 1e9, 3)]} if joint else None)


def prompt_tokens(model_name: str) -> int:
    """The wide probe's prompt is ``WIDE_PROMPT`` (with ``SHORT_PROMPT`` in the same run); every
    other probe's, ``N_PROMPT``."""
    return WIDE_PROMPT if model_name == "probe-wide" else N_PROMPT


def read_rate(long: Features, short: Features, r: BenchResult, m: MeasuredSpeed) -> float | None:
    """Seconds per byte of the weights' once-per-ubatch read, from one run's two prompts of one
    model (``r.prefill_s`` over ``long``'s tokens, ``r.short_prefill_s`` over ``short``'s): the
    per-token work scales with the FLOPs, so what the short prompt takes beyond its FLOPs' share of
    the long one is per ubatch; less the fixed costs ``m`` already charges there (layers, token,
    output), over the weight bytes. ``None`` when the run has no short prompt; never below 0.

    >>> f = lambda n: Features(2e8, 1e9 * n, 24, prompt_rows=1e5 * n, ubatch_bytes=2e8)
    >>> m = MeasuredSpeed(decode_gb_s=10.0, prefill_gflops=100.0, layer_us=10.0)
    >>> t = lambda n: 1e9 * n / 100e9 + 24 * 10e-6 + 2e8 / 20e9  # 100 GFLOP/s; weights read at 20 GB/s
    >>> round(1 / read_rate(f(64), f(16), BenchResult("w", 0.0, t(64), 64, 32, t(16)), m) / 1e9, 6)
    20.0
    """
    if r.prefill_s is None or r.short_prefill_s is None or not long.ubatch_bytes or long.prompt_flops <= short.prompt_flops:
        return None
    t_long = r.prefill_s - long.prefill_fixed_s(m, row_ns=0.0)
    t_short = r.short_prefill_s - short.prefill_fixed_s(m, row_ns=0.0)
    per_ubatch = t_short - (t_long - t_short) * short.prompt_flops / (long.prompt_flops - short.prompt_flops)
    return max(0.0, per_ubatch) / long.ubatch_bytes


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


def narrow_models(types: Sequence[str], progress: Callable[[str], None]) -> list[tuple[str, Path]]:
    """(weight type, its narrow probe) for those of ``types`` that have one (``NARROW_TYPE_PROBES``)."""
    from llamasplit.speed.probe import NARROW_TYPE_PROBES, probe_path

    out = []
    for shape in NARROW_TYPE_PROBES:
        if shape.qtype in types:
            progress(f"probe model {shape.name}")
            out.append((shape.qtype, probe_path(shape)))
    return out


def _typed_rates(m: MeasuredSpeed, runs: Sequence[tuple[str, Features, BenchResult]],
                 reference: tuple[Features, BenchResult] | None = None,
                 narrow: dict[str, tuple[Features, BenchResult]] | None = None) -> dict[str, list[float]]:
    """Per weight type: its decode bandwidth and prefill rate. With ``reference`` (the same probe
    shape in Q4_0, the main probes' type): the main rates scaled by the type's speed over the
    reference's, so the shape's own effects cancel (``probe.TYPE_REFERENCE``); without it, the rates
    the probe implies given the device's fixed costs.

    With ``narrow`` (the type's narrow probe, ``probe.NARROW_TYPE_PROBES``): the two probes'
    prompts, ``seconds = FLOPs / rate + rows x tokens x c`` each once the fixed costs are taken
    off, give the type's own per-row cost ``c`` (ns, a third element; never below 0). The rate
    is then the one that keeps the type probe's own prediction: what the reference method gives
    its shape, with ``c`` in place of the device's ``prefill_row_ns``.

    >>> m = MeasuredSpeed(decode_gb_s=10.0, prefill_gflops=100.0, layer_us=0.0, token_us=0.0)
    >>> ref = (Features(50e6, 10e9, 8), BenchResult("ref", 50e6 / 16e9, 10e9 / 80e9, 128, 32))
    >>> q41 = ("Q4_1", Features(55e6, 10e9, 8), BenchResult("q41", 55e6 / 16e9, 10e9 / 40e9, 128, 32))
    >>> _typed_rates(m, [q41], ref)  # as fast a read as Q4_0 on that shape, half its prefill rate
    {'Q4_1': [10.0, 50.0]}
    >>> _typed_rates(m, [q41])
    {'Q4_1': [16.0, 40.0]}
    >>> wide = Features(55e6, 10e9, 8, prompt_rows=1e7)  # 10 GFLOP at 50 GFLOP/s + 1e7 rows at 5 ns
    >>> thin = Features(15e6, 2e9, 24, prompt_rows=1e7)
    >>> t = lambda f: BenchResult("q41", 55e6 / 16e9, f.prompt_flops / 50e9 + f.prompt_rows * 5e-9, 128, 32)
    >>> _typed_rates(m, [("Q4_1", wide, t(wide))], narrow={"Q4_1": (thin, t(thin))})
    {'Q4_1': [16.0, 50.0, 5.0]}
    """
    def implied(f: Features, r: BenchResult) -> tuple[float, float] | None:
        dec = r.decode_s - f.decode_fixed_s(m)
        pre = (r.prefill_s - f.prefill_fixed_s(m)) if r.prefill_s is not None else None
        if dec <= 0 or not pre or pre <= 0:
            return None
        return f.bytes_per_token / dec, f.prompt_flops / pre

    def row_cost(wide: tuple[Features, BenchResult], thin: tuple[Features, BenchResult]) -> float | None:
        """Seconds per row and prompt token from the two prompts (the rows' fixed costs off)."""
        (fw, rw), (fn, rn) = wide, thin
        if rw.prefill_s is None or rn.prefill_s is None:
            return None
        pw, pn = (r.prefill_s - f.prefill_fixed_s(m, row_ns=0.0) for f, r in (wide, thin))
        det = fw.prompt_flops * fn.prompt_rows - fn.prompt_flops * fw.prompt_rows
        if abs(det) <= 1e-9 * fw.prompt_flops * fn.prompt_rows:
            return None  # the two probes do not separate rate from rows
        return max(0.0, (fw.prompt_flops * pn - fn.prompt_flops * pw) / det)

    base = implied(*reference) if reference is not None else None
    out = {}
    for qtype, f, r in runs:
        if qtype in (m.types or {}):
            continue  # fitted with the Q4_0 probes
        rates = implied(f, r)
        if rates is None:
            continue
        if base is not None:
            bw, fl = m.decode_gb_s * 1e9 * rates[0] / base[0], m.prefill_gflops * 1e9 * rates[1] / base[1]
        else:
            bw, fl = rates
        out[qtype] = [round(bw / 1e9, 4), round(fl / 1e9, 3)]
        c = row_cost((f, r), narrow[qtype]) if narrow and qtype in narrow else None
        if c is not None and f.prompt_flops:
            inv = 1 / fl + f.prompt_rows * (m.prefill_row_ns * 1e-9 - c) / f.prompt_flops
            if inv > 0:  # else the rows would take more than the whole prompt: keep the plain rate
                out[qtype] = [round(bw / 1e9, 4), round(1 / inv / 1e9, 3), round(c * 1e9, 3)]
    return out


def measure_fleet(
    fleet: Fleet, *, binary: str | Path, progress: Callable[[str], None] = lambda _: None, host: bool = True,
    hop: bool = True, models: Sequence[tuple[str, Path]] | None = None,
    type_models: Sequence[tuple[str, Path]] | None = None, hop_model: tuple[str, Path] | None = None,
    log: list | None = None, type_reference: Path | None = None, passes: int = PASSES,
    narrow: Sequence[tuple[str, Path]] | None = None,
) -> Fleet:
    """``fleet`` with a MeasuredSpeed on the host and on every RPC worker, and the measured
    worker-to-worker hop on their links. ``models`` (the Q4_0 probes), ``type_models`` ((weight
    type, probe)) and ``hop_model`` replace ``bench_models()``'s. ``log`` collects (device, model,
    Features, BenchResult) of every run. ``type_reference`` is the type probes' shape in Q4_0
    (default ``probe.TYPE_REFERENCE``), run once per device when there are type probes. ``narrow``:
    (weight type, narrow probe) pairs for the types' own per-row prompt costs (default: the
    ``NARROW_TYPE_PROBES`` of the types in ``type_models``)."""
    from llamasplit.model.profile import read_model
    from llamasplit.speed.model import host_cpu
    from llamasplit.speed.probe import TYPE_REFERENCE, probe_path

    if models is None or type_models is None or hop_model is None:
        d_main, d_typed, d_hop = bench_models(progress)
        models = d_main if models is None else models
        type_models = d_typed if type_models is None else type_models
        hop_model = d_hop if hop_model is None else hop_model
    main = [(name, path, read_model(path)) for name, path in models]
    typed = [(q, path, read_model(path)) for q, path in type_models]
    if narrow is None:
        narrow = narrow_models([q for q, _, _ in typed], progress)
    thin = [(q, path, read_model(path)) for q, path in narrow if any(q == t for t, _, _ in typed)]
    ref_model = None
    if typed:
        ref_path = type_reference or probe_path(TYPE_REFERENCE)
        ref_model = (ref_path, read_model(ref_path))
    when = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%MZ")
    how = (f"llama-bench -p {N_PROMPT} (probe-wide {WIDE_PROMPT},{SHORT_PROMPT}) -n {N_GEN} -r {REPETITIONS}, fastest of {passes} passes, "
           f"on {', '.join(n for n, _, _ in main)}"
           + (f" and {', '.join(q for q, _, _ in typed)} probes (relative to Q4_0 on their shape)" if typed else "")
           + f", {when}")

    jobs = [(name, path, prompt_tokens(name), SHORT_PROMPT if name == "probe-wide" else None) for name, path, _ in main]
    if typed and ref_model is not None:  # Q4_0 as well: one more equation for the fit
        jobs.append(("Q4_0 reference probe", ref_model[0], N_PROMPT, None))
    jobs += [(f"{q} probe", path, N_PROMPT, None) for q, path, _ in typed]
    jobs += [(f"{q} narrow probe", path, N_PROMPT, None) for q, path, _ in thin]

    def fit(label: str, on_host: bool, threads: int | None, done: dict[str, BenchResult]) -> MeasuredSpeed:
        cpu = host_cpu(fleet.host) if on_host else None
        obs = [(features(m, on_host=on_host, n_prompt=prompt_tokens(name), cpu=cpu), done[name])
               for name, _, m in main]
        reference = None
        if "Q4_0 reference probe" in done:
            reference = (features(ref_model[1], on_host=on_host, cpu=cpu), done["Q4_0 reference probe"])
        runs = [(q, features(m, on_host=on_host, cpu=cpu), done[f"{q} probe"]) for q, _, m in typed]
        joint = [(f, r) for q, f, r in runs if q == JOINT_TYPE]
        wide = next(((m, done[name]) for name, _, m in main if name == "probe-wide"), None)
        pair = None
        if wide is not None and wide[1].short_prefill_s is not None:
            pair = (features(wide[0], on_host=on_host, n_prompt=WIDE_PROMPT, cpu=cpu),
                    features(wide[0], on_host=on_host, n_prompt=SHORT_PROMPT, cpu=cpu), wide[1])
        speed = fit_device(obs + ([reference] if reference is not None else []) + joint, threads=threads, how=how,
                           read_pair=pair)
        twins = {q: (features(m, on_host=on_host, cpu=cpu), done[f"{q} narrow probe"]) for q, _, m in thin}
        if runs:
            speed = dataclasses.replace(speed, types={**(speed.types or {}), **_typed_rates(speed, runs, reference, twins)} or None)
        if log is not None:
            log.extend((label, n, f, r) for (n, _, _), (f, r) in zip(main, obs))
            if reference is not None:
                log.append((label, "probe-q4_0-ref", *reference))
            log.extend((label, f"probe-{q}", f, r) for q, f, r in runs)
            log.extend((label, f"probe-{q}-narrow", f, r) for q, (f, r) in twins.items())
        return speed

    # what to measure: (label, on the host, RPC endpoints, threads, llama-bench -dev, index in devices)
    targets: list[tuple[str, bool, list[str], int | None, str | None, int | None]] = []
    if host:
        targets.append(("CPU", True, [], fleet.host.cpu_cores, None, None))
    devices = list(fleet.devices)
    for i, d in enumerate(devices):
        if d.backend.upper() == "CUDA" and d.cuda_index is not None:
            # a local GPU alone: llama-bench -dev CUDAn -ngl 99 (CUDA's own device order, as cuda_index holds it)
            targets.append((d.name, False, [], None, f"CUDA{d.cuda_index}", i))
    endpoints = {}
    for i, d in enumerate(devices):
        if d.backend.upper() != "RPC":
            continue
        ep = d.id.split(":", 1)[1].split("#")[0]
        if ep in endpoints:
            continue  # a worker with several devices: llama-bench offloads to all of them
        endpoints[ep] = i
        targets.append((d.name, False, [ep], None, None, i))
    done: list[dict[str, BenchResult]] = [{} for _ in targets]
    for k in range(passes):  # every device's every probe once per pass: a probe's passes are minutes apart
        for (label, on_host, rpc, _, dev, _), seen in zip(targets, done):
            for key, path, n_prompt, short in jobs:
                progress(f"{label}: {key}" + (f" (pass {k + 1} of {passes})" if passes > 1 else ""))
                r = run_llama_bench(binary, path, rpc=rpc, ngl=0 if on_host else 99, n_prompt=n_prompt, device=dev,
                                    short_prompt=short)
                seen[key] = fastest(seen[key], r) if key in seen else r
    out_host = fleet.host
    for (label, on_host, _, threads, _, i), seen in zip(targets, done):
        speed = fit(label, on_host, threads, seen)
        if i is None:
            out_host = dataclasses.replace(fleet.host, measured=speed)
        else:
            devices[i] = dataclasses.replace(devices[i], measured=speed)
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


def in_sample(m: MeasuredSpeed, f: Features, r: BenchResult, ggml_type: str | None = None) -> tuple[float, float | None]:
    """The fitted model's decode and prefill seconds for one of the bench's own runs: the
    ``JOINT_TYPE`` bytes and FLOPs at their own rates, the rest at ``ggml_type``'s (a type probe's
    weights; ``None``: the main Q4_0 rates).

    >>> m = MeasuredSpeed(decode_gb_s=10.0, prefill_gflops=100.0, layer_us=0.0, token_us=1000.0,
    ...                   types={"Q8_0": [20.0, 50.0], "Q4_1": [5.0, 25.0]})
    >>> f = Features(1e9, 10e9, 8, joint_bytes=0.4e9, joint_flops=5e9)
    >>> r = BenchResult("m", 0.0, 0.0, 128, 32)
    >>> [round(x, 6) for x in in_sample(m, f, r)]  # 0.6 GB at 10 + 0.4 at 20 + 1 ms; 5 GFLOP at 100 + 5 at 50 + 1 ms
    [0.081, 0.151]
    >>> [round(x, 6) for x in in_sample(m, f, r, "Q4_1")]  # the rest at Q4_1's 5 GB/s and 25 GFLOP/s
    [0.141, 0.301]
    """
    own = (m.types or {}).get(ggml_type) or [m.decode_gb_s, m.prefill_gflops]
    bw, fl = own[0], own[1]
    bw_j, fl_j = ((m.types or {}).get(JOINT_TYPE) or [m.decode_gb_s, m.prefill_gflops])[:2]
    dec = (f.bytes_per_token - f.joint_bytes) / (bw * 1e9) + f.joint_bytes / (bw_j * 1e9) + f.decode_fixed_s(m)
    pre = None
    if r.prefill_s is not None:
        row_ns = own[2] if len(own) > 2 else None  # the type's own per-row cost, where measured
        pre = (f.prompt_flops - f.joint_flops) / (fl * 1e9) + f.joint_flops / (fl_j * 1e9) + f.prefill_fixed_s(m, row_ns)
    return dec, pre
