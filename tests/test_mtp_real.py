"""``--spec-type draft-mtp`` against the pinned llama-server: the synthetic GLM-4.5-shaped glm4moe
with one NextN block, on the CPU and on two RPC workers (every layer, ``-ngl 3``). llama-server
loads the NextN block's weights and creates a second (MTP) context; each buffer line of both
contexts (model, KV, compute; ``%.2f`` MiB) is the estimate's, main context and MTP context apart.
"""

from __future__ import annotations

import re

import pytest
from synth import write_glm4moe

from llamasplit.devices.device import Device
from llamasplit.llamacpp.binaries import want_amx
from llamasplit.memory.estimate import estimate
from llamasplit.memory.repack import CpuFeatures
from llamasplit.memory.settings import LlamaSettings
from llamasplit.model.profile import read_model
from procs import endpoints, rpc_workers, server_load_log

pytestmark = pytest.mark.llamacpp

MiB = 1024 * 1024
_BUFFER = re.compile(r"(load_tensors|llama_kv_cache|sched_reserve):\s+(\S+)\s+(model|KV|compute) buffer size =\s+([\d.]+) MiB")


@pytest.fixture(scope="module")
def workers():
    with rpc_workers(2) as ws:
        yield endpoints(ws)


@pytest.fixture(scope="module")
def glm(tmp_path_factory):
    return write_glm4moe(tmp_path_factory.mktemp("mtp") / "glm4moe.gguf", vocab="spm")


def _buffers(path, args: list[str], eps: list[str]) -> tuple[dict, dict, str]:
    log = server_load_log(path, ["--no-warmup", *args])
    assert "model loaded" in log, log[-3000:]  # a slow or failed load says so, not a missing buffer
    main: dict[str, str] = {}
    mtp: dict[str, str] = {}
    part = main
    for line in log.splitlines():
        if "creating MTP draft context" in line:
            part = mtp
        m = _BUFFER.search(line)
        if m:
            _, name, kind, mib = m.groups()
            if "[" in name:
                name = f"RPC{eps.index(name[name.index('[') + 1:-1])}"
            key = f"{kind}:{name}"
            # the MTP context reserves again once its sampler is set: ggml keeps the largest buffer
            part[key] = mib if key not in part or float(mib) > float(part[key]) else part[key]
    return main, mtp, log


@pytest.mark.parametrize("n_rpc,ngl", [(0, None), (2, None), (2, 3)])
def test_draft_mtp_buffers_match_llama_server(glm, workers, n_rpc, ngl):
    eps = workers[:n_rpc]
    settings = LlamaSettings(n_ctx=4096, flash_attn="on", n_gpu_layers=ngl, tensor_split=(1, 1) if eps else None,
                             spec_type="draft-mtp")
    main, mtp, log = _buffers(glm, settings.to_args() + (["--rpc", ",".join(eps)] if eps else []), eps)
    assert mtp, log[-2000:]  # llama-server made the MTP context
    devices = [Device(id=f"rpc:{ep}", name=f"RPC{i}", description=ep, backend="RPC", total_bytes=None,
                      free_bytes=None, host=ep) for i, ep in enumerate(eps)]
    est = estimate(read_model(glm), devices, settings, cpu=CpuFeatures.local(amx_built=want_amx()))
    want_main: dict[str, str] = {"model:CPU_Mapped": f"{est.host_mapped_bytes / MiB:.2f}"}
    want_mtp: dict[str, str] = {}
    for d in (*est.devices, est.host):
        name = "CPU" if d is est.host else d.name
        if d is not est.host:
            want_main[f"model:{name}"] = f"{d.model_bytes / MiB:.2f}"
        if d.context_bytes:
            want_main[f"KV:{name}"] = f"{d.context_bytes / MiB:.2f}"
        want_main[f"compute:{name}"] = f"{d.compute_bytes / MiB:.2f}"
        if d.companion_parts.get("mtp_context"):
            want_mtp[f"KV:{name}"] = f"{d.companion_parts['mtp_context'] / MiB:.2f}"
        if d.companion_parts.get("mtp_compute"):
            want_mtp[f"compute:{name}"] = f"{d.companion_parts['mtp_compute'] / MiB:.2f}"
    assert main == want_main
    assert {k: v for k, v in mtp.items() if float(v) > 0} == want_mtp


@pytest.fixture(scope="module")
def sidecar(tmp_path_factory):
    """The NextN block of ``glm`` alone, as an MTP sidecar file."""
    return write_glm4moe(tmp_path_factory.mktemp("mtp-sidecar") / "glm4moe-mtp.gguf", vocab="spm", trunk=False)


@pytest.mark.parametrize("n_rpc", [0, 2])
def test_an_mtp_sidecar_is_a_draft_model_with_only_the_mtp_context(glm, sidecar, workers, n_rpc):
    """``-md SIDECAR --spec-type draft-mtp``: the main model still loads its NextN block (load_mtp)
    and has no MTP context; the sidecar, loaded as the draft, holds the MTP context."""
    from llamasplit.memory.companions import Companions, Draft, DraftSpec, estimate_with_companions

    eps = workers[:n_rpc]
    settings = LlamaSettings(n_ctx=4096, flash_attn="on", tensor_split=(1, 1) if eps else None, spec_type="draft-mtp")
    args = settings.to_args() + ["-md", str(sidecar)] + (["--rpc", ",".join(eps)] if eps else [])
    main, _, log = _buffers(glm, args, eps)
    draft = {}
    part = {}
    for line in log.splitlines():  # the draft's lines follow "loading draft model"
        if "loading draft model" in line:
            part = draft
        m = _BUFFER.search(line)
        if m and part is draft:
            _, name, kind, mib = m.groups()
            if "[" in name:
                name = f"RPC{eps.index(name[name.index('[') + 1:-1])}"
            key = f"{kind}:{name}"
            draft[key] = mib if key not in draft or float(mib) > float(draft[key]) else draft[key]
    assert draft, log[-2000:]
    devices = [Device(id=f"rpc:{ep}", name=f"RPC{i}", description=ep, backend="RPC", total_bytes=None,
                      free_bytes=None, host=ep) for i, ep in enumerate(eps)]
    companions = Companions(draft=Draft(read_model(sidecar), DraftSpec(path=str(sidecar))))
    est = estimate_with_companions(read_model(glm), devices, settings, companions)
    main_model = {k: v for k, v in main.items() if k.startswith("model:")}
    assert main_model == ({"model:CPU_Mapped": f"{est.host_mapped_bytes / MiB:.2f}"}
                          | {f"model:{d.name}": f"{d.model_bytes / MiB:.2f}" for d in est.devices})
    assert "mtp_context" not in est.host.companion_parts and all("mtp_context" not in d.companion_parts for d in est.devices)
    got = {}
    for d in (*est.devices, est.host):
        name = "CPU" if d is est.host else d.name
        p = d.companion_parts
        if d is not est.host and p.get("draft_model"):
            got[f"model:{name}"] = f"{p['draft_model'] / MiB:.2f}"
        if p.get("draft_context"):
            got[f"KV:{name}"] = f"{p['draft_context'] / MiB:.2f}"
        if p.get("draft_compute"):
            got[f"compute:{name}"] = f"{p['draft_compute'] / MiB:.2f}"
    want = {k: v for k, v in draft.items() if k != "model:CPU_Mapped" and float(v) > 0}
    assert got == want
