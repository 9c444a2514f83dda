"""Per-arch rules against the pinned llama.cpp: NextN/MTP blocks and the CPU's extra buffer types.

- A GLM-4.5-shaped glm4moe with one NextN block: ``llama-fit-params -fitp on`` prints the same
  model / context / compute MiB as the estimate on the CPU and on two RPC workers (every layer,
  and ``-ngl 3``, where the NextN block is one of the offloaded ones).
- Repacked weights: with ``-ngl 3`` over two RPC workers, llama-server's host holds the CPU
  layers' weights in the CPU's extra buffer types (``AMX`` / ``CPU_REPACK``, by this machine's
  CPU) besides ``CPU_Mapped``; the estimate's ``extra_buffers`` and mapped span print the same
  0.01 MiB as llama-server's ``load_tensors: ... model buffer size`` lines.
- Recurrent and hybrid families (mamba(2), lfm2(moe), granitehybrid(_moe), nemotron_h(_moe), falcon-h1,
  jamba): over two RPC workers llama-server's compute buffers print the replay's bytes to the 0.01 MiB.
"""

from __future__ import annotations

import re

import pytest
from synth import FAMILIES, write_glm4moe, write_llama_dense

from llamasplit.devices.device import Device
from llamasplit.llamacpp.binaries import find_binary, want_amx
from llamasplit.llamacpp.oracle import fit_print
from llamasplit.model.profile import read_model
from llamasplit.memory.estimate import estimate
from llamasplit.memory.repack import CpuFeatures
from llamasplit.memory.settings import LlamaSettings
from procs import endpoints, rpc_workers, run_to_end, server_load_log

pytestmark = pytest.mark.llamacpp

MiB = 1024 * 1024
CPU = CpuFeatures.local(amx_built=want_amx())


@pytest.fixture(scope="module")
def workers():
    with rpc_workers(2) as ws:
        yield endpoints(ws)


def _devices(eps: list[str]) -> list[Device]:
    return [Device(id=f"rpc:{ep}", name=f"RPC{i}", description=ep, backend="RPC", total_bytes=None,
                   free_bytes=None, host=ep) for i, ep in enumerate(eps)]


@pytest.fixture(scope="module")
def glm4moe(tmp_path_factory):
    path = write_glm4moe(tmp_path_factory.mktemp("glm") / "glm4moe.gguf")
    return path, read_model(path)


@pytest.mark.parametrize("n_rpc,ngl", [(0, None), (2, None), (2, 3)])
def test_glm4moe_nextn_block_is_skipped_like_llama_cpp(glm4moe, workers, n_rpc, ngl):
    path, model = glm4moe
    assert model.hparams.n_layer_nextn == 1
    eps = workers[:n_rpc]
    settings = LlamaSettings(n_ctx=4096, flash_attn="on", n_gpu_layers=ngl, tensor_split=(1, 1) if eps else None,
                             binary="llama-fit-params")
    oracle = {r.name: r for r in fit_print(path, settings.to_args() + (["--rpc", ",".join(eps)] if eps else []))}
    est = estimate(model, _devices(eps), settings, cpu=CPU)
    assert sorted(oracle) == sorted(d.name for d in (*est.devices, est.host))
    for dev in (*est.devices, est.host):
        row = oracle[dev.name]
        got = (dev.model_bytes // MiB, dev.context_bytes // MiB, dev.compute_bytes // MiB)
        assert got == (row.model_mib, row.context_mib, row.compute_mib), dev.name


_MODEL_BUFFER = re.compile(r"load_tensors:\s+(\S+) model buffer size =\s+([\d.]+) MiB")


def _server_model_buffers(path, args: list[str]) -> dict[str, str]:
    """llama-server's ``load_tensors`` buffer lines (``%8.2f`` MiB), read once it listens."""
    log = server_load_log(path, ["--no-warmup", *args])
    found = {}
    for name, mib in _MODEL_BUFFER.findall(log):
        if not name.startswith("RPC"):
            found[name] = mib
    assert found, log[-2000:]
    return found


@pytest.fixture(scope="module")
def q4_0_model(tmp_path_factory):
    """The synthetic llama with Q4_0 matrices (where 32 divides the rows) and a Q8_0 copy."""
    tmp = tmp_path_factory.mktemp("quant")
    return {t: write_llama_dense(tmp / f"llama-{t}.gguf", matrix_type=t, vocab="spm") for t in ("Q4_0", "Q8_0")}


@pytest.mark.parametrize("name", ["smollm2", "gemma3", "Q4_0", "Q8_0"])
def test_host_extra_buffers_match_llama_server(name, workers, smollm2_path, gemma3_path, q4_0_model):
    path = {"smollm2": smollm2_path, "gemma3": gemma3_path, **q4_0_model}[name]
    model = read_model(path)
    settings = LlamaSettings(n_ctx=4096, n_gpu_layers=3, tensor_split=(1, 1))
    printed = _server_model_buffers(path, settings.to_args() + ["--rpc", ",".join(workers)])
    est = estimate(model, _devices(workers), settings, cpu=CPU)
    want = {"CPU_Mapped": f"{est.host_mapped_bytes / MiB:.2f}"}
    want.update({buft: f"{n / MiB:.2f}" for buft, n in est.host.extra_buffers.items()})
    assert printed == want
    if name in ("gemma3", "Q4_0") and CPU is not None and CPU.avx2:
        # Q4_K / Q4_0 repack on any AVX2 CPU: the point of the test is that the host holds more
        # than the mapped file (SmolLM2's Q4_1 and the Q8_0 model repack only into AMX tiles)
        assert est.host.extra_bytes > 0


_BUFFER = re.compile(r"(load_tensors|llama_kv_cache|sched_reserve|llama_memory_recurrent):\s+(\S+)\s+"
                     r"(model|KV|compute|RS) buffer size =\s+([\d.]+) MiB")


@pytest.fixture(scope="module")
def family_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("families")


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_each_family_loads_runs_and_allocates_as_estimated(family, family_dir):
    """CPU only, llama-completion generating two tokens: it runs, and its mapped weights, KV cache
    (0.01 MiB) and compute buffer (max(3 %, 8 MiB), the issue's target) are the estimate's."""
    path = FAMILIES[family](family_dir / f"{family}.gguf")
    model = read_model(path)
    settings = LlamaSettings(n_ctx=4096, flash_attn="on", binary="llama-completion")
    argv = [str(find_binary("llama-completion")), "-m", str(path), "-n", "2", "-p", "hello", "-no-cnv", "-lv", "4",
            "-fit", "off", "--no-warmup", "-t", "1", *settings.to_args()]
    out = run_to_end(argv, timeout_s=120)
    log = out.stdout + out.stderr
    # the synthetic models without a vocabulary stop at the prompt, after reserving their buffers
    assert out.returncode == 0 or "Tokenizer not initialized" in log, log[-1500:]
    printed: dict[tuple[str, str], float] = {}
    for _, name, kind, mib in _BUFFER.findall(log):  # an iSWA model prints one KV line per cache
        printed[(kind, name)] = round(printed.get((kind, name), 0.0) + float(mib), 2)
    est = estimate(model, [], settings, cpu=CPU)
    assert printed[("model", "CPU_Mapped")] == round(est.host_mapped_bytes / MiB, 2)
    for buft, n in est.host.extra_buffers.items():
        assert printed[("model", buft)] == round(n / MiB, 2)
    context = printed.get(("KV", "CPU"), 0.0) + printed.get(("RS", "CPU"), 0.0)  # recurrent state: RS buffer
    assert context == pytest.approx(est.host.context_bytes / MiB, abs=0.011)
    real = printed[("compute", "CPU")]
    assert abs(est.host.compute_bytes / MiB - real) <= max(0.03 * real, 8), (family, est.host.compute_bytes / MiB, real)


_COMPUTE_BUFFER = re.compile(r"sched_reserve:\s+(\S+) compute buffer size =\s+([\d.]+) MiB")
RECURRENT_FAMILIES = ("mamba", "mamba2", "lfm2", "lfm2moe", "granitehybrid", "granitehybrid_moe", "nemotron_h",
                      "nemotron_h_moe", "falcon-h1", "jamba")
"""The families whose graphs carry recurrent state (graph/ssm.py): replayed, not estimated."""


def _server_compute_buffers(path, args: list[str], eps: list[str]) -> dict[str, str]:
    """llama-server's ``sched_reserve`` compute buffer lines (``%8.2f`` MiB) by device name."""
    log = server_load_log(path, ["--no-warmup", *args])
    found = {}
    for name, mib in _COMPUTE_BUFFER.findall(log):
        if name.startswith("RPC"):  # RPC0[host:port]: every worker calls its device RPC0
            name = f"RPC{eps.index(name[name.index('[') + 1 : -1])}"
        found["Host" if name.startswith("CPU") else name] = mib
    assert found, log[-2000:]
    return found


@pytest.mark.parametrize("family", RECURRENT_FAMILIES)
@pytest.mark.parametrize("ngl,fa", [(None, "on"), (3, "off")])
def test_recurrent_compute_is_llama_servers_allocation(family, ngl, fa, family_dir, workers):
    """Two RPC workers, llama-server's default four slots (four sequences of 128 tokens in the
    worst-case ubatch, a state row per slot): every device's compute buffer and the host's are
    the replay's bytes to the 0.01 MiB llama-server prints, under pipeline parallelism (every
    layer offloaded: four copies of the inputs) and with ``-ngl 3`` (the first layers on the CPU)."""
    path = family_dir / f"{family}.gguf"
    if not path.exists():
        FAMILIES[family](path)
    model = read_model(path)
    settings = LlamaSettings(n_ctx=4096, n_gpu_layers=ngl, flash_attn=fa, tensor_split=(1.0, 1.0),
                             binary="llama-server")
    printed = _server_compute_buffers(path, [*settings.to_args(), "--rpc", ",".join(workers)], workers)
    est = estimate(model, _devices(workers), settings, cpu=CPU)
    assert sorted(printed) == sorted(d.name for d in (*est.devices, est.host))
    for dev in (*est.devices, est.host):
        assert f"{dev.compute_bytes / MiB:.2f}" == printed[dev.name], (family, dev.name, dev.compute_bytes / MiB)


@pytest.mark.parametrize("family, n_max", [("nemotron_h", 3), ("lfm2", 3), ("lfm2", 16)])
def test_rollback_snapshots_compute_is_llama_servers_allocation(family, n_max, family_dir, workers):
    """``--spec-type draft-mtp`` on an arch that rolls its recurrent state back
    (``llm_arch_supports_rs_rollback``): ``n_rs_seq`` = 3, four state rows per slot and four
    conv/state copies per block in the graph. llama-server reserves the main context (and
    then stops: these models have no MTP head); its compute buffers are the replay's to the 0.01 MiB.
    With ``--spec-draft-n-max 16`` the snapshots follow it (``n_rs_seq`` = n_max)."""
    path = family_dir / f"{family}.gguf"
    if not path.exists():
        FAMILIES[family](path)
    model = read_model(path)
    settings = LlamaSettings(n_ctx=4096, flash_attn="on", tensor_split=(1.0, 1.0), binary="llama-server",
                             spec_type="draft-mtp", spec_draft_n_max=n_max)
    printed = _server_compute_buffers(path, [*settings.to_args(), "--rpc", ",".join(workers)], workers)
    est = estimate(model, _devices(workers), settings, cpu=CPU)
    assert sorted(printed) == sorted(d.name for d in (*est.devices, est.host))
    for dev in (*est.devices, est.host):
        assert f"{dev.compute_bytes / MiB:.2f}" == printed[dev.name], (family, dev.name, dev.compute_bytes / MiB)
