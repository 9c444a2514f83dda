"""The GPU check's parts that need no GPU (benchmarks/gpu_check.py): nvidia-smi parsing, the GPU
comparison, the table, and the comparison itself on RPC workers (CPU-backed, loopback)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import gpu_check as G  # noqa: E402
from fake_nvml import FakeNvml, rtx3090, rtx4060ti16  # noqa: E402
from llamasplit.devices.nvml import NvmlSource  # noqa: E402
from llamasplit.memory.settings import LlamaSettings  # noqa: E402

UUID_A = "GPU-aaaaaaaa-0000-0000-0000-000000000001"
UUID_B = "GPU-bbbbbbbb-0000-0000-0000-000000000002"


def test_parse_nvidia_smi():
    text = ("0, GPU-aaaaaaaa-0000-0000-0000-000000000001, NVIDIA GeForce RTX 3090, 24576, 24237, 8.6, 4, 16\n"
            "1, GPU-bbbbbbbb-0000-0000-0000-000000000002, NVIDIA GeForce RTX 4060 Ti, 16380, [N/A], 8.9, [N/A], 8\n"
            "garbage line\n")
    a, b = G.parse_smi_gpus(text)
    assert (a.index, a.total_mib, a.free_mib, a.compute_cap, a.pcie_gen, a.pcie_width) == (0, 24576, 24237, (8, 6), 4, 16)
    assert (b.free_mib, b.pcie_gen, b.compute_cap) == (None, None, (8, 9))
    assert G.parse_smi_apps("4242, GPU-a, 812\n4242, GPU-b, 100\n77, GPU-a, [N/A]\n") == {(4242, "GPU-a"): 812, (4242, "GPU-b"): 100}


def test_compare_gpus_against_nvidia_smi():
    fleet = NvmlSource(FakeNvml([rtx3090("0000:01:00.0", UUID_A), rtx4060ti16("0000:02:00.0", UUID_B)]),
                       env={"CUDA_DEVICE_ORDER": "PCI_BUS_ID"}).read()
    smi = G.parse_smi_gpus(f"0, {UUID_A}, NVIDIA GeForce RTX 3090, 24576, 24237, 8.6, 4, 16\n"
                           f"1, {UUID_B}, NVIDIA GeForce RTX 4060 Ti, 16380, 16000, 8.9, 4, 16\n")
    rows = {(r.device, r.kind): r for r in G.compare_gpus(fleet.devices, smi)}
    assert rows[("CUDA0", "total")].ours_mib == 24576 and rows[("CUDA0", "total")].real_mib == 24576
    assert rows[("CUDA0", "total")].error_mib() == 0
    assert rows[("CUDA0", "cc")].note == "same" and rows[("CUDA0", "pcie")].note == "same"
    assert rows[("CUDA1", "pcie")].note == "gen4 x8 vs gen4 x16"  # the 4060 Ti is an x8 card; nvidia-smi here says x16
    text = G.table(list(rows.values()))
    assert text.splitlines()[0].split()[:4] == ["case", "device", "kind", "ours"]
    assert "gen4 x8 vs gen4 x16" in text


def test_row_error_prefers_the_real_allocation():
    assert G.Row("c", "d", "compute", 10.5, 10, 10.25, 300.0).error_mib() == 0.25
    assert G.Row("c", "d", "compute", 10.5, 10, None, None).error_mib() == 0.5
    assert G.Row("c", "d", "total", 400.0, None, None, 420.0).error_mib() == -20.0
    assert G.Row("c", "d", "uuid", None, None, None, None).error_mib() is None


@pytest.mark.llamacpp
def test_compare_case_on_two_rpc_workers(smollm2_path):
    """The check's own comparison, run where it can run here: two CPU-backed RPC workers on loopback.
    Ours must floor to fit-params' MiB and print llama-server's 0.01 MiB for every RPC device."""
    from llamasplit.devices.listdevices import list_devices
    from llamasplit.llamacpp.binaries import find_binary
    from llamasplit.runner.processes import rpc_workers

    with rpc_workers(2) as ws:
        eps = [w.endpoint for w in ws]
        devices = [d for d in list_devices(find_binary("llama-server"), eps) if d.backend == "RPC"]
        case = G.Case("smollm2: -ts 1,1, 4k", smollm2_path, LlamaSettings(n_ctx=4096, tensor_split=(1.0, 1.0)))
        rows = G.compare_case(case, devices, rpc=eps, timeout_s=120)
    fitp = [r for r in rows if r.case.endswith("[fitp]") and r.device != "Host"]
    real = [r for r in rows if r.case.endswith("[server]")]
    assert len(fitp) == 6 and len(real) == 6, G.table(rows)
    for r in fitp:
        assert r.fitp_mib is not None and int(r.ours_mib) == r.fitp_mib, G.table(rows)
    for r in real:
        assert r.real_mib is not None and f"{r.ours_mib:.2f}" == f"{r.real_mib:.2f}", G.table(rows)


@pytest.mark.llamacpp
def test_compare_over_a_real_llamasplit_worker(smollm2_path):
    """The worker leg of the GPU check, here with a CPU-backed worker: it publishes its CPU, the RPC
    device is sized as one, and ours matches fit-params and llama-server for it."""
    import os

    env = dict(os.environ)
    case = G.Case("smollm2: 4k", smollm2_path, LlamaSettings(n_ctx=4096))
    rows = G.compare_over_worker(case, worker_env=env, client_env=env, timeout_s=120)
    assert rows and all("via worker (CPU, published)" in r.case for r in rows), G.table(rows)
    rpc = [r for r in rows if r.device == "RPC0"]
    assert {r.kind for r in rpc} == {"model", "context", "compute"}
    for r in rpc:
        if r.fitp_mib is not None:
            assert int(r.ours_mib) == r.fitp_mib, G.table(rows)
        if r.real_mib is not None:
            assert f"{r.ours_mib:.2f}" == f"{r.real_mib:.2f}", G.table(rows)
