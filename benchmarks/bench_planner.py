"""Planner speed and plan quality.

1. Time of ``plan()`` in-process on header-shaped models (a 70B dense, a 671B MLA MoE) over 1 to
   64 simulated A100-40G devices. Target: at most 100 ms at 64 devices.
2. Predicted decode tok/s of our split against llama.cpp's default split (layers in proportion to
   free memory) on mixed fleets, same model, same context, same -ngl, in the same run.

    .venv/bin/python benchmarks/bench_planner.py
"""

from __future__ import annotations

import sys
import time

from llamasplit.devices.fleet import fleet_from_spec
from llamasplit.errors import NoFeasiblePlan
from llamasplit.model.shapes import dense_profile, moe_profile
from llamasplit.planner.plan import PlanOptions, plan
from llamasplit.memory.settings import LlamaSettings


def options(ctx: int) -> PlanOptions:
    return PlanOptions(settings=LlamaSettings(n_ctx=ctx), fixed=frozenset({"n_ctx"}))


def timing() -> bool:
    print("plan() time, best of 5 (ms)")
    print(f"{'devices':>8} {'70B dense':>10} {'671B MoE':>10}")
    models = (dense_profile(), moe_profile())
    at_64 = 0.0
    for n in (1, 2, 4, 8, 16, 32, 64):
        fleet = fleet_from_spec(f"{n}xa100-40g-sxm,ram=2TiB")
        row = []
        for model in models:
            best = float("inf")
            for _ in range(5):
                t0 = time.perf_counter()
                plan(model, fleet, options(8192))
                best = min(best, time.perf_counter() - t0)
            row.append(best * 1000)
        at_64 = max(row) if n == 64 else at_64
        print(f"{n:>8} {row[0]:>10.1f} {row[1]:>10.1f}")
    return at_64 <= 100


FLEETS = ["3090,3060-12g", "4090,4060ti-16", "4090,4060ti-16,3060-12g", "a100-80g-pcie,l4", "2x3090,3060-12g", "5090,3090"]
MODELS = {
    "8B": dense_profile(n_layer=32, n_embd=4096, n_head=32, n_head_kv=8, n_ff=14336, name="8b-shape"),
    "32B": dense_profile(n_layer=64, n_embd=5120, n_head=40, n_head_kv=8, n_ff=27648, name="32b-shape"),
    "70B": dense_profile(),
}


def quality() -> None:
    print("\npredicted decode tok/s at 16k context: ours vs llama.cpp's default split (free-memory proportional)")
    print(f"{'fleet':<26} {'model':>5} {'ours':>8} {'default':>8} {'ratio':>6}  flags")
    for spec in FLEETS:
        fleet = fleet_from_spec(spec)
        for name, model in MODELS.items():
            try:
                p = plan(model, fleet, options(16384))
            except NoFeasiblePlan:
                print(f"{spec:<26} {name:>5} {'does not fit':>17}")
                continue
            ours, default = p.decode_tok_s or 0.0, p.default_split_decode_tok_s
            ratio = f"{ours / default:6.2f}" if default else "   n/a"
            dflt = f"{default:8.1f}" if default else "     n/a"
            print(f"{spec:<26} {name:>5} {ours:>8.1f} {dflt} {ratio}  {' '.join(p.to_llama_args())}")


def main() -> int:
    ok = timing()
    quality()
    print("\ntiming target met" if ok else "\ntiming target NOT met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
