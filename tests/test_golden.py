"""The fast tier's safety net: llama.cpp's own figures, recorded, against the estimator, without binaries.

``tests/golden/fit_params.json`` holds what ``llama-fit-params -fitp on`` printed (model,
context, compute MiB per device, floored) for one model per arch family over a grid (CPU and
two RPC workers, every layer and ``-ngl 3``, two contexts, flash attention on and off), each
with the command that produced it. ``benchmarks/accuracy.py --families --record
tests/golden/fit_params.json`` regenerates it against the pinned llama.cpp. The synthetic models
are rewritten here header-only (the estimator reads shapes, not weights); the host's repacked
weights follow the recording machine's CPU flags, kept in the file.

Per device row: model and context the same MiB as llama.cpp; compute within max(3 %, 8 MiB)
(the targets of issue 12); and the same compute MiB too, except the rows ``NOT_EXACT_COMPUTE``
names (recorded: 868 device rows of 31 replayed families, all within target, 862 the same MiB).
Families whose compute is not replayed (``NOT_REPLAYED``, none today: mamba2, lfm2,
granitehybrid and nemotron_h, once estimated by the closed-form guide, within target on 20, 26,
25 and 20 of their 28 rows, are replayed, the same MiB on 28/28) are checked for model and state
only, and must still be unreplayable, so an exemption ends with the replay.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from synth import FAMILIES

from llamasplit.devices.device import Device
from llamasplit.model.profile import read_model
from llamasplit.memory.graph import replayable
from llamasplit.memory.estimate import estimate
from llamasplit.memory.repack import CpuFeatures
from llamasplit.memory.settings import LlamaSettings

MiB = 1024 * 1024
GOLDEN = Path(__file__).with_name("golden") / "fit_params.json"
DOC = json.loads(GOLDEN.read_text())
CPU = CpuFeatures(frozenset(DOC["cpu_flags"]), DOC["cpu_machine"] or "x86_64", DOC["amx_built"])
FAMILY_NAMES = sorted({r["family"] for r in DOC["records"]})
NOT_REPLAYED: frozenset[str] = frozenset()
NOT_EXACT_COMPUTE = frozenset({"phi3", "gpt-oss"})
"""Families whose flash-attention compute lands half a MiB off (phi3 +0.5 on the CPU, -0.45 on the
output worker; gpt-oss -0.5 on the CPU): within target, not the same MiB. Every other row is exact."""


def _error_mib(ours_mib: float, oracle_mib: int) -> float:
    """llama.cpp floors: 0 inside [oracle, oracle + 1)."""
    if ours_mib < oracle_mib:
        return ours_mib - oracle_mib
    return max(0.0, ours_mib - (oracle_mib + 1))


@pytest.fixture(scope="module")
def models(tmp_path_factory, smollm2_path, gemma3_path):
    tmp = tmp_path_factory.mktemp("golden")
    out = {"smollm2": read_model(smollm2_path), "gemma3": read_model(gemma3_path)}
    for name in FAMILY_NAMES:
        if name not in out:
            out[name] = read_model(FAMILIES[name](tmp / f"{name}.gguf", header_only=True), require_data=False)
    return out


def test_every_recorded_family_has_its_graph_module(models):
    """Each family's arch is in the graph registry (one module per family, like llama.cpp's
    src/models/), not left to the generic decoder's fallback, and the synthetic families are all recorded."""
    from llamasplit.memory.graph.registry import ARCHS

    assert sorted(f for f in FAMILIES if f not in FAMILY_NAMES) == []
    assert sorted(f for f, m in models.items() if m.arch not in ARCHS) == []


def test_the_golden_file_covers_the_grid():
    assert len(FAMILY_NAMES) >= 12
    for family in FAMILY_NAMES:
        records = [r for r in DOC["records"] if r["family"] == family]
        # CPU: 2 contexts x FA on/off; 2 RPC workers: the same x (every layer, -ngl 3)
        assert len(records) == 12, family
        assert all(r["command"].startswith("llama-fit-params -m {" + family + "} -fitp on ") for r in records)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_estimate_matches_recorded_llama_cpp(family, models):
    model = models[family]
    assert replayable(model) == (family not in NOT_REPLAYED)
    wrong = []
    for record in (r for r in DOC["records"] if r["family"] == family):
        settings = LlamaSettings.from_dict(record["settings"])
        devices = [Device(id=f"rpc:{i}", name=f"RPC{i}", description="worker", backend="RPC", total_bytes=None,
                          free_bytes=None, host=f"127.0.0.1:{50052 + i}") for i in range(record["n_rpc"])]
        est = estimate(model, devices, settings, cpu=CPU)
        assert sorted(record["oracle"]) == sorted(d.name for d in (*est.devices, est.host)), record["command"]
        for dev in (*est.devices, est.host):
            m, c, k = record["oracle"][dev.name]
            ours = dev.compute_bytes / MiB
            err = _error_mib(ours, k)
            if (dev.model_bytes // MiB, dev.context_bytes // MiB) != (m, c):
                wrong.append(f"{record['command']}: {dev.name} model/context {dev.model_bytes // MiB}/"
                             f"{dev.context_bytes // MiB} MiB, llama.cpp {m}/{c}")
            if family in NOT_REPLAYED:
                continue
            if abs(err) > max(0.03 * k, 8) or (family not in NOT_EXACT_COMPUTE and err != 0):
                wrong.append(f"{record['command']}: {dev.name} compute {ours:.2f} MiB, llama.cpp {k}")
    assert not wrong, "\n".join(wrong)
