"""``-sm tensor``: estimator speed, what the model predicts on GPU fleets, and the real thing on loopback.

1. Time of ``estimate_tensor`` and ``recommend`` on a 70B-shaped model over simulated H100s
   (target: ``estimate_tensor`` under 100 ms at 8 devices, ``recommend`` under 5 s).
2. Predicted decode/prefill of single device, layer split, tensor split and data parallel on a
   few fleets (the numbers ``llamasplit recommend`` prints).
3. With ``--real``: tensor against layer split over 1, 2 and 3 ggml-rpc-server workers on
   loopback, SmolLM2 and a synthetic F32 llama, best of ``--reps`` runs each; the link fitted on
   1 and 2 devices and its prediction of the 3-device tensor/layer ratios.

    .venv/bin/python benchmarks/bench_tensor_split.py [--real] [--reps 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from llamasplit.devices.fleet import fleet_from_spec
from llamasplit.model.shapes import dense_profile
from llamasplit.planner.recommend import recommend
from llamasplit.memory.settings import LlamaSettings
from llamasplit.memory.tensor_split import estimate_tensor


def timing() -> dict:
    model = dense_profile()
    out = {}
    print("estimate_tensor() time on a 70B shape, best of 5 (ms)")
    for n in (2, 4, 8):
        fleet = fleet_from_spec(f"{n}xh100-sxm")
        best = float("inf")
        for _ in range(5):
            t0 = time.perf_counter()
            estimate_tensor(model, fleet.devices, LlamaSettings(n_ctx=8192, flash_attn="on"))
            best = min(best, time.perf_counter() - t0)
        out[f"estimate_{n}"] = best * 1000
        print(f"  {n} devices: {best * 1000:7.1f} ms")
    t0 = time.perf_counter()
    recommend(model, fleet_from_spec("2xh100-sxm,2xl4"))
    out["recommend_s"] = time.perf_counter() - t0
    print(f"recommend() on 2xh100-sxm,2xl4: {out['recommend_s']:.2f} s")
    return out


FLEETS = [
    ("70B Q4_K_M shape", dense_profile(), "2xh100-sxm,2xl4"),
    ("70B Q4_K_M shape", dense_profile(), "4xa100-80g-sxm"),
    ("8B shape", dense_profile(n_layer=32, n_embd=4096, n_head=32, n_head_kv=8, n_ff=14336, name="8b"), "2x3090"),
    ("8B shape", dense_profile(n_layer=32, n_embd=4096, n_head=32, n_head_kv=8, n_ff=14336, name="8b"), "4090,4060ti-16"),
]


def fleets() -> list[dict]:
    rows = []
    print("\npredicted tok/s (decode / prefill of 2048 tokens); comm = share of a decoded token")
    for label, model, spec in FLEETS:
        rec = recommend(model, fleet_from_spec(spec))
        print(f"  {label} on {spec}")
        for o in rec.options:
            if o.speed:
                print(f"    {o.kind:<14} {','.join(o.devices):<28} {o.decode_tok_s:8.1f}{' x' + str(o.replicas) if o.replicas > 1 else '':>4}"
                      f" {o.speed.prefill_tok_s:9.0f}  comm {o.speed.decode_comm_share:4.0%}")
            else:
                print(f"    {o.kind:<14} {'-':<28} {o.why_not}")
        print(f"    -> {rec.verdict}")
        rows.append({"model": label, "fleet": spec, **rec.to_dict()})
    return rows


def real(reps: int) -> dict:
    """The real-stack runs of tests/test_tensor_split_real.py, best of ``reps``."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    import os

    from procs import rpc_workers
    from test_tensor_split_real import CONFIGS, complete, speed_report, write_vocab_model

    from llamasplit.llamacpp.binaries import find_binary
    from llamasplit.realmodels import fetch_model

    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix="bench-tensor-"))
    models = {"smollm2": fetch_model("smollm2"), "gemma3": fetch_model("gemma3"),
              "synthetic": write_vocab_model(tmp / "synthetic-llama.gguf")}
    runs = {}
    with rpc_workers(3, env={**os.environ, "GGML_RPC_DEBUG": "1"}) as workers:
        for name, model, n, mode, ts, extra in CONFIGS:
            if model == "gemma3" or "fa-off" in name:
                continue
            best = None
            for _ in range(reps):
                r = complete(workers, name, models[model], n, mode, ts, extra, find_binary)
                if r.timings and (best is None or r.decode_s < best.decode_s):
                    best = r
            runs[name] = best
        report = speed_report({"runs": runs, "models": models, "eps": [w.endpoint for w in workers]})
    print(f"\nreal stack, best of {reps}: tensor vs layer split over RPC workers on loopback (tok/s)")
    for name, r in report["runs"].items():
        print(f"  {name:<28} decode {r['decode_tok_s']:8.1f}  prefill {r['prefill_tok_s']:8.1f} ({r['prompt_tokens']} tokens)")
    for model, m in report["models"].items():
        link = m["calibration"]["link"]
        print(f"  {model}: copy latency {link['latency_us']:.0f} us, subgraph {link['subgraph_us']:.0f} us, "
              f"link {link['bandwidth_gb_s']:.2f} GB/s, parallel {m['calibration']['parallel']}, rms {m['calibration']['residual']:.3f}")
        for n, row in m["tensor_over_layer"].items():
            err_d = row["predicted_decode_ratio"] / row["measured_decode_ratio"] - 1
            err_p = row["predicted_prefill_ratio"] / row["measured_prefill_ratio"] - 1
            print(f"    {n} devices{' (fitted)   ' if row['fitted'] else ' (predicted)'}: decode tensor/layer "
                  f"{row['measured_decode_ratio']:.3f} measured {row['predicted_decode_ratio']:.3f} model ({err_d:+.0%}); "
                  f"prefill {row['measured_prefill_ratio']:.3f} measured {row['predicted_prefill_ratio']:.3f} model ({err_p:+.0%})")
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", action="store_true", help="also run llama.cpp over RPC workers on loopback")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--json", help="write every figure to this file")
    args = parser.parse_args()
    out = {"timing": timing(), "fleets": fleets()}
    ok = out["timing"]["estimate_8"] < 100 and out["timing"]["recommend_s"] < 5
    if args.real:
        out["real"] = real(args.reps)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2, default=str))
    print("\nOK" if ok else "\nSLOW: estimate_tensor or recommend missed its target")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
