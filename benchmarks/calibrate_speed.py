"""Fit the speed model's per-family coefficients to the published llama-bench rows and print how
well the model then reproduces every row.

    .venv/bin/python benchmarks/calibrate_speed.py           # fit, print, leave speed.json alone
    .venv/bin/python benchmarks/calibrate_speed.py --write   # and write the fit into speed.json

Rows: ``llamasplit/data/llama_bench.csv`` (each with its source). Per family and phase (tg =
decode, pp = prefill) it prints the rows, the median and the worst |predicted / measured - 1|.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from llamasplit.speed import calibration as C
from llamasplit.speed.data import coefficients

SPEED_JSON = Path(__file__).resolve().parents[1] / "llamasplit" / "data" / "speed.json"
TOKEN_US = 150.0
"""Per-token fixed cost of a CUDA device, a prior: every calibration row is a 32-layer model, so
the rows cannot tell a per-token from a per-layer cost. 150 us (graph launch, synchronisation, the
logits copy) with the fitted per-layer cost puts a 135M model on a 3090 at about 650 tok/s, where
published llama.cpp CUDA results top out for small models."""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help="write the fitted families into speed.json")
    args = ap.parse_args()
    rows = C.load_rows()
    stored = coefficients()
    base = {**stored, "families": {}}  # fit from the datasheet defaults, not from the last fit
    fams = C.fit_families(rows, base, token_us=TOKEN_US)
    fitted = {**base, "families": fams}
    # a kernel a family has no prefill row for takes the median efficiency of the families that have
    pooled = {}
    for path in ("mmq", "cublas"):
        got = [f[f"prefill_{path}_efficiency"] for f in fams.values() if f[f"prefill_{path}_efficiency"]]
        pooled[path] = round(statistics.median(got), 4)
    datasheet = {
        **base["datasheet"],
        "decode_bandwidth_efficiency": round(statistics.median(f["decode_bandwidth_efficiency"] for f in fams.values()), 4),
        "prefill_mmq_efficiency": pooled["mmq"],
        "prefill_cublas_efficiency": pooled["cublas"],
        "layer_us": round(statistics.median(f["layer_us"] for f in fams.values()), 2),
        "token_us": TOKEN_US,
    }
    for f in fams.values():
        sources = {}
        for path in ("mmq", "cublas"):
            key = f"prefill_{path}_efficiency"
            n = f.pop(f"prefill_{path}_rows", 0)
            if f[key] is None:
                f[key] = pooled[path]
                sources[path] = "no prefill row on this kernel: the median of the families that have"
            else:
                sources[path] = f"median over the family's {n} pp512 row(s) on this kernel"
        f["prefill_source"] = sources
    # a device without the rate its kernel needs: its FP16 figure at the median efficiency every
    # prefill row implies against that figure
    trial = {**fitted, "datasheet": datasheet}
    implied = [C.fallback_inverse(r, trial) for r in rows if not r.decode and not r.excluded and r.fp16_tflops]
    datasheet["prefill_fallback_efficiency"] = round(1 / statistics.median(implied), 4)
    fitted["datasheet"] = datasheet
    errs = C.errors(rows, fitted)
    summ = C.summary(errs)
    for key, s in summ.items():
        fam, phase = key.split("/")
        fams[fam].setdefault("errors", {})[phase] = s
    fitted["families"] = fams
    print(f"{'family/phase':<18} {'rows':>5} {'median':>8} {'worst':>8}   coefficients")
    for key, s in summ.items():
        fam = key.split("/")[0]
        f = fams[fam]
        print(f"{key:<18} {s['rows']:>5} {s['median_error']:>8.1%} {s['worst_error']:>8.1%}   "
              f"decode eff {f['decode_bandwidth_efficiency']:.3f}, prefill mmq {f['prefill_mmq_efficiency']:.3f} "
              f"cublas {f['prefill_cublas_efficiency']:.3f}, "
              f"layer {f['layer_us']:.1f} us ({f['layer_cost']}), token {f['token_us']:.0f} us")
    for phase in ("tg", "pp"):
        e = [x for r, _, x in errs if r.decode == (phase == "tg")]
        print(f"all/{phase:<14} {len(e):>5} {statistics.median(e):>8.1%} {max(e):>8.1%}")
    print("\nworst rows:")
    for r, p, e in sorted(errs, key=lambda x: -x[2])[:8]:
        print(f"  {r.gpu:<28} {r.n_gpus}x {r.shape:<13} {r.quant:<7} {r.test} fa={int(r.fa)}: "
              f"measured {r.t_s:9.1f}, predicted {p:9.1f} ({p / r.t_s - 1:+.0%})")
    if args.write:
        SPEED_JSON.write_text(json.dumps(fitted, indent=2) + "\n")
        print(f"\nwrote {SPEED_JSON}")


if __name__ == "__main__":
    main()
