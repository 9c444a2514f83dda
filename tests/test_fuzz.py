"""A seeded slice of the header fuzzer (benchmarks/fuzz.py runs 100,000 and holds the 2 s target per
read and plan): mutated real and synthetic GGUF headers are read and planned; nothing but our own
errors may come out, no plan may show negative memory or a raw control character, and nothing may
run away (30 s: a block_count of 100000 used to plan for minutes)."""

from __future__ import annotations

import collections
import random
import time

import fuzzgguf
from llamasplit.devices.fleet import fleet_from_spec
from llamasplit.planner.plan import PlanOptions
from llamasplit.memory.settings import LlamaSettings

CASES = 3000
BUDGET_S = 40.0  # on a slow, shared machine the slice stops early rather than run long
SEED = 20261201


def test_mutated_headers_end_in_our_errors_or_a_plan(smollm2_path, gemma3_path, tmp_path):
    seeds = [fuzzgguf.header_of_file(p) for p in (smollm2_path, gemma3_path)] + fuzzgguf.synthetic_seeds()
    fleet = fleet_from_spec("3090,3060-12g")
    options = [PlanOptions(), PlanOptions(settings=LlamaSettings(n_ctx=4096, n_gpu_layers=3),
                                          fixed=frozenset({"n_ctx", "n_gpu_layers"}))]
    path = tmp_path / "case.gguf"
    counts: collections.Counter[str] = collections.Counter()
    findings = []
    start = time.monotonic()
    for i in range(CASES):
        if time.monotonic() - start > BUDGET_S:
            break
        rng = random.Random(SEED * 1_000_003 + i)
        out = fuzzgguf.check_one(fuzzgguf.case(seeds, rng), path, fleet, options[i % 2], limit_s=30.0, hard_s=60.0)
        counts[out.kind] += 1
        if out.kind in ("crash", "slow"):
            findings.append(f"case {i}: {out.kind}: {out.detail}")
    assert not findings, "\n".join(findings[:10])
    assert sum(counts.values()) >= 1000, counts
    # the slice reaches both sides: headers that are refused and headers that plan
    assert counts["read_error"] > 200 and counts["ok"] > 200, counts
