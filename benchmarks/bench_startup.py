"""Whole-process start-up of `llamasplit inspect` and `llamasplit plan` on a local file, against
`python -c pass` in the same run (issue #14). Target: each command's median at most 0.3 s, cold
(first run after the header cache is emptied) reported separately from warm.

    .venv/bin/python benchmarks/bench_startup.py [--runs 9]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from llamasplit.realmodels import fetch_model

TARGET_S = 0.3


def timed(argv: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=9)
    args = ap.parse_args()
    exe = str(Path(sys.executable).with_name("llamasplit"))
    ok = True
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "LLAMASPLIT_CACHE": cache}  # an empty header cache
        # as installed: bytecode cached (a shell with PYTHONDONTWRITEBYTECODE=1 recompiles every module)
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        subprocess.run([exe, "--version"], check=True, stdout=subprocess.DEVNULL, env=env)
        baseline = statistics.median(timed([sys.executable, "-c", "pass"], env) for _ in range(args.runs))
        print(f"python -c pass: median {baseline:.3f} s")
        for name in ("smollm2", "gemma3"):
            path = str(fetch_model(name))
            for cmd in (["inspect", path, "--json"], ["plan", path, "--json"]):
                cold = timed([exe, *cmd], env)  # empty header cache: parses the file
                warm = statistics.median(timed([exe, *cmd], env) for _ in range(args.runs))
                met = warm <= TARGET_S
                ok = ok and met
                print(f"llamasplit {cmd[0]:7} {name:8}: first {cold:.3f} s, then median {warm:.3f} s "
                      f"({warm / baseline:4.1f}x python -c pass, {warm - baseline:.3f} s over it) "
                      f"{'ok' if met else 'OVER'} (target {TARGET_S} s)")
    print("targets met" if ok else "targets NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
