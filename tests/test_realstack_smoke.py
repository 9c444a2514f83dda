"""The foundation: real llama.cpp over real RPC devices, and llama-cpp-python, on real models."""

from __future__ import annotations

import re

import pytest

from procs import endpoints, rpc_workers, run_to_end

pytestmark = pytest.mark.llamacpp

BUFFER_RE = re.compile(r"RPC\d+\[([^\]]+)\]\s+(model|KV|compute) buffer size =\s+([0-9.]+) MiB")


def test_completion_over_two_rpc_workers(smollm2_path, llama_bin):
    with rpc_workers(2) as workers:
        eps = endpoints(workers)
        argv = [
            str(llama_bin("llama-completion")), "-m", str(smollm2_path), "--rpc", ",".join(eps),
            "-ngl", "99", "-ts", "1,2", "-c", "1024", "-n", "8", "-p", "The capital of France is",
            "-no-cnv", "--temp", "0", "-lv", "4", "-t", "1",
        ]
        result = run_to_end(argv, timeout_s=180)
        assert all(w.alive() for w in workers)
    assert result.returncode == 0, result.stderr[-2000:]
    # RPC buffers are named by endpoint: "RPC0[127.0.0.1:PORT] model buffer size = 23.25 MiB"
    found: dict[tuple[str, str], float] = {}
    for m in BUFFER_RE.finditer(result.stderr):
        found[(m.group(1), m.group(2))] = float(m.group(3))
    for ep in eps:
        for kind in ("model", "KV", "compute"):
            assert found.get((ep, kind), 0) > 0, f"{ep} reported no {kind} buffer: {sorted(found)}"
    # -ts 1,2 over 31 offloaded layers (30 blocks + output): the second worker gets about twice the weights
    assert 1.5 < found[(eps[1], "model")] / found[(eps[0], "model")] < 3.5
    text = result.stdout.split("The capital of France is", 1)[-1]
    assert len(text.strip()) > 0


def test_llama_cpp_python_generates_with_gemma3(gemma3_path):
    import llama_cpp  # the `python` extra; the test command installs it

    llm = llama_cpp.Llama(model_path=str(gemma3_path), n_ctx=512, n_threads=2, verbose=False)
    out = llm("The capital of France is", max_tokens=8, temperature=0.0)
    text = out["choices"][0]["text"]
    assert out["usage"]["completion_tokens"] > 0
    assert text.strip()
    assert llama_cpp.llama_supports_rpc()
