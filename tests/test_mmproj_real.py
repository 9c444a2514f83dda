"""The multimodal projector against the pinned llama-server: the plan's projector weights and
warmup compute are the buffers llama.cpp allocates for two synthetic gemma3 projectors, an
idefics3 one, a LLaVA-1.5 one and a Pixtral one (``synth.write_gemma3_mmproj``) loaded beside SmolLM2.

- Over one RPC worker (the text model on the CPU, ``-ngl 0``, so every buffer on the worker is
  the projector's): the worker's ``GGML_RPC_DEBUG`` ``alloc_buffer`` lines give the weights and
  the compute buffer in bytes; llama-server's ``reserve_compute_meta`` line gives the CPU's part.
- On the CPU alone: ``reserve_compute_meta: CPU compute buffer size`` (0.01 MiB) and
  ``load_hparams: model size``; and ``run --check`` reads the projector's lines apart from the model's.
"""

from __future__ import annotations

import os
import re
import time

import pytest
from synth import write_gemma3_mmproj

from llamasplit.devices.device import Device
from llamasplit.memory.mmproj import estimate_projector
from llamasplit.model.projector import read_projector
from procs import endpoints, free_port, rpc_workers, server_load_log

pytestmark = pytest.mark.llamacpp

MiB = 1024 * 1024
_ALLOC = re.compile(r"\[alloc_buffer\] device: \d+, size: (\d+) ->")
_CLIP_COMPUTE = re.compile(r"reserve_compute_meta:\s+(\S+) compute buffer size =\s+([\d.]+) MiB")
_CLIP_MODEL = re.compile(r"load_hparams: model size:\s+([\d.]+) MiB")


@pytest.fixture(scope="module")
def projectors(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mmproj")
    return {
        "a": write_gemma3_mmproj(tmp / "mmproj-a-f16.gguf"),
        "b": write_gemma3_mmproj(tmp / "mmproj-b-q8_0.gguf", n_embd=96, n_head=3, n_ff=200, n_layer=1,
                                 image_size=512, patch_size=16, n_merge=2, matrix_type="Q8_0"),
        # idefics3 (SmolVLM): a 30-patch side, padded to 32 by the pixel shuffle
        "i": write_gemma3_mmproj(tmp / "mmproj-i-f16.gguf", proj_type="idefics3", n_merge=4, image_size=480,
                                 patch_size=16, n_embd=72, n_head=4, n_ff=160, n_layer=2),
        # Pixtral: 2D rope, RMS norms, SwiGLU, the [IMG_BREAK] rows; its warmup is 16 x 16 patches
        "p": write_gemma3_mmproj(tmp / "mmproj-p-f16.gguf", proj_type="pixtral", n_merge=1, image_size=512,
                                 patch_size=16, n_embd=64, n_head=4, n_ff=128, n_layer=2),
        # LLaVA-1.5 (mlp): class embedding, learned positions by get_rows, the last block not run
        "l": write_gemma3_mmproj(tmp / "mmproj-l-f16.gguf", proj_type="mlp", image_size=336, patch_size=14,
                                 n_embd=64, n_head=4, n_ff=256, n_layer=3),
    }


@pytest.fixture(scope="module")
def worker():
    env = {**os.environ, "GGML_RPC_DEBUG": "1"}  # the worker logs each alloc_buffer with its size
    with rpc_workers(1, env=env, max_log_bytes=1 << 40) as ws:
        yield ws[0]


def _server_log(model, mmproj, args: list[str]) -> str:
    """llama-server's log up to "model loaded" (the projector loads, and reserves, before it)."""
    log = server_load_log(model, ["--mmproj", str(mmproj), "-c", "1024", *args])
    assert "loaded multimodal model" in log, log[-3000:]
    return log


def _rpc_device(ep: str) -> Device:
    return Device(id=f"rpc:{ep}#0", name="RPC0", description=ep, backend="RPC", total_bytes=None, free_bytes=None, host=ep)


@pytest.mark.parametrize("which, fa", [("a", "auto"), ("a", "off"), ("b", "on"), ("b", "off"), ("i", "auto"), ("i", "off"),
                                      ("l", "auto"), ("l", "off"), ("p", "auto"), ("p", "off")])
def test_projector_on_an_rpc_worker_is_what_llama_server_allocates(smollm2_path, projectors, worker, which, fa):
    ep = endpoints([worker])[0]
    start = len(worker.log_text())
    log = _server_log(smollm2_path, projectors[which], ["--rpc", ep, "-ngl", "0", "-fa", fa])
    deadline = time.monotonic() + 10.0  # the worker's last lines reach its log a moment later
    while len(_ALLOC.findall(worker.log_text()[start:])) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)  # and no third buffer follows
    allocs = [int(n) for n in _ALLOC.findall(worker.log_text()[start:])]
    assert f"CLIP using RPC0[{ep}] backend" in log
    est = estimate_projector(read_projector(projectors[which]), [_rpc_device(ep)], flash_attn=fa)
    assert est.device_index == 0
    # the projector's two buffers, in order: weights, then the warmup's compute buffer
    assert allocs == [est.weights_bytes, est.compute_bytes]
    printed = dict(_CLIP_COMPUTE.findall(log))
    assert printed["CPU"] == f"{est.host_compute_bytes / MiB:.2f}"


@pytest.mark.parametrize("which, fa", [("a", "auto"), ("b", "off"), ("p", "auto")])
def test_projector_on_the_cpu_is_what_llama_server_allocates(smollm2_path, projectors, which, fa):
    log = _server_log(smollm2_path, projectors[which], ["-fa", fa])
    assert "CLIP using CPU backend" in log
    p = read_projector(projectors[which])
    est = estimate_projector(p, [], flash_attn=fa)
    assert dict(_CLIP_COMPUTE.findall(log)) == {"CPU": f"{est.compute_bytes / MiB:.2f}"}
    assert _CLIP_MODEL.findall(log) == [f"{p.weight_bytes / MiB:.2f}"]
    assert abs(est.weights_bytes - p.weight_bytes) < MiB  # the buffer pads each tensor to 32 bytes


def test_run_check_compares_the_projector(smollm2_path, projectors, capsys):
    from llamasplit.cli import main

    port = free_port()
    rc = main(["run", str(smollm2_path), "--mmproj", str(projectors["a"]), "-c", "1024", "-fa", "off",
               "--port", str(port), "--check", "--", "-t", "1"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    table = err[err.index("predicted vs actual"):].splitlines()
    rows = {line.split()[1]: line for line in table if line.startswith("Host")}
    assert rows["CPU"].endswith("ok")  # the model's own compute line is not the projector's
    assert "predicted      0.52 actual      0.52  ok" in rows["mmproj_model"]
    assert "predicted     17.50 actual     17.50  ok" in rows["mmproj_compute"]


def test_run_check_over_a_worker_puts_the_projector_there(smollm2_path, projectors, worker, capsys):
    from llamasplit.cli import main

    ep = endpoints([worker])[0]
    rc = main(["run", str(smollm2_path), "--rpc", ep, "--mmproj", str(projectors["l"]), "-c", "1024",
               "--port", str(free_port()), "--check", "--", "-t", "1"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    table = err[err.index("predicted vs actual"):].splitlines()
    rows = {tuple(line.split()[:2]): line for line in table if line.startswith(("RPC0", "Host"))}
    assert all(line.endswith("ok") for line in rows.values()) and len(rows) == 5, table
    # the model's layers and the projector share the worker; the image input stays on the host
    assert {k for k in rows} == {("RPC0", ep), ("Host", "CPU"), ("RPC0", "mmproj_model"), ("RPC0", "mmproj_compute"),
                                 ("Host", "mmproj_compute")}
