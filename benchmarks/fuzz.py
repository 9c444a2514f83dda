"""Fuzz the GGUF reader and the planner with mutated headers.

Mutates the real fixtures' headers (SmolLM2, Gemma-3; vocabularies cut to 512 entries except one
case in 200) and small synthetic ones of six architectures (``tests/fuzzgguf.py``), reads each with
``read_model`` and plans the ones that parse for a two-GPU simulated fleet. Passes when nothing but
our own errors comes out, no read or plan takes over 2 s of CPU time (the process's own, so other
work on the machine does not count; a wall-clock alarm stops any case after 20 s), and no plan shows
negative memory or a raw control character.

    .venv/bin/python benchmarks/fuzz.py [--cases 100000] [--workers 2] [--seed 1]
"""

from __future__ import annotations

import argparse
import collections
import multiprocessing
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import fuzzgguf  # noqa: E402


def seeds(full_vocab: bool) -> list[fuzzgguf.Header]:
    from llamasplit.realmodels import fetch_model

    keep = None if full_vocab else 512
    real = [fuzzgguf.header_of_file(fetch_model(name), vocab_keep=keep) for name in ("smollm2", "gemma3")]
    return real + fuzzgguf.synthetic_seeds()


def _options():
    from llamasplit.devices.fleet import fleet_from_spec
    from llamasplit.planner.plan import PlanOptions
    from llamasplit.memory.settings import LlamaSettings

    fleet = fleet_from_spec("3090,3060-12g")
    fixed = PlanOptions(settings=LlamaSettings(n_ctx=4096, n_gpu_layers=3), fixed=frozenset({"n_ctx", "n_gpu_layers"}))
    return fleet, [PlanOptions(), fixed]


_WORKER: dict = {}


def run_range(args: tuple[int, int, int, float]) -> dict:
    """Cases ``start..stop`` of the stream seeded with ``seed``; each case has its own Random."""
    start, stop, seed, limit_s = args
    if not _WORKER:  # once per worker process: parsing Gemma-3's whole vocabulary takes a while
        _WORKER.update(small=seeds(False), full=seeds(True), setup=_options())
    small, full = _WORKER["small"], _WORKER["full"]
    fleet, options = _WORKER["setup"]
    counts: collections.Counter[str] = collections.Counter()
    findings: dict[str, tuple[int, str]] = {}
    max_read = max_plan = 0.0
    folder = Path(tempfile.mkdtemp(prefix="llamasplit-fuzz-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    path = folder / "case.gguf"
    try:
        for i in range(start, stop):
            rng = random.Random(seed * 1_000_003 + i)
            data = fuzzgguf.case(full if rng.random() < 0.005 else small, rng)
            out = fuzzgguf.check_one(data, path, fleet, options[i % 2], limit_s=limit_s)
            counts[out.kind] += 1
            max_read, max_plan = max(max_read, out.read_s), max(max_plan, out.plan_s)
            if out.kind in ("crash", "slow"):
                key = out.kind + " " + out.detail.split(":")[0] + " " + out.detail[:60]
                findings.setdefault(key, (i, out.detail))
    finally:
        path.unlink(missing_ok=True)
        folder.rmdir()
    return {"counts": counts, "findings": findings, "max_read": max_read, "max_plan": max_plan}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", type=int, default=100_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--limit", type=float, default=2.0, help="seconds a read or a plan may take")
    a = ap.parse_args()
    chunk = 500
    jobs = [(s, min(s + chunk, a.cases), a.seed, a.limit) for s in range(0, a.cases, chunk)]
    t0 = time.perf_counter()
    counts: collections.Counter[str] = collections.Counter()
    findings: dict[str, tuple[int, str]] = {}
    max_read = max_plan = 0.0
    with multiprocessing.get_context("fork").Pool(a.workers) as pool:
        for n, res in enumerate(pool.imap_unordered(run_range, jobs), 1):
            counts.update(res["counts"])
            for k, v in res["findings"].items():
                findings.setdefault(k, v)
            max_read, max_plan = max(max_read, res["max_read"]), max(max_plan, res["max_plan"])
            if n % 20 == 0 or n == len(jobs):
                done = sum(counts.values())
                print(f"  {done:>7} cases, {time.perf_counter() - t0:7.1f} s, findings {len(findings)}", file=sys.stderr, flush=True)
    wall = time.perf_counter() - t0
    total = sum(counts.values())
    print(f"{total} mutated headers in {wall:.1f} s ({total / wall:.0f}/s, {a.workers} workers, seed {a.seed})")
    for kind in ("ok", "read_error", "plan_error", "crash", "slow"):
        print(f"  {kind:<11} {counts[kind]:>7}")
    print(f"  slowest read {max_read * 1000:.1f} ms, slowest plan {max_plan * 1000:.1f} ms CPU (limit {a.limit * 1000:.0f} ms)")
    for key, (i, detail) in sorted(findings.items()):
        print(f"  FINDING case {i}: {detail}")
    ok = not findings
    print("no findings" if ok else f"{len(findings)} distinct findings")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
