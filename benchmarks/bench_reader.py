"""Our GGUF header reader against gguf.GGUFReader on the real fixtures, in one run; and whole-process
`llamasplit inspect`. Targets: >= 300x faster than GGUFReader on Gemma-3; inspect median <= 0.4 s.

    .venv/bin/python benchmarks/bench_reader.py
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

from gguf import GGUFReader

from llamasplit.model.profile import read_model
from llamasplit.realmodels import fetch_model


def best_of(fn, n: int) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> int:
    ok = True
    for name in ("smollm2", "gemma3"):
        path = fetch_model(name)
        ours = best_of(lambda: read_model(path), 7)
        theirs = best_of(lambda: GGUFReader(str(path)), 2)
        ratio = theirs / ours
        print(f"{name:8} read_model {ours * 1000:7.1f} ms   GGUFReader {theirs * 1000:8.1f} ms   speed-up {ratio:6.0f}x")
        if name == "gemma3" and ratio < 300:
            ok = False
    path = fetch_model("gemma3")
    exe = Path(sys.executable).with_name("llamasplit")
    runs = []
    for _ in range(7):
        t0 = time.perf_counter()
        subprocess.run([str(exe), "inspect", str(path), "--json"], check=True, capture_output=True)
        runs.append(time.perf_counter() - t0)
    med = statistics.median(runs)
    print(f"llamasplit inspect (whole process, gemma3): median {med:.3f} s over {len(runs)} runs")
    ok = ok and med <= 0.4
    print("targets met" if ok else "targets NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
