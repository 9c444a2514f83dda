"""A draft model and LoRA adapters against llama-server's real buffers (pinned llama.cpp).

The main model is SmolLM2 (Q4_1, 30 blocks, vocab 49152); the draft a 1-block llama (n_embd 128,
heads of 64, so a q8_0 cache fits them) with
SmolLM2's tokenizer copied (``synth_spec.write_draft_like``: llama.cpp's vocabulary check passes,
``--spec-type draft-simple`` drafts with it); the adapter rank 8 on every ``attn_q``, ``attn_v`` and
``ffn_down``. On the CPU and over two RPC workers, with the main model and the draft split or
partly on the host, every draft buffer line (after "loading draft model") and every LoRA buffer
line is the estimate's: weights and KV the same MiB as printed (``%.2f``), compute within
max(3 %, 8 MiB). ``run --check`` then plans, launches and compares the same through the CLI.
"""

from __future__ import annotations

import re
import time

import pytest
from procs import endpoints, free_port, rpc_workers, spawn, server_load_log
from synth_spec import lora_targets, write_draft_like, write_lora

from llamasplit.cli import main
from llamasplit.devices.device import Device
from llamasplit.llamacpp.binaries import find_binary
from llamasplit.memory.companions import Companions, Draft, DraftSpec, estimate_with_companions, read_lora
from llamasplit.memory.settings import LlamaSettings
from llamasplit.model.profile import read_model
from llamasplit.runner.verify import DRAFT_MARK

pytestmark = pytest.mark.llamacpp

MiB = 1024 * 1024
_BUFFER = re.compile(r"(\w+):\s+(\S+)\s+(model|KV|compute|LoRA) buffer size =\s+([\d.]+) MiB")
_KIND = {"model": "model", "KV": "context", "compute": "compute", "LoRA": "lora"}


@pytest.fixture(scope="module")
def workers():
    with rpc_workers(2) as ws:
        eps = endpoints(ws)
        _ENDPOINTS.update({ep: f"RPC{i}" for i, ep in enumerate(eps)})
        yield eps


@pytest.fixture(scope="module")
def files(tmp_path_factory, smollm2_path):
    tmp = tmp_path_factory.mktemp("companions")
    base = read_model(smollm2_path)
    return {
        "draft": write_draft_like(smollm2_path, tmp / "draft.gguf", n_embd=128, n_head=2, n_head_kv=1, n_ff=256),
        "lora": write_lora(tmp / "lora.gguf", arch="llama", targets=lora_targets(base)),
    }


def _devices(eps: list[str]) -> list[Device]:
    """The workers' devices as llama.cpp names them (``RPC0``, ``RPC1``: -devd takes these)."""
    return [Device(id=f"rpc:{ep}#0", name=f"RPC{i}", description=ep, backend="RPC", total_bytes=None,
                   free_bytes=None, host=ep) for i, ep in enumerate(eps)]


_ENDPOINTS: dict[str, str] = {}


def _owner(buffer: str) -> str:
    """``Host``, or the device name of an ``RPC0[host:port]`` buffer (by its endpoint)."""
    if buffer.startswith("CPU"):
        return "Host"
    return _ENDPOINTS.get(buffer[buffer.index("[") + 1 : -1], buffer) if "[" in buffer else buffer


def _server_buffers(model, args: list[str]) -> dict[tuple[str, str, str], float]:
    """llama-server's buffer lines once it listens: (``main``/``draft``, owner, kind) -> MiB; a
    compute buffer reserved again (after the LoRA is set) replaces the first."""
    log = server_load_log(model, args, timeout_s=120)
    assert "llama_server: model loaded" in log, log[-3000:]
    out: dict[tuple[str, str, str], float] = {}
    part = "main"
    for line in log.splitlines():
        if DRAFT_MARK in line:
            part = "draft"
        m = _BUFFER.search(line)
        if m:
            key = (part, _owner(m.group(2)), _KIND[m.group(3)])
            if key[2] == "compute":
                out[key] = float(m.group(4))  # a later reserve replaces it
            else:
                out[key] = out.get(key, 0.0) + float(m.group(4))
    return out


def _within(kind: str, predicted_bytes: int, actual_mib: float) -> bool:
    if kind == "compute":
        return abs(actual_mib * MiB - predicted_bytes) <= max(0.03 * predicted_bytes, 8 * MiB)
    return f"{predicted_bytes / MiB:.2f}" == f"{actual_mib:.2f}"


CASES = {
    "cpu": dict(n_rpc=0),
    "rpc": dict(n_rpc=2, ts=(1, 2)),
    "rpc-ngl10": dict(n_rpc=2, ts=(1, 2), ngl=10),
    "rpc-ngld0": dict(n_rpc=2, ts=(1, 2), ngld=0),
    "rpc-devd": dict(n_rpc=2, ts=(1, 2), devd=1),
    "rpc-ngld1-q8": dict(n_rpc=2, ts=(1, 2), ngld=1, ctkd="q8_0", fa="on"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_draft_buffers_match_llama_server(case, workers, files, smollm2_path):
    c = CASES[case]
    eps = workers[: c["n_rpc"]]
    devices = _devices(eps)
    devd = (devices[c["devd"]].name,) if "devd" in c else None
    spec = DraftSpec(str(files["draft"]), n_gpu_layers=c.get("ngld"), devices=devd, type_k=c.get("ctkd", "f16"))
    s = LlamaSettings(n_ctx=4096, n_gpu_layers=c.get("ngl"), tensor_split=c.get("ts"), spec_type="draft-simple",
                      flash_attn=c.get("fa", "auto"))
    comp = Companions(draft=Draft(read_model(files["draft"]), spec))
    est = estimate_with_companions(read_model(smollm2_path), devices, s, comp)
    # --rpc before -devd: llama.cpp resolves -devd's names while it parses, once --rpc added the devices
    args = s.to_args() + (["--rpc", ",".join(eps)] if eps else []) + comp.to_args()
    real = _server_buffers(smollm2_path, args)
    predicted = {}
    for e in (*est.devices, est.host):
        for part in ("model", "context", "compute"):
            n = e.companion_parts.get(f"draft_{part}", 0)
            if n:
                predicted[("draft", e.name, part)] = n
    got = {k: v for k, v in real.items() if k[0] == "draft"}
    assert sorted(got) == sorted(predicted), (got, predicted)
    print(case, {k[1:]: (round(predicted[k] / MiB, 2), got[k]) for k in sorted(predicted)})
    bad = {k: (predicted[k] / MiB, got[k]) for k in predicted if not _within(k[2], predicted[k], got[k])}
    assert not bad, bad
    if "devd" in c:  # pinned: nothing of the draft on the other worker
        assert not any(k[1] == devices[0].name for k in got)


def test_lora_buffers_match_llama_server(workers, files, smollm2_path):
    devices = _devices(workers)
    s = LlamaSettings(n_ctx=4096, n_gpu_layers=10, tensor_split=(1, 2))
    adapter = read_lora(files["lora"])
    est = estimate_with_companions(read_model(smollm2_path), devices, s, Companions(loras=(adapter,)))
    real = _server_buffers(smollm2_path, s.to_args() + adapter.to_args() + ["--rpc", ",".join(workers)])
    # blocks 20-29 on the workers (-ngl 10: the output layer and the last 9 blocks... -ts 1,2), the rest's
    # adapters in the host's CPU_Mapped buffer type, as their base tensors
    for e in (*est.devices, est.host):
        assert _within("lora", e.companion_parts["lora"], real[("main", e.name, "lora")]), e.name
        # the compute buffer reserved again with the adapter in the graph
        total = e.compute_bytes + e.companion_parts.get("lora_compute", 0)
        assert _within("compute", total, real[("main", e.name, "compute")]), e.name


def test_run_check_plans_and_verifies_draft_and_lora_over_rpc(workers, files, smollm2_path, capsys):
    port = free_port()
    rc = main(["run", str(smollm2_path), "--rpc", ",".join(workers), "-ts", "1,2", "-c", "4096",
               "-md", str(files["draft"]), "-devd", "RPC1", "--lora", str(files["lora"]), "--port", str(port),
               "--check", "--", "-t", "1"])
    out, err = capsys.readouterr()
    assert rc == 0, err[-3000:]
    table = err[err.index("predicted vs actual"):]
    for kind in ("draft_model", "draft_context", "draft_compute", "lora"):
        rows = [line for line in table.splitlines() if f" {kind} " in line]
        assert rows and all(line.endswith("ok") for line in rows), (kind, table)
    # -devd RPC1 (llama.cpp's name for the second worker's device): nothing of the draft on RPC0
    assert not [line for line in table.splitlines() if line.startswith("RPC0") and " draft_" in line], table
    assert "all within tolerance" in table


def _server_log(model, args: list[str]) -> str:
    """llama-server's log once it listens or has exited."""
    port = free_port()
    argv = [str(find_binary("llama-server")), "-m", str(model), "--host", "127.0.0.1", "--port", str(port),
            "-lv", "4", "-fit", "off", "-t", "1", "--no-warmup", *args]
    server = spawn(argv)
    try:
        deadline = time.monotonic() + 60
        while server.alive() and "llama_server: listening" not in server.log_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        return server.log_text()
    finally:
        server.stop()


def test_llama_cpp_rejects_what_the_plan_rejects(files, smollm2_path, tmp_path, capsys):
    # a draft without SmolLM2's tokenizer (vocab type none): llama-server keeps it loaded but cannot
    # draft with it; a LoRA written for another arch: llama-server exits
    other = write_draft_like(smollm2_path, tmp_path / "other.gguf", vocab_size=49152)
    qwen = write_lora(tmp_path / "qwen.gguf", arch="qwen2", targets=lora_targets(read_model(smollm2_path), ("attn_q",)))
    log = _server_log(smollm2_path, ["-md", str(other), "--spec-type", "draft-simple"])
    assert "the target and draft vocabs are not compatible" in log
    assert "failed to initialize speculative decoding context" in log
    assert main(["plan", str(smollm2_path), "-c", "4096", "-md", str(other)]) == 2
    assert "common_speculative_are_compatible" in capsys.readouterr().err
    log = _server_log(smollm2_path, ["--lora", str(qwen)])
    assert "model arch and LoRA arch mismatch" in log and "listening" not in log
    assert main(["plan", str(smollm2_path), "-c", "4096", "--lora", str(qwen)]) == 2
    assert "LoRA arch mismatch" in capsys.readouterr().err


def test_spec_draft_n_max_sizes_the_main_output_device(workers, files, smollm2_path):
    # server_output_limits: 4 slots x (1 + 64) output rows; the output device (RPC1) reserves their
    # logits (measured 69.86 MiB against 32.91 at the default 3)
    devices = _devices(workers)
    s = LlamaSettings(n_ctx=4096, tensor_split=(1, 2), spec_type="draft-simple", spec_draft_n_max=64)
    comp = Companions(draft=Draft(read_model(files["draft"]), DraftSpec(str(files["draft"]), n_max=64)))
    est = estimate_with_companions(read_model(smollm2_path), devices, s, comp)
    real = _server_buffers(smollm2_path, s.to_args() + ["--rpc", ",".join(workers)] + comp.to_args())
    for e in (*est.devices, est.host):
        for kind in ("model", "context", "compute"):
            predicted = getattr(e, f"{kind}_bytes")
            if predicted or ("main", e.name, kind) in real:
                assert _within(kind, predicted, real[("main", e.name, kind)]), (e.name, kind, predicted / MiB, real)
    assert real[("main", "RPC1", "compute")] > 60  # the 260 rows' logits, not 16
