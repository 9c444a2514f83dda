"""The multimodal projector's predicted buffers against llama-server's real ones.

Synthetic projectors (tests/synth.py ``write_gemma3_mmproj``: gemma3, idefics3 and LLaVA-1.5 ``mlp``
towers, F16 and Q8_0, one at SigLIP-so400m's width and image: 1152 wide, 16 heads, 896 pixels,
4096 patches) are loaded beside SmolLM2 by the pinned llama-server with flash attention auto and
off, on the CPU and on one loopback RPC worker (the text model on the CPU, ``-ngl 0``):

- on the worker, ``GGML_RPC_DEBUG`` logs every ``alloc_buffer`` in bytes: the projector's weights,
  then its warmup's compute buffer;
- llama-server logs ``reserve_compute_meta: %10s compute buffer size`` per backend (0.01 MiB) and
  ``load_hparams: model size`` (the unpadded weights).

Pixtral's warmup image (16 x 16 merged patches) is smaller than the largest it takes (32 x 32):
with ``--growth`` one chat request with a largest-size PNG is sent to each Pixtral run on the
worker, whose next ``alloc_buffer`` is the compute buffer grown to that image (row ``grown``;
~15 s each: SmolLM2 then reads the 1024 image tokens on one thread).

Targets: weights to the MiB, compute within max(3 %, 8 MiB). Prints one row per buffer and the
count within target.

    .venv/bin/python benchmarks/mmproj_accuracy.py [--quick] [--growth]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import struct
import sys
import tempfile
import time
import urllib.request
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from synth import write_gemma3_mmproj  # noqa: E402

from llamasplit.devices.device import Device  # noqa: E402
from llamasplit.llamacpp.binaries import find_binary  # noqa: E402
from llamasplit.memory.mmproj import estimate_projector  # noqa: E402
from llamasplit.model.projector import read_projector  # noqa: E402
from llamasplit.realmodels import fetch_model  # noqa: E402
from llamasplit.runner.processes import free_port, rpc_workers, spawn  # noqa: E402

MiB = 1024 * 1024
SPECS = {
    "gemma3-a": {},
    "gemma3-b-q8": dict(n_embd=96, n_head=3, n_ff=200, n_layer=1, image_size=512, patch_size=16, n_merge=2,
                        matrix_type="Q8_0"),
    "gemma3-so400m-width": dict(n_embd=1152, n_head=16, n_ff=4304, n_layer=1, image_size=896, patch_size=14),
    "idefics3-pad": dict(proj_type="idefics3", n_merge=4, image_size=480, patch_size=16, n_embd=72, n_head=4,
                         n_ff=160, n_layer=2),
    "idefics3-q8": dict(proj_type="idefics3", n_merge=4, image_size=512, patch_size=16, n_embd=64, n_head=2,
                        n_ff=128, n_layer=1, matrix_type="Q8_0"),
    "llava-a": dict(proj_type="mlp", image_size=336, patch_size=14, n_embd=64, n_head=4, n_ff=256, n_layer=3),
    "llava-q8": dict(proj_type="mlp", image_size=224, patch_size=16, n_embd=96, n_head=2, n_ff=192, n_layer=2,
                     matrix_type="Q8_0"),
    "pixtral": dict(proj_type="pixtral", n_merge=1, image_size=512, patch_size=16, n_embd=64, n_head=4, n_ff=128,
                    n_layer=2),
    "pixtral-merger": dict(proj_type="pixtral", n_merge=2, image_size=512, patch_size=14, n_embd=96, n_head=2,
                           n_ff=160, n_layer=1),
}
_ALLOC = re.compile(r"\[alloc_buffer\] device: \d+, size: (\d+) ->")
_COMPUTE = re.compile(r"reserve_compute_meta:\s+(\S+) compute buffer size =\s+([\d.]+) MiB")
_MODEL = re.compile(r"load_hparams: model size:\s+([\d.]+) MiB")


def _png(side: int) -> bytes:
    """A side x side RGB PNG (zlib, no imaging library)."""
    row = bytes((x * 7) % 256 for x in range(side) for _ in range(3))
    raw = b"".join(b"\x00" + row for _ in range(side))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def server_log(model: Path, mmproj: Path, args: list[str], image: int | None = None) -> str:
    port = free_port()
    argv = [str(find_binary("llama-server")), "-m", str(model), "--mmproj", str(mmproj), "--host", "127.0.0.1",
            "--port", str(port), "-lv", "4", "-fit", "off", "-t", "1", "-c", "2048", *args]
    server = spawn(argv)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            log = server.log_text()
            if "llama_server: model loaded" in log or not server.alive():
                break
            time.sleep(0.2)
        if image:
            body = {"max_tokens": 1, "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(_png(image)).decode()}},
                {"type": "text", "text": "hi"}]}]}
            req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
            urllib.request.urlopen(req, timeout=300).read()
        return server.log_text()
    finally:
        server.stop()


def within(kind: str, predicted: int, actual: int) -> bool:
    if kind == "weights":
        return abs(predicted - actual) < MiB
    if kind == "grown":
        return abs(predicted - actual) <= max(0.03 * actual, 8 * MiB)
    return abs(predicted - actual) <= max(0.03 * actual, 8 * MiB)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="skip the so400m-width projector")
    ap.add_argument("--growth", action="store_true", help="send Pixtral runs a largest-size image (slow)")
    args = ap.parse_args()
    smollm2 = fetch_model("smollm2")
    rows: list[tuple[str, str, str, str, int, int, bool]] = []
    with tempfile.TemporaryDirectory() as tmp, rpc_workers(1, env={**os.environ, "GGML_RPC_DEBUG": "1"},
                                                           max_log_bytes=1 << 40) as ws:
        ep = ws[0].endpoint
        rpc = Device(id=f"rpc:{ep}#0", name="RPC0", description=ep, backend="RPC", total_bytes=None,
                     free_bytes=None, host=ep)
        for name, spec in SPECS.items():
            if args.quick and "so400m" in name:
                continue
            path = write_gemma3_mmproj(Path(tmp) / f"mmproj-{name}.gguf", **spec)
            profile = read_projector(path)
            for fa in ("auto", "off"):
                # the CPU alone
                log = server_log(smollm2, path, ["-fa", fa])
                est = estimate_projector(profile, [], flash_attn=fa)
                got = dict(_COMPUTE.findall(log))
                model = _MODEL.findall(log)
                rows.append((name, fa, "CPU", "weights", est.weights_bytes, round(float(model[0]) * MiB) if model else -1,
                             False))
                rows.append((name, fa, "CPU", "compute", est.compute_bytes or 0, round(float(got.get("CPU", -1)) * MiB),
                             False))
                # one RPC worker
                start = len(ws[0].log_text())
                est = estimate_projector(profile, [rpc], flash_attn=fa)
                grow = args.growth and est.growth_bytes > 0
                log = server_log(smollm2, path, ["--rpc", ep, "-ngl", "0", "-fa", fa],
                                 image=est.largest_image if grow else None)
                time.sleep(0.3)
                allocs = [int(n) for n in _ALLOC.findall(ws[0].log_text()[start:])]
                if grow:
                    rows.append((name, fa, "RPC0", "grown", (est.compute_bytes or 0) + est.growth_bytes,
                                 allocs[2] if len(allocs) > 2 else -1, False))
                got = dict(_COMPUTE.findall(log))
                rows.append((name, fa, "RPC0", "weights", est.weights_bytes, allocs[0] if allocs else -1, False))
                rows.append((name, fa, "RPC0", "compute", est.compute_bytes or 0, allocs[1] if len(allocs) > 1 else -1,
                             False))
                rows.append((name, fa, "CPU(+RPC)", "compute", est.host_compute_bytes or 0,
                             round(float(got.get("CPU", -1)) * MiB), False))
    print(f"{'projector':<22} {'-fa':<5} {'where':<10} {'buffer':<8} {'predicted MiB':>14} {'actual MiB':>11}  ok")
    ok_n = 0
    for name, fa, where, kind, pred, act, _ in rows:
        ok = act >= 0 and within(kind, pred, act)
        ok_n += ok
        print(f"{name:<22} {fa:<5} {where:<10} {kind:<8} {pred / MiB:>14.2f} {act / MiB:>11.2f}  {'ok' if ok else 'OFF'}")
    print(f"{ok_n}/{len(rows)} within target (weights to the MiB, compute within max(3 %, 8 MiB))")
    return 0 if ok_n == len(rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
