"""The runner's pure parts: golden argv and environments, extra-argument conflicts, the buffer
report against hand-written llama.cpp logs, and the line that explains a failure."""

from __future__ import annotations

import dataclasses

import pytest
from synth import write_model

from llamasplit.api import plan_options
from llamasplit.devices.device import Device, Fleet, HostInfo
from llamasplit.model.profile import read_model
from llamasplit.planner.plan import PlanOptions, plan
from llamasplit.memory.settings import LlamaSettings
from llamasplit.runner.launch import (
    LaunchOptions, build_argv, child_env, conflicting_args, dropped_env, explain_failure, loading_stage,
)
from llamasplit.runner.verify import parse_buffers, verify

MiB = 1024 * 1024
GiB = 1024 * MiB
UUID = "GPU-11111111-2222-3333-4444-555555555555"
RPC_EP = "10.0.0.2:50052"


def _fleet(*devices: Device) -> Fleet:
    return Fleet(devices=devices, host=HostInfo(ram_total_bytes=64 * GiB, ram_available_bytes=60 * GiB), source="test")


RPC = Device(f"rpc:{RPC_EP}#0", "RPC0", RPC_EP, "RPC", 24 * GiB, 24 * GiB, host=RPC_EP)
GPU = Device(UUID, "CUDA0", "NVIDIA GeForce RTX 3090", "CUDA", 24 * GiB, 23 * GiB, bandwidth_gb_s=936.0)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 4-layer llama (F32, n_embd 64): small enough that every plan below is exact and fast."""
    return read_model(write_model(tmp_path_factory.mktemp("m") / "tiny.gguf", n_layer=4))


def _fixed(**kw) -> PlanOptions:
    return PlanOptions(settings=LlamaSettings(**kw), fixed=frozenset(k for k in kw if k != "binary"))


def test_server_over_rpc_and_a_pinned_gpu(tiny):
    p = plan(tiny, _fleet(RPC, GPU), _fixed(n_ctx=4096, tensor_split=(1.0, 3.0)))
    argv = build_argv(p, LaunchOptions(binary="/opt/llama/bin/llama-server", port=8081))
    assert argv == [
        "/opt/llama/bin/llama-server", "-m", tiny.path, "-ngl", "all", "-ts", "1,3", "-c", "4096",
        "--rpc", RPC_EP, "-fit", "off", "-lv", "4", "--host", "127.0.0.1", "--port", "8081",
    ]
    base = {"PATH": "/usr/bin", "LLAMA_ARG_CTX_SIZE": "65536", "LLAMA_ARG_N_GPU_LAYERS": "0",
            "LLAMA_ARG_API_KEY_FILE": "/etc/key", "CUDA_VISIBLE_DEVICES": "1,0"}
    assert child_env(p, base) == {
        "PATH": "/usr/bin", "LLAMA_ARG_API_KEY_FILE": "/etc/key",
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": UUID,
    }
    assert dropped_env(base) == ["LLAMA_ARG_N_GPU_LAYERS", "LLAMA_ARG_CTX_SIZE"]
    assert base["CUDA_VISIBLE_DEVICES"] == "1,0"  # the caller's mapping is not touched


def test_completion_gets_no_host_or_port_and_extras_come_last(tiny):
    p = plan(tiny, _fleet(RPC), _fixed(n_ctx=1024, n_gpu_layers=3, tensor_split=(1.0,), binary="llama-completion"))
    argv = build_argv(p, LaunchOptions(extra_args=("-p", "Hello", "-n", "4", "-t", "2")))
    assert argv == [
        "llama-completion", "-m", tiny.path, "-ngl", "3", "-ts", "1", "-c", "1024", "--rpc", RPC_EP,
        "-fit", "off", "-lv", "4", "-p", "Hello", "-n", "4", "-t", "2",
    ]
    # a plan for llama-cpp-python runs under llama-server; an explicit binary decides the flags
    cpp = dataclasses.replace(p, settings=p.settings.replace(binary="llama-cpp-python"))
    assert build_argv(cpp, LaunchOptions())[0] == "llama-server"
    assert "--port" not in build_argv(p, LaunchOptions(binary="/x/llama-cli"))


def test_cpu_only_plan_keeps_every_layer_on_the_host(tiny):
    p = plan(tiny, _fleet(), plan_options(ctx=2048))
    assert build_argv(p, LaunchOptions(host="0.0.0.0", port=9000)) == [
        "llama-server", "-m", tiny.path, "-ngl", "0", "-c", "2048",
        "-fit", "off", "-lv", "4", "--host", "0.0.0.0", "--port", "9000",
    ]
    assert "CUDA_VISIBLE_DEVICES" not in child_env(p, {})


def test_extra_arguments_that_change_the_plan_are_named(tiny):
    p = plan(tiny, _fleet(RPC), _fixed(n_ctx=1024, tensor_split=(1.0,)))
    extra = ("-c", "8192", "-t", "4", "-ctk", "q8_0", "--ctx-size", "1024", "--port", "1", "-lv", "2", "-fit", "on")
    assert conflicting_args(p, LaunchOptions(extra_args=extra)) == [
        "-c 8192 after -- overrides the plan's -c 1024: memory use will differ from the prediction",
        "-ctk q8_0 after -- changes a setting the plan left at llama.cpp's default: memory use will differ from the prediction",
        "--port 1 after -- replaces llamasplit's --port; give llamasplit --port instead, or it waits for llama-server at the wrong address",
        "-lv 2 after -- hides the buffer sizes llamasplit compares with the plan",
        "-fit on after -- lets llama.cpp re-fit and change the plan's flags",
    ]
    assert conflicting_args(p, LaunchOptions(extra_args=("-t", "2", "--api-key", "k"))) == []


# ---------------------------------------------------------------------------------------------
# predicted vs actual, from log lines in llama.cpp's formats (LLAMACPP.md §6)


def _log(p, *, rpc_kv_mib: float | None = None) -> str:
    """Buffer lines as llama.cpp prints them, sized as ``p`` predicts (RPC KV optionally changed)."""
    rpc, gpu = p.devices
    kv = rpc.context_bytes / MiB if rpc_kv_mib is None else rpc_kv_mib
    return "\n".join([
        "0.00.100.000 I load_tensors: offloaded 5/5 layers to GPU",
        f"0.00.100.001 I load_tensors:   CPU_Mapped model buffer size = {p.host.model_bytes / MiB:8.2f} MiB",
        f"0.00.100.002 I load_tensors: RPC0[{RPC_EP}] model buffer size = {rpc.model_bytes / MiB:8.2f} MiB",
        f"0.00.100.003 I load_tensors:        CUDA0 model buffer size = {gpu.model_bytes / MiB:8.2f} MiB",
        "0.00.100.004 I llama_context:  CUDA_Host  output buffer size =     0.75 MiB",
        f"0.00.100.005 I llama_kv_cache: RPC0[{RPC_EP}] KV buffer size = {kv / 2:8.2f} MiB",
        f"0.00.100.006 I llama_kv_cache: RPC0[{RPC_EP}] KV buffer size = {kv / 2:8.2f} MiB",  # two caches (SWA) add up
        f"0.00.100.007 I llama_kv_cache:        CUDA0 KV buffer size = {gpu.context_bytes / MiB:8.2f} MiB",
        "0.00.100.008 I sched_reserve:        CUDA0 compute buffer size =   999.00 MiB",  # reserved again below
        f"0.00.100.009 I sched_reserve: RPC0[{RPC_EP}] compute buffer size = {rpc.compute_bytes / MiB + 5:8.2f} MiB",
        f"0.00.100.010 I sched_reserve:        CUDA0 compute buffer size = {gpu.compute_bytes / MiB:8.2f} MiB",
        f"0.00.100.011 I sched_reserve:    CUDA_Host compute buffer size = {p.host.compute_bytes / MiB:8.2f} MiB",
    ])


def test_report_maps_rpc_by_endpoint_and_cuda_by_plan_order(tiny):
    p = plan(tiny, _fleet(RPC, GPU), _fixed(n_ctx=4096, tensor_split=(1.0, 3.0)))
    report = verify(p, _log(p))
    assert report.ok, report.table()
    assert report.devices() == ["RPC0", "CUDA0", "Host"]
    assert report.row("RPC0", "compute").actual_bytes - p.devices[0].compute_bytes == pytest.approx(5 * MiB, abs=0.01 * MiB)
    assert report.row("CUDA0", "context").actual_bytes == pytest.approx(p.devices[1].context_bytes, abs=0.01 * MiB)
    lines = report.table().splitlines()
    assert lines[0] == "predicted vs actual after load (MiB)"
    assert lines[2].split()[:2] == ["RPC0", RPC_EP] and lines[2].endswith("ok")
    assert lines[-1].startswith("all within tolerance")


def test_report_names_what_is_off_and_what_the_plan_did_not_expect(tiny):
    p = plan(tiny, _fleet(RPC, GPU), _fixed(n_ctx=4096, tensor_split=(1.0, 3.0)))
    log = _log(p, rpc_kv_mib=3.0) + "\n0.00.2 I load_tensors:        CUDA1 model buffer size =    40.00 MiB"
    report = verify(p, log)
    assert not report.ok
    assert report.failures() == [
        "RPC0 KV: predicted 1.00 MiB, actual 3.00 MiB (+200%), allowed ±1.00 MiB",
        "CUDA1 model: predicted 0.00 MiB, actual 40.00 MiB, allowed ±1.00 MiB",
    ]
    assert "OFF: KV" in report.table()
    assert not verify(p, "no buffers here").ok
    assert verify(p, "").failures()[0].startswith("llama.cpp reported no buffer sizes")


def test_parse_buffers_reads_the_measured_formats():
    text = (
        "0.00.195.565 I load_tensors: RPC0[127.0.0.1:50161] model buffer size =    16.91 MiB\n"
        "llama_memory_recurrent:      CUDA0 RS buffer size =     1.50 MiB\n"
        "0.00.375.931 I llama_context:        CPU  output buffer size =     0.75 MiB\n"
        "0.00.398.880 I sched_reserve:        CPU compute buffer size =     9.67 MiB\n"
    )
    assert [(b.buffer, b.kind, b.size_bytes) for b in parse_buffers(text)] == [
        ("RPC0[127.0.0.1:50161]", "model", round(16.91 * MiB)),
        ("CUDA0", "context", round(1.5 * MiB)),
        ("CPU", "output", round(0.75 * MiB)),
        ("CPU", "compute", round(9.67 * MiB)),
    ]


# ---------------------------------------------------------------------------------------------
# why it failed: lines as llama-server 0.3.36 printed them here


def test_the_first_error_names_the_cause_not_the_lines_repeating_it():
    bad_file = """0.00.005.000 I llama_model_loader: loaded meta data
0.00.005.105 E gguf_init_from_reader: invalid magic characters: '??F?', expected 'GGUF'
0.00.005.364 E llama_model_load: error loading model: llama_model_loader: failed to load model from /tmp/bad.gguf
0.00.005.381 E srv    load_model: failed to load model, '/tmp/bad.gguf'
0.00.005.893 E srv  llama_server: exiting due to model loading error
"""
    assert explain_failure(bad_file) == (
        "gguf_init_from_reader: invalid magic characters: '??F?', expected 'GGUF'",
        "check the model file (`llamasplit inspect MODEL`)",
    )
    rpc_abort = """0.01.665.699 E send failed (bytes_sent=0, size_to_send=8)
/root/llama.cpp/ggml/src/ggml-rpc/ggml-rpc.cpp:566: Remote RPC server crashed or returned malformed response
[New LWP 4291]
#0  0x00007f3866a9d49f in __GI___wait4
"""
    line, remedy = explain_failure(rpc_abort)
    assert line == "Remote RPC server crashed or returned malformed response"
    assert "llamasplit worker" in remedy
    oom = "0.1 I load_tensors: ok\n0.00.2 E ggml_backend_cuda_buffer_type_alloc_buffer: allocating 9000.00 MiB on device 0: cudaMalloc failed: out of memory\n"
    assert explain_failure(oom)[0].endswith("cudaMalloc failed: out of memory")
    assert explain_failure("0.00.1 I all good\n") is None


def test_loading_stage_follows_the_log():
    assert loading_stage("") == "starting"
    assert loading_stage("llama_model_loader: x\nload_tensors: y\nllama_kv_cache: z") == "allocating the KV cache"


# ---------------------------------------------------------------------------------------------
# the Python API's doors (no llama.cpp run)


def test_api_plan_is_the_cli_plan(tiny, capsys):
    import llamasplit
    from llamasplit.cli import main
    from llamasplit.planner.plan import Plan

    p = llamasplit.plan(tiny.path, "3090", ctx=2048, ngl=3)
    assert main(["plan", tiny.path, "--fleet", "3090", "-c", "2048", "-ngl", "3", "--json"]) == 0
    assert Plan.from_json(capsys.readouterr().out).to_dict() == p.to_dict()
    assert p.to_llama_args() == ["-ngl", "3", "-c", "2048"]


def test_api_errors_are_ours(tiny, monkeypatch):
    import sys

    import llamasplit
    from llamasplit.errors import DeviceQueryError, LaunchError, UsageError

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # no GPU visible, whatever this machine has
    cpu_plan = llamasplit.plan(tiny.path, ctx=2048)  # a CPU machine is a machine: every layer on the host
    assert cpu_plan.devices == () and cpu_plan.host.layers == tuple(range(tiny.hparams.n_layer + 1))
    with pytest.raises(DeviceQueryError):
        llamasplit.plan(tiny.path, "no-such-inventory.json", ctx=2048)
    with pytest.raises(UsageError, match="unknown plan option 'contxt'"):
        llamasplit.plan(tiny.path, [], contxt=2048)
    with pytest.raises(UsageError, match="simulated hardware"):
        llamasplit.serve(tiny.path, devices="3090", ctx=2048)
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # what `import llama_cpp` does when it is not installed
    with pytest.raises(LaunchError, match="llama-cpp-python is not installed"):
        llamasplit.load(tiny.path, devices=[], ctx=512)


def test_docstring_examples_hold():
    import doctest

    from llamasplit import api
    from llamasplit.runner import launch, verify

    for module in (launch, verify, api):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0, module.__name__
