"""The estimator against llama.cpp's own dry run, over a wide grid; prints every device of every config.

For each configuration it runs ``llama-fit-params -fitp on`` (llama.cpp's per-device model /
context / compute MiB, floored) and ``estimate()`` with the same flags, and prints one row per
device: the oracle's MiB and ours for each column, and the compute error. Models: SmolLM2 Q4_1
(llama), Gemma-3 Q4_K_M (iSWA), and synthetic F16 llama, qwen3moe (MoE) and deepseek2 (MLA)
models written to a temporary folder. Devices: the CPU alone and 1-3 local ``ggml-rpc-server``
workers. Grid: every layer or part of them offloaded, contexts 512 to 32k, flash attention on
and off, f16 and q8_0 caches, ubatches 64 to 1024, and for the MoE models ``--cpu-moe``,
``--n-cpu-moe`` and ``-ot`` experts on the CPU.

Columns are ``llama.cpp/ours`` in MiB. llama.cpp floors its figures, so the error is the distance
from our figure to ``[oracle, oracle + 1)``: 0 when both name the same MiB.

Target: every compute estimate within max(3 %, 8 MiB) of llama.cpp. The summary also counts
exact (same floored MiB) model, context and compute figures. ``--completion`` additionally
runs ``llama-completion`` on every config and compares the compute buffers it really
allocates (0.01 MiB) with the estimate for that binary. Always exits 0.

``--families [NAME ...]`` runs the per-arch-family grid instead: one synthetic model per family
(tests/synth.py ``FAMILIES``) plus SmolLM2 and Gemma-3, on the CPU and on two RPC workers, every
layer and ``-ngl 3`` offloaded, contexts 4096 and 16384, flash attention on and off; it prints
each device row and a table of rows within target per family (model and KV the same MiB,
compute within max(3 %, 8 MiB)). ``--record FILE`` also writes llama.cpp's figures, with the
command that produced each, as the golden file the fast tier checks (tests/test_golden.py);
a run over some families replaces their records in an existing file and keeps the others'.
The host's repacked weights follow this machine's CPU (``planner.repack``); the golden file
keeps its flags.

    .venv/bin/python benchmarks/accuracy.py [--completion] [--quick]
    .venv/bin/python benchmarks/accuracy.py --families [--record tests/golden/fit_params.json]
    .venv/bin/python benchmarks/accuracy.py --golden [FILE]

``--golden`` prints the same per-family table from the recorded figures, without binaries (the
golden file's CPU flags for the host's repacking), adding the compute rows that name the same
MiB, and lists the families of tests/synth.py that have no record.
"""

from __future__ import annotations

import argparse
import itertools
import re
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from synth import write_deepseek2, write_llama_dense, write_qwen3moe  # noqa: E402

from llamasplit.devices.device import Device  # noqa: E402
from llamasplit.errors import LlamasplitError  # noqa: E402
from llamasplit.llamacpp.binaries import find_binary, want_amx  # noqa: E402
from llamasplit.llamacpp.oracle import fit_print  # noqa: E402
from llamasplit.model.profile import ModelProfile, read_model  # noqa: E402
from llamasplit.memory.estimate import estimate  # noqa: E402
from llamasplit.memory.repack import CpuFeatures  # noqa: E402
from llamasplit.memory.settings import LlamaSettings  # noqa: E402
from llamasplit.realmodels import fetch_model  # noqa: E402
from llamasplit.runner.processes import rpc_workers, run_to_end  # noqa: E402

MiB = 1024 * 1024
DEVICE_SETS: list[tuple[int, tuple[float, ...] | None]] = [
    (0, None), (1, (1,)), (2, (1, 1)), (2, (1, 3)), (3, (2, 1, 1)),
]
CONTEXTS = (512, 4096, 32768)
ATTENTION = (("on", "f16"), ("on", "q8_0"), ("off", "f16"))
UBATCHES = (512, 128, 1024, 64, 256)


def error_mib(est_mib: float, oracle_mib: int) -> float:
    """How far the estimate is from llama.cpp's figure, which is floored: 0 inside [oracle, oracle + 1)."""
    if est_mib < oracle_mib:
        return est_mib - oracle_mib
    return max(0.0, est_mib - (oracle_mib + 1))


def within_target(est_mib: float, oracle_mib: int) -> bool:
    """max(3 %, 8 MiB)."""
    return abs(error_mib(est_mib, oracle_mib)) <= max(0.03 * oracle_mib, 8)


@dataclass
class Row:
    config: str
    device: str
    oracle: tuple[int, int, int]
    ours: tuple[float, float, float]
    model_checked: bool = True
    real_mib: str | None = None  # as llama.cpp printed it
    real_est_mib: float | None = None

    @property
    def exact(self) -> tuple[bool, bool, bool]:
        return tuple(int(o) == w for o, w in zip(self.ours, self.oracle))  # type: ignore[return-value]


def grid(models: dict[str, tuple[Path, ModelProfile]], quick: bool):
    """(model name, n rpc, tensor split, settings kwargs) for every configuration."""
    k = itertools.count()
    for name, (_, profile) in models.items():
        n_layer = profile.hparams.n_layer
        moe = profile.hparams.n_expert > 0
        for (n_rpc, ts), n_ctx, (fa, cache) in itertools.product(DEVICE_SETS, CONTEXTS, ATTENTION):
            ngls: list[int | None] = [None] if n_rpc == 0 else [None, max(1, n_layer // 2)]
            for ngl in ngls:
                i = next(k)
                if quick and i % 4:
                    continue
                kw = dict(n_ctx=n_ctx, flash_attn=fa, type_k=cache, type_v=cache, n_gpu_layers=ngl,
                          n_ubatch=UBATCHES[i % len(UBATCHES)])
                yield name, n_rpc, ts, kw
                if moe and n_rpc and ngl is None and n_ctx == 4096:
                    yield name, n_rpc, ts, {**kw, "cpu_moe": True}
                    yield name, n_rpc, ts, {**kw, "n_cpu_moe": 2}
                    yield name, n_rpc, ts, {**kw, "overrides": ((r"blk\.[13]\.ffn_(up|gate)_exps", "CPU"),)}


def describe(name: str, n_rpc: int, ts, kw: dict) -> str:
    parts = [name, f"rpc{n_rpc}" + (":" + ",".join(f"{x:g}" for x in ts) if ts else "")]
    short = {"n_ctx": "c", "flash_attn": "fa", "type_k": "ct", "n_gpu_layers": "ngl", "n_ubatch": "ub"}
    for key, value in kw.items():
        if key == "type_v" or value is None:
            continue
        if key == "overrides":
            value = "ot"
        parts.append(f"{short.get(key, key)}={value}")
    return " ".join(parts)


_BUFFER_LINE = re.compile(r"sched_reserve:\s+(\S+) compute buffer size =\s+([\d.]+) MiB")


def completion_buffers(path: Path, args: list[str], eps: list[str]) -> dict[str, str]:
    """The compute buffers llama-completion allocates, as it prints them (``%8.2f`` MiB)."""
    argv = [str(find_binary("llama-completion")), "-m", str(path), "-n", "1", "-p", "hi", "-no-cnv", "-lv", "4",
            "-fit", "off", "--no-warmup", *args]
    out = run_to_end(argv, timeout_s=120)
    found = {}
    for name, mib in _BUFFER_LINE.findall(out.stdout + out.stderr):
        if name.startswith("RPC"):
            name = f"RPC{eps.index(name[name.index('[') + 1 : -1])}"
        found["Host" if name.startswith("CPU") else name] = mib
    return found


# --------------------------------------------------------------------------------------------
# arch families: one synthetic model each (tests/synth.py FAMILIES) plus the two real models
# --------------------------------------------------------------------------------------------

FAMILY_DEVICES: tuple[tuple[int, tuple[float, ...] | None], ...] = ((0, None), (2, (1, 1)))
FAMILY_CONTEXTS = (4096, 16384)
FAMILY_PARTIAL_NGL = 3
"""-ngl 3: the output layer and the last two blocks on the workers, the rest on the CPU."""


def family_grid(families: Sequence[str]):
    """(family, n rpc, tensor split, settings kwargs): CPU and 2 RPC workers, every layer and
    ``-ngl 3`` offloaded, two contexts, flash attention on and off."""
    for family in families:
        for (n_rpc, ts), n_ctx, fa in itertools.product(FAMILY_DEVICES, FAMILY_CONTEXTS, ("on", "off")):
            for ngl in ([None] if n_rpc == 0 else [None, FAMILY_PARTIAL_NGL]):
                yield family, n_rpc, ts, dict(n_ctx=n_ctx, flash_attn=fa, n_gpu_layers=ngl)


def family_paths(tmp: Path, families: Sequence[str], *, header_only: bool = False) -> dict[str, Path]:
    from synth import FAMILIES

    out = {}
    for family in families:
        if family in REAL_FAMILIES:
            out[family] = fetch_model(REAL_FAMILIES[family])
        else:
            out[family] = FAMILIES[family](tmp / f"{family}.gguf", header_only=header_only)
    return out


GOLDEN = Path(__file__).resolve().parents[1] / "tests" / "golden" / "fit_params.json"
"""The fast tier's golden file (tests/test_golden.py)."""

REAL_FAMILIES = {"smollm2": "smollm2", "gemma3": "gemma3"}
"""Families measured on a real model (realmodels.py) rather than a synthetic one."""

CPU = CpuFeatures.local(amx_built=want_amx())
RELEVANT_CPU_FLAGS = frozenset({"avx2", "avx512f", "amx_int8", "avx512_vnni", "asimd", "asimddp", "i8mm", "sve"})
"""The flags planner.repack looks at: the golden file keeps the recording machine's, so the fast
tier replays the same repacking on any machine."""


def run_families(families: Sequence[str], record: Path | None) -> int:
    """Every family over ``family_grid``: one row per device, a per-family summary, and with
    ``record`` the oracle's figures written as the fast tier's golden file."""
    import json

    from llamasplit.memory.graph import replayable

    t0 = time.perf_counter()
    per_family: dict[str, list[tuple[bool, bool]]] = {f: [] for f in families}
    records = []
    failures = []
    with tempfile.TemporaryDirectory(prefix="llamasplit-families-") as tmp, rpc_workers(2) as workers:
        eps_all = [w.endpoint for w in workers]
        paths = family_paths(Path(tmp), families)
        profiles = {f: read_model(p) for f, p in paths.items()}
        print(f"{'config':52} {'device':6} {'model':>13} {'context':>13} {'compute':>17} {'err MiB':>8}")
        for family, n_rpc, ts, kw in family_grid(families):
            profile = profiles[family]
            eps = eps_all[:n_rpc]
            devices = [Device(id=f"rpc:{ep}", name=f"RPC{i}", description=ep, backend="RPC", total_bytes=None,
                              free_bytes=None, host=ep) for i, ep in enumerate(eps)]
            settings = LlamaSettings(tensor_split=ts, binary="llama-fit-params", **kw)
            flags = settings.to_args()
            args = flags + (["--rpc", ",".join(eps)] if eps else [])
            config = describe(family, n_rpc, ts, kw)
            try:
                oracle = {r.name: r for r in fit_print(paths[family], args)}
            except LlamasplitError as exc:
                failures.append(f"{config}: {exc}")
                continue
            est = estimate(profile, devices, settings, cpu=CPU)
            rows = {}
            for dev in (*est.devices, est.host):
                o = oracle.get(dev.name)
                if o is None:
                    failures.append(f"{config}: llama.cpp printed no row for {dev.name}")
                    continue
                rows[dev.name] = [o.model_mib, o.context_mib, o.compute_mib]
                ours = (dev.model_bytes / MiB, dev.context_bytes / MiB, dev.compute_bytes / MiB)
                same = int(ours[0]) == o.model_mib and int(ours[1]) == o.context_mib
                ok = within_target(ours[2], o.compute_mib)
                per_family[family].append((same, ok))
                mark = "" if same and ok else "  <-- outside target"
                print(f"{config:52} {dev.name:6} {o.model_mib:5d}/{ours[0]:7.1f} {o.context_mib:5d}/{ours[1]:7.1f} "
                      f"{o.compute_mib:7d}/{ours[2]:9.2f} {error_mib(ours[2], o.compute_mib):8.2f}{mark}")
            command = ["llama-fit-params", "-m", f"{{{family}}}", "-fitp", "on", *flags]
            if eps:
                command += ["--rpc", ",".join(f"{{rpc{i}}}" for i in range(len(eps)))]
            records.append({"family": family, "n_rpc": n_rpc, "settings": settings.to_dict(),
                            "command": " ".join(command), "oracle": rows})
    print()
    print(f"{'family':18} {'replayed':8} {'model+KV same MiB':>18} {'compute in target':>18} {'all within':>11}")
    n_all = ok_all = 0
    for family in families:
        rows = per_family[family]
        n = len(rows)
        same = sum(s for s, _ in rows)
        ok = sum(o for _, o in rows)
        both = sum(s and o for s, o in rows)
        n_all += n
        ok_all += both
        replay = "yes" if replayable(profiles[family]) else "no"
        print(f"{family:18} {replay:8} {same:>9}/{n:<8} {ok:>9}/{n:<8} {both:>5}/{n:<5}")
    print(f"{'all':18} {'':8} {'':>18} {'':>18} {ok_all:>5}/{n_all:<5}  ({time.perf_counter() - t0:.0f} s)")
    for f in failures:
        print(f"skipped: {f}")
    if record is not None:
        from llamasplit.llamacpp.binaries import LLAMA_CPP_PYTHON_VERSION
        from llamasplit.llamacpp.binaries import find_binary as _fb

        cpu_flags = sorted(f for f in (CPU.flags if CPU else ()) if f in RELEVANT_CPU_FLAGS)
        if record.exists():
            # a run over some families replaces theirs and keeps the others' (recorded on a CPU
            # with the same relevant flags, so the host's repacking replays the same)
            old = json.loads(record.read_text())
            same_cpu = (old.get("cpu_flags"), old.get("cpu_machine"), old.get("amx_built")) == (
                cpu_flags, CPU.machine if CPU else None, bool(CPU and CPU.amx_built))
            if same_cpu:
                ran = set(families)
                order = list(dict.fromkeys([*(r["family"] for r in old["records"]), *families]))
                kept = [r for r in old["records"] if r["family"] not in ran]
                records = [r for f in order for r in (*kept, *records) if r["family"] == f]
            else:
                print(f"note: {record} was recorded on another CPU's flags; rewriting it with these families only")
        doc = {
            "about": "llama-fit-params -fitp on figures (model, context, compute MiB, floored) per device, "
                     "recorded by benchmarks/accuracy.py --families --record; {family} is the model "
                     "(tests/synth.py FAMILIES, or the real model of that name), {rpcN} a ggml-rpc-server "
                     "on loopback.",
            "llama_cpp": f"the llama.cpp vendored in llama-cpp-python {LLAMA_CPP_PYTHON_VERSION} ({_fb('llama-fit-params')})",
            "cpu_flags": cpu_flags,
            "cpu_machine": CPU.machine if CPU else None,
            "amx_built": bool(CPU and CPU.amx_built),
            "records": records,
        }
        record.write_text(json.dumps(doc, indent=1) + "\n")
        print(f"wrote {len(records)} records to {record}")
    return 0


def run_golden(path: Path) -> int:
    """The recorded figures (no binaries): every family of the golden file and of tests/synth.py,
    a row per family: device rows with model and KV the same MiB, compute within target, compute
    the same MiB, all within; families with no record are listed as not measured."""
    import json

    from synth import FAMILIES

    from llamasplit.memory.graph import replayable

    doc = json.loads(path.read_text())
    cpu = CpuFeatures(frozenset(doc["cpu_flags"]), doc["cpu_machine"] or "x86_64", doc["amx_built"])
    recorded = list(dict.fromkeys(r["family"] for r in doc["records"]))
    print(f"{'family':18} {'replayed':8} {'model+KV same MiB':>18} {'compute in target':>18} "
          f"{'compute same MiB':>17} {'all within':>11}")
    n_all = ok_all = 0
    with tempfile.TemporaryDirectory(prefix="llamasplit-golden-") as tmp:
        paths = family_paths(Path(tmp), recorded, header_only=True)
        for family in recorded:
            profile = read_model(paths[family], require_data=False)
            n = same = ok = exact = both = 0
            for record in (r for r in doc["records"] if r["family"] == family):
                devices = [Device(id=f"rpc:{i}", name=f"RPC{i}", description="worker", backend="RPC",
                                  total_bytes=None, free_bytes=None, host=f"127.0.0.1:{50052 + i}")
                           for i in range(record["n_rpc"])]
                est = estimate(profile, devices, LlamaSettings.from_dict(record["settings"]), cpu=cpu)
                for dev in (*est.devices, est.host):
                    m, c, k = record["oracle"][dev.name]
                    s_ = (dev.model_bytes // MiB, dev.context_bytes // MiB) == (m, c)
                    o_ = within_target(dev.compute_bytes / MiB, k)
                    n += 1
                    same += s_
                    ok += o_
                    exact += error_mib(dev.compute_bytes / MiB, k) == 0
                    both += s_ and o_
            n_all += n
            ok_all += both
            replay = "yes" if replayable(profile) else "no"
            print(f"{family:18} {replay:8} {same:>9}/{n:<8} {ok:>9}/{n:<8} {exact:>8}/{n:<8} {both:>5}/{n:<5}")
    print(f"{'all':18} {'':8} {'':>18} {'':>18} {'':>17} {ok_all:>5}/{n_all:<5}")
    missing = [f for f in FAMILIES if f not in recorded]
    if missing:
        print(f"not measured (no record in {path.name}): {', '.join(missing)}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--completion", action="store_true", help="also compare llama-completion's real buffers")
    parser.add_argument("--quick", action="store_true", help="a quarter of the grid")
    parser.add_argument("--families", nargs="*", default=None,
                        help="the per-arch-family grid instead (all families when none are named)")
    parser.add_argument("--record", type=Path, default=None, help="with --families: write the golden file")
    parser.add_argument("--golden", type=Path, nargs="?", const=GOLDEN, default=None,
                        help="the per-family table from the recorded figures, no binaries (default: %(const)s)")
    opts = parser.parse_args()
    if opts.golden is not None:
        return run_golden(opts.golden)
    if opts.families is not None:
        from synth import FAMILIES

        names = opts.families or [*FAMILIES, *REAL_FAMILIES]
        return run_families(names, opts.record)
    t0 = time.perf_counter()
    rows: list[Row] = []
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="llamasplit-accuracy-") as tmp, rpc_workers(3) as workers:
        eps_all = [w.endpoint for w in workers]
        paths = {
            "smollm2": fetch_model("smollm2"),
            "gemma3": fetch_model("gemma3"),
            "dense": write_llama_dense(Path(tmp) / "dense.gguf"),
            "moe": write_qwen3moe(Path(tmp) / "moe.gguf"),
            "mla": write_deepseek2(Path(tmp) / "mla.gguf"),
        }
        models = {name: (path, read_model(path)) for name, path in paths.items()}
        header = f"{'config':58} {'device':6} {'model':>13} {'context':>13} {'compute':>17} {'err MiB':>8} {'err %':>6}"
        print(header)
        print("-" * len(header))
        for name, n_rpc, ts, kw in grid(models, opts.quick):
            path, profile = models[name]
            eps = eps_all[:n_rpc]
            devices = [Device(id=f"rpc:{ep}", name=f"RPC{i}", description=ep, backend="RPC", total_bytes=None,
                              free_bytes=None, host=ep) for i, ep in enumerate(eps)]
            config = describe(name, n_rpc, ts, kw)
            settings = LlamaSettings(tensor_split=ts, binary="llama-fit-params", **kw)
            args = settings.to_args() + (["--rpc", ",".join(eps)] if eps else [])
            try:
                oracle = {r.name: r for r in fit_print(path, args)}
                est = estimate(profile, devices, settings, cpu=CPU)
            except LlamasplitError as exc:
                failures.append(f"{config}: {exc}")
                continue
            real: dict[str, str] = {}
            real_est = None
            if opts.completion:
                real = completion_buffers(path, args, eps)
                real_est = estimate(profile, devices, settings.replace(binary="llama-completion"), cpu=CPU)
            for i, dev in enumerate((*est.devices, est.host)):
                o = oracle.get(dev.name)
                if o is None:
                    failures.append(f"{config}: llama.cpp printed no row for {dev.name}")
                    continue
                row = Row(config, dev.name, (o.model_mib, o.context_mib, o.compute_mib),
                          (dev.model_bytes / MiB, dev.context_bytes / MiB, dev.compute_bytes / MiB))
                if real_est is not None:
                    row.real_mib = real.get(dev.name)
                    row.real_est_mib = (*real_est.devices, real_est.host)[i].compute_bytes / MiB
                rows.append(row)
                err = error_mib(row.ours[2], o.compute_mib)
                pct = 100 * err / max(o.compute_mib, 1)
                mark = "" if within_target(row.ours[2], o.compute_mib) else "  <-- outside target"
                checked = row.exact if row.model_checked else row.exact[1:]
                if not all(checked):
                    mark += "  (not the same MiB)"
                model_col = f"{o.model_mib:5d}/{row.ours[0]:7.1f}" if row.model_checked else f"{o.model_mib:5d}/  (n/m)"
                real_col = ""
                if row.real_mib is not None:
                    real_col = f"   real {row.real_mib:>8}/{row.real_est_mib:8.2f}"
                print(f"{config:58} {dev.name:6} {model_col:>13} {o.context_mib:5d}/{row.ours[1]:7.1f} "
                      f"{o.compute_mib:7d}/{row.ours[2]:9.2f} {err:8.2f} {pct:6.1f}{real_col}{mark}")
    n = len(rows)
    ok = sum(within_target(r.ours[2], r.oracle[2]) for r in rows)
    exact_model = sum(r.exact[0] for r in rows if r.model_checked)
    n_model = sum(r.model_checked for r in rows)
    exact_ctx = sum(r.exact[1] for r in rows)
    exact_compute = sum(r.exact[2] for r in rows)
    worst = max(rows, key=lambda r: abs(error_mib(r.ours[2], r.oracle[2])), default=None)
    print()
    print(f"{n} device rows in {len({r.config for r in rows})} configurations, {time.perf_counter() - t0:.0f} s")
    if n:
        print(f"compute within max(3 %, 8 MiB): {ok}/{n} = {100 * ok / n:.1f} %")
        print(f"same MiB as llama.cpp: model {exact_model}/{n_model}, "
              f"context {exact_ctx}/{n}, compute {exact_compute}/{n}")
    if worst is not None:
        print(f"largest compute error: {error_mib(worst.ours[2], worst.oracle[2]):+.2f} MiB ({worst.config}, "
              f"{worst.device}: llama.cpp {worst.oracle[2]} MiB, estimate {worst.ours[2]:.2f} MiB)")
    if opts.completion:
        real_rows = [r for r in rows if r.real_mib is not None]
        same = sum(f"{r.real_est_mib:.2f}" == r.real_mib for r in real_rows)
        print(f"llama-completion's allocated compute buffers matched to 0.01 MiB: {same}/{len(real_rows)}")
    for f in failures:
        print(f"skipped: {f}")
    met = n > 0 and ok == n
    print("targets met" if met else "targets NOT met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
