"""llama-server's real buffers with ``--spec-type draft-mtp``, against the estimate.

For the synthetic GLM-4.5-shaped glm4moe, the qwen3next and the DeepSeek-V3-shaped deepseek2 with
one NextN block each (tests/synth.py, tests/synth_mtp.py), on the CPU and on two RPC workers (every layer and ``-ngl 3``), two contexts,
flash attention on and off: llama-server's ``load_tensors`` / ``llama_kv_cache`` /
``llama_memory_recurrent`` / ``sched_reserve`` lines, split into the main context's and the MTP
context's (the lines after ``creating MTP draft context``; a buffer reserved twice counts at its
largest, as ggml keeps the largest), next to the estimate's figures (0.01 MiB). ``--record FILE``
writes them as the fast tier's golden file (tests/golden/mtp_server.json, read by tests/test_mtp.py).

    .venv/bin/python benchmarks/mtp_server.py [--record tests/golden/mtp_server.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from synth import write_glm4moe, write_qwen3next  # noqa: E402
from synth_mtp import write_deepseek2_mtp  # noqa: E402

from llamasplit.devices.device import Device  # noqa: E402
from llamasplit.llamacpp.binaries import LLAMA_CPP_PYTHON_VERSION, find_binary, want_amx  # noqa: E402
from llamasplit.memory.estimate import estimate  # noqa: E402
from llamasplit.memory.repack import CpuFeatures  # noqa: E402
from llamasplit.memory.settings import LlamaSettings  # noqa: E402
from llamasplit.model.profile import read_model  # noqa: E402
from llamasplit.runner.processes import free_port, rpc_workers, spawn  # noqa: E402

MiB = 1024 * 1024
RELEVANT_CPU_FLAGS = frozenset({"avx2", "avx512f", "amx_int8", "avx512_vnni", "asimd", "asimddp", "i8mm", "sve"})
"""The flags memory.repack looks at (as benchmarks/accuracy.py keeps them)."""
MODELS = {
    "glm4moe": lambda path, **kw: write_glm4moe(path, vocab="spm", **kw),
    "qwen3next": lambda path, **kw: write_qwen3next(path, n_nextn=1, **kw),
    "deepseek2": write_deepseek2_mtp,
}
"""The MTP archs whose MTP graph is replayed, each with one NextN block."""

_BUFFER = re.compile(r"(load_tensors|llama_kv_cache|sched_reserve|llama_memory_recurrent):\s+(\S+)\s+"
                     r"(model|KV|compute|RS) buffer size =\s+([\d.]+) MiB")


def server_buffers(path: Path, args: list[str], eps: list[str]) -> tuple[dict[str, float], dict[str, float]]:
    """(main context, MTP context) buffers as ``kind:device`` -> MiB; RPC workers by their index."""
    port = free_port()
    argv = [str(find_binary("llama-server")), "-m", str(path), "--host", "127.0.0.1", "--port", str(port), "-lv", "4",
            "--no-warmup", "-fit", "off", "-t", "1", *args]
    server = spawn(argv)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and "model loaded" not in server.log_text() and server.alive():
            time.sleep(0.2)
        log = server.log_text()
    finally:
        server.stop()
    main: dict[str, float] = {}
    mtp: dict[str, float] = {}
    part = main
    for line in log.splitlines():
        if "creating MTP draft context" in line:
            part = mtp
        m = _BUFFER.search(line)
        if not m:
            continue
        _, name, kind, mib = m.groups()
        if "[" in name:
            name = f"RPC{eps.index(name[name.index('[') + 1:-1])}"
        key = f"{kind}:{name}"
        if kind == "compute":
            part[key] = max(part.get(key, 0.0), float(mib))
        else:
            part[key] = round(part.get(key, 0.0) + float(mib), 2)
    if not mtp:
        raise SystemExit(f"llama-server made no MTP context: {log[-1500:]}")
    return main, mtp


def expected(path: Path, n_rpc: int, settings: LlamaSettings, cpu: CpuFeatures | None) -> tuple[dict, dict]:
    """The estimate in the same ``kind:device`` -> MiB form."""
    devices = [Device(id=f"rpc:{i}", name=f"RPC{i}", description="worker", backend="RPC", total_bytes=None,
                      free_bytes=None, host=f"127.0.0.1:{50052 + i}") for i in range(n_rpc)]
    est = estimate(read_model(path, require_data=False), devices, settings, cpu=cpu)
    main: dict[str, float] = {}
    mtp: dict[str, float] = {}
    for d in (*est.devices, est.host):
        name = "CPU" if d is est.host else d.name
        main[f"model:{'CPU_Mapped' if d is est.host else name}"] = (est.host_mapped_bytes if d is est.host else d.model_bytes) / MiB
        main[f"context:{name}"] = d.context_bytes / MiB
        main[f"compute:{name}"] = d.compute_bytes / MiB
        mtp[f"KV:{name}"] = d.companion_parts.get("mtp_context", 0) / MiB
        mtp[f"compute:{name}"] = d.companion_parts.get("mtp_compute", 0) / MiB
    return main, mtp


def observed_as_expected(main: dict[str, float]) -> dict[str, float]:
    """llama-server's KV and RS lines of a device summed as its context."""
    out = {k: v for k, v in main.items() if not k.startswith(("KV:", "RS:"))}
    for k, v in main.items():
        if k.startswith(("KV:", "RS:")):
            name = "context:" + k.split(":", 1)[1]
            out[name] = round(out.get(name, 0.0) + v, 2)
    return out


def grid():
    for (n_rpc, ngl), n_ctx, fa in itertools.product(((0, None), (2, None), (2, 3)), (4096, 16384), ("on", "off")):
        yield n_rpc, ngl, n_ctx, fa


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--record", type=Path, default=None, help="write the golden file")
    opts = parser.parse_args()
    cpu = CpuFeatures.local(amx_built=want_amx())
    records = []
    n = ok = 0
    with tempfile.TemporaryDirectory(prefix="llamasplit-mtp-") as tmp, rpc_workers(2) as workers:
        eps = [w.endpoint for w in workers]
        for family, write in MODELS.items():
            path = write(Path(tmp) / f"{family}.gguf")
            for n_rpc, ngl, n_ctx, fa in grid():
                settings = LlamaSettings(n_ctx=n_ctx, flash_attn=fa, n_gpu_layers=ngl,
                                         tensor_split=(1, 1) if n_rpc else None, spec_type="draft-mtp")
                args = settings.to_args() + (["--rpc", ",".join(eps[:n_rpc])] if n_rpc else [])
                real_main, real_mtp = server_buffers(path, args, eps)
                est_main, est_mtp = expected(path, n_rpc, settings, cpu)
                seen = observed_as_expected(real_main)
                for key, want in {**{f"main {k}": v for k, v in est_main.items()},
                                  **{f"mtp {k}": v for k, v in est_mtp.items()}}.items():
                    ctx, k = key.split(" ", 1)
                    got = (seen if ctx == "main" else real_mtp).get(k, 0.0)
                    n += 1
                    same = abs(got - round(want, 2)) <= 0.011
                    ok += same
                    if not same:
                        print(f"{family} rpc{n_rpc} ngl={ngl} c={n_ctx} fa={fa} {key}: llama-server {got:.2f}, estimate {want:.2f}")
                command = ["llama-server", "-m", f"{{{family}}}", *args[:-2]] if n_rpc else ["llama-server", "-m", f"{{{family}}}", *args]
                if n_rpc:
                    command += ["--rpc", ",".join(f"{{rpc{i}}}" for i in range(n_rpc))]
                records.append({"family": family, "n_rpc": n_rpc, "settings": settings.to_dict(),
                                "command": " ".join(command), "main": seen, "mtp": real_mtp})
    print(f"{ok}/{n} buffer figures within 0.01 MiB of llama-server's")
    if opts.record is not None:
        doc = {
            "about": "llama-server's buffer lines (MiB, %.2f) with --spec-type draft-mtp, main context and MTP "
                     "context apart (KV and RS lines summed as context:DEVICE); recorded by benchmarks/mtp_server.py "
                     "--record; {family} is tests/synth.py's model (benchmarks/mtp_server.py MODELS), {rpcN} a "
                     "ggml-rpc-server on loopback.",
            "llama_cpp": f"the llama.cpp vendored in llama-cpp-python {LLAMA_CPP_PYTHON_VERSION}",
            "cpu_flags": sorted(f for f in (cpu.flags if cpu else ()) if f in RELEVANT_CPU_FLAGS),
            "cpu_machine": cpu.machine if cpu else None,
            "amx_built": bool(cpu and cpu.amx_built),
            "records": records,
        }
        opts.record.write_text(json.dumps(doc, indent=1) + "\n")
        print(f"wrote {len(records)} records to {opts.record}")
    return 0 if ok == n else 1


if __name__ == "__main__":
    raise SystemExit(main())
