"""`llamasplit plan URL` on loopback for SmolLM2 and Gemma-3 (262k-token vocabulary): body bytes the
server sent (counted server-side) against the header's size, and whole-process time, cold (empty
header cache) and warm (cached: a HEAD only). The same plan of the local file is timed in the same
run as the baseline.

Targets: bytes <= 1.2 x header + one read chunk; cold whole process <= 1 s on this 2-core machine.

    .venv/bin/python benchmarks/bench_remote.py
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from http_servers import StaticServer  # noqa: E402

from llamasplit.model.gguf_reader import read_header  # noqa: E402
from llamasplit.model.remote import RemoteOptions  # noqa: E402
from llamasplit.realmodels import fetch_model  # noqa: E402

RUNS = 5
ARGS = ["--fleet", "3090,3060-12g", "--json"]


def timed(argv: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True, env=env)
    return time.perf_counter() - t0


def main() -> int:
    exe = str(Path(sys.executable).with_name("llamasplit"))
    chunk = RemoteOptions().chunk_bytes
    ok = True
    scratch = Path(tempfile.mkdtemp(prefix="bench-remote-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update({"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HOME": str(scratch / "hf")})
    try:
        for name in ("smollm2", "gemma3"):
            path = fetch_model(name)
            header = read_header(path).header_bytes
            with StaticServer({"/m/model.gguf": path}) as srv:
                url = srv.url("/m/model.gguf")
                cold, sent, requests, warm, local, warm_bytes = [], [], [], [], [], 0
                local_env = {**env, "LLAMASPLIT_CACHE": str(scratch / f"local-{name}")}
                for i in range(RUNS):  # interleaved, so a busy machine slows all three alike
                    run_env = {**env, "LLAMASPLIT_CACHE": str(scratch / f"cold-{name}-{i}")}
                    srv.log.clear()
                    cold.append(timed([exe, "plan", url, *ARGS], run_env))
                    sent.append(srv.log.body_bytes)
                    requests.append(len(srv.log.entries))
                    srv.log.clear()
                    warm.append(timed([exe, "plan", url, *ARGS], run_env))
                    warm_bytes += srv.log.body_bytes
                    local.append(timed([exe, "plan", str(path), *ARGS], local_env))
            limit = 1.2 * header + chunk
            bytes_ok = max(sent) <= limit
            time_ok = statistics.median(cold) <= 1.0
            ok = ok and bytes_ok and time_ok
            print(f"{name:8} header {header:>9} B   sent {max(sent):>9} B = {max(sent) / header:.3f} x header "
                  f"(limit {limit:.0f} B: {'ok' if bytes_ok else 'OVER'}) in {max(requests)} requests (HEAD included)")
            print(f"{'':8} plan URL cold median {statistics.median(cold):.3f} s ({'ok' if time_ok else 'OVER 1 s'}), "
                  f"warm (header cache, {warm_bytes} body bytes) {statistics.median(warm):.3f} s, "
                  f"local file {statistics.median(local):.3f} s (remote costs "
                  f"+{statistics.median(cold) - statistics.median(local):.3f} s cold)   [{RUNS} runs each]")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print("targets met" if ok else "targets NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
