"""The estimator against llama.cpp itself, on real and synthetic models, CPU and RPC devices.

Two oracles:

- ``llama-fit-params -fitp on`` (llama.cpp's own dry run, whole MiB, floored): model, context
  (KV) and compute bytes must floor to the same MiB on every device and the host, for every
  case. That is the bound reached: the compute model replays llama.cpp's graph, scheduler and
  allocator, so it is exact, not merely within max(3 %, 8 MiB).
- ``llama-completion -lv 4`` (the buffers really allocated, printed to 0.01 MiB): the compute
  buffers must print the same digits. This path differs from fit-params (its
  scheduler keeps the graph callback's pins of each layer's norm to the layer's device), and
  the estimator follows ``settings.binary``.

Cases cover llama (SmolLM2 Q4_1, a synthetic F16 llama), iSWA (Gemma-3 Q4_K_M), MoE (a synthetic
qwen3moe) and MLA (a synthetic deepseek2 with shared experts and expert groups); CPU only and
1-3 RPC workers; every layer or part of them offloaded; ``-ot`` / ``--cpu-moe`` /
``--n-cpu-moe`` experts on the CPU; contexts 512 to 32k; f16 and q8_0 caches (with their
Hadamard rotations); flash attention on and off; ubatches 64 to 1024; ``-np``; ``-nkvo``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import pytest
from synth import write_deepseek2, write_llama_dense, write_qwen3moe

from llamasplit.devices.device import Device
from llamasplit.llamacpp.binaries import find_binary, want_amx
from llamasplit.llamacpp.oracle import fit_print
from llamasplit.model.profile import read_model
from llamasplit.memory.estimate import estimate
from llamasplit.memory.repack import CpuFeatures
from llamasplit.memory.settings import LlamaSettings
from llamasplit.runner.processes import run_to_end
from procs import endpoints, rpc_workers

pytestmark = pytest.mark.llamacpp

MiB = 1024 * 1024
EXPERTS_1_3 = (r"blk\.[13]\.ffn_.*_exps", "CPU")
EXPERTS_2 = (r"blk\.2\.ffn_(up|down|gate)_exps", "CPU")


@dataclass(frozen=True)
class Case:
    model: str
    rpc: int = 0
    ts: tuple[float, ...] | None = None
    kw: dict = field(default_factory=dict)

    def settings(self, binary: str) -> LlamaSettings:
        return LlamaSettings(tensor_split=self.ts if self.rpc else None, binary=binary, **self.kw)

    def __str__(self) -> str:
        parts = [self.model, f"rpc{self.rpc}" + (":" + ",".join(f"{x:g}" for x in self.ts) if self.ts else "")]
        for k, v in self.kw.items():
            if k == "overrides":
                v = "+".join(re.sub(r"\W+", "", p) for p, _ in v)
            parts.append(f"{k}={v}")
        return "-".join(str(p) for p in parts)


def case(model: str, rpc: int = 0, ts: tuple[float, ...] | None = None, **kw) -> Case:
    kw.setdefault("flash_attn", "on")
    return Case(model, rpc, ts, kw)


CASES = [
    # SmolLM2-135M Q4_1: llama, 30 layers, vocab 49152
    case("smollm2", n_ctx=512, flash_attn="off", n_ubatch=256),
    case("smollm2", 2, (1, 2), n_ctx=4096),
    case("smollm2", 2, (1, 2), n_ctx=16384, flash_attn="off"),
    case("smollm2", 3, (2, 1, 1), n_ctx=2048, n_ubatch=128, type_k="q8_0", type_v="q8_0"),
    case("smollm2", 2, (1, 1), n_ctx=4096, n_gpu_layers=12),
    case("smollm2", 2, (1, 1), n_ctx=32768, n_ubatch=1024),
    case("smollm2", n_ctx=8192, n_ubatch=64, type_k="q8_0", type_v="q8_0"),
    case("smollm2", 1, (1,), n_ctx=4096, flash_attn="off", n_gpu_layers=20, offload_kqv=False),
    case("smollm2", 2, (1, 1), n_ctx=8192, n_parallel=2),
    # Gemma-3-270M Q4_K_M: iSWA (5 of 6 layers slide over 512 tokens), tied, vocab 262144
    case("gemma3", 2, (1, 3), n_ctx=4096),
    case("gemma3", 2, (1, 1), n_ctx=16384, flash_attn="off"),
    case("gemma3", 3, (1, 1, 2), n_ctx=8192, n_ubatch=256, n_gpu_layers=10, type_k="q8_0", type_v="q8_0"),
    case("gemma3", 2, (3, 1), n_ctx=32768),
    case("gemma3", n_ctx=2048, flash_attn="off"),
    case("gemma3", 1, (1,), n_ctx=8192, n_gpu_layers=5),
    # synthetic llama, F16, vocab 32000
    case("dense", n_ctx=4096),
    case("dense", 2, (1, 1), n_ctx=8192, flash_attn="off"),
    case("dense", 3, (1, 2, 1), n_ctx=32768, type_k="q8_0", type_v="q8_0"),
    case("dense", 2, (1, 1), n_ctx=2048, flash_attn="off", n_ubatch=128, n_gpu_layers=3),
    # synthetic qwen3moe: 16 experts, 4 used
    case("moe", n_ctx=4096),
    case("moe", 2, (1, 1), n_ctx=4096, flash_attn="off"),
    case("moe", 2, (1, 1), n_ctx=8192, cpu_moe=True),
    case("moe", 3, (1, 1, 1), n_ctx=4096, n_cpu_moe=2, type_k="q8_0", type_v="q8_0"),
    case("moe", 2, (1, 2), n_ctx=2048, flash_attn="off", n_ubatch=256, overrides=(EXPERTS_1_3,)),
    case("moe", 2, (1, 1), n_ctx=16384, n_gpu_layers=2),
    # synthetic deepseek2: MLA, 1 dense + 3 MoE layers, shared expert, sigmoid gating, expert groups
    case("mla", n_ctx=4096),
    case("mla", n_ctx=4096, flash_attn="off"),
    case("mla", 2, (1, 1), n_ctx=8192),
    case("mla", 3, (1, 1, 1), n_ctx=4096, flash_attn="off", n_ubatch=128, n_gpu_layers=3),
    case("mla", 2, (1, 1), n_ctx=4096, cpu_moe=True, type_k="q8_0", type_v="q8_0"),
    case("mla", 2, (2, 1), n_ctx=32768, overrides=(EXPERTS_2,)),
]

REAL_CASES = [  # llama-completion allocates: the norm pins apply
    case("smollm2", 2, (1, 2), n_ctx=4096),
    case("gemma3", 3, (1, 1, 2), n_ctx=8192, n_ubatch=256, n_gpu_layers=10, type_k="q8_0", type_v="q8_0"),
    case("moe", 2, (1, 1), n_ctx=8192, cpu_moe=True),
    case("mla", 2, (1, 1), n_ctx=4096, flash_attn="off"),
    case("dense", 2, (1, 1), n_ctx=8192, flash_attn="off"),
]


@pytest.fixture(scope="module")
def workers():
    with rpc_workers(3) as ws:
        yield endpoints(ws)


@pytest.fixture(scope="module")
def models(tmp_path_factory, smollm2_path, gemma3_path):
    """Paths and profiles of every model the cases name (synthetic ones written once, ~85 MB each)."""
    tmp = tmp_path_factory.mktemp("synth")
    paths = {
        "smollm2": smollm2_path,
        "gemma3": gemma3_path,
        "dense": write_llama_dense(tmp / "dense.gguf"),
        "moe": write_qwen3moe(tmp / "moe.gguf"),
        "mla": write_deepseek2(tmp / "mla.gguf"),
    }
    return {name: (path, read_model(path)) for name, path in paths.items()}


def _devices(eps: list[str]) -> list[Device]:
    return [
        Device(id=f"rpc:{ep}", name=f"RPC{i}", description=ep, backend="RPC", total_bytes=None, free_bytes=None,
               host=ep)
        for i, ep in enumerate(eps)
    ]


def _args(c: Case, settings: LlamaSettings, eps: list[str]) -> list[str]:
    return settings.to_args() + (["--rpc", ",".join(eps)] if eps else [])


@pytest.mark.parametrize("c", CASES, ids=str)
def test_estimate_matches_fit_params(c: Case, workers, models):
    path, profile = models[c.model]
    eps = workers[: c.rpc]
    settings = c.settings("llama-fit-params")
    oracle = {row.name: row for row in fit_print(path, _args(c, settings, eps))}
    # the host's weights that this CPU repacks (AMX / CPU_REPACK) are not in fit-params' Host row,
    # nor in the estimate's model_bytes (they are in its extra_buffers)
    est = estimate(profile, _devices(eps), settings, cpu=CpuFeatures.local(amx_built=want_amx()))
    assert sorted(oracle) == sorted(d.name for d in (*est.devices, est.host))
    for dev in (*est.devices, est.host):
        row = oracle[dev.name]
        got = (dev.model_bytes // MiB, dev.context_bytes // MiB, dev.compute_bytes // MiB)
        want = (row.model_mib, row.context_mib, row.compute_mib)
        assert got == want, f"{dev.name}: (model, context, compute) MiB {got} != llama.cpp {want}"


_BUFFER_LINE = re.compile(r"sched_reserve:\s+(\S+) compute buffer size =\s+([\d.]+) MiB")


@pytest.mark.parametrize("c", REAL_CASES, ids=str)
def test_compute_buffers_match_a_real_allocation(c: Case, workers, models):
    path, profile = models[c.model]
    eps = workers[: c.rpc]
    settings = c.settings("llama-completion")
    argv = [str(find_binary("llama-completion")), "-m", str(path), "-n", "1", "-p", "hi", "-no-cnv", "-lv", "4",
            "-fit", "off", "--no-warmup", *_args(c, settings, eps)]
    # the synthetic models have no vocabulary, so the run may stop at the prompt: the buffers
    # are reserved (and printed) before that
    out = run_to_end(argv, timeout_s=120)
    printed = {}
    for name, mib in _BUFFER_LINE.findall(out.stdout + out.stderr):
        if name.startswith("RPC"):  # RPC0[host:port]: every worker calls its device RPC0
            endpoint = name[name.index("[") + 1 : -1]
            name = f"RPC{eps.index(endpoint)}"
        printed["Host" if name.startswith("CPU") else name] = mib
    est = estimate(profile, _devices(eps), settings)
    assert sorted(printed) == sorted(d.name for d in (*est.devices, est.host)), out.stderr[-2000:]
    for dev in (*est.devices, est.host):
        # llama.cpp prints "%8.2f MiB": the same rounding of the same bytes gives the same digits
        assert f"{dev.compute_bytes / MiB:.2f}" == printed[dev.name], (
            f"{dev.name} compute {dev.compute_bytes / MiB:.4f} MiB, llama.cpp allocated {printed[dev.name]} MiB"
        )
