"""``llamasplit gpus`` through ``llamasplit.cli.main``: exit codes, stdout and stderr checked separately."""

from __future__ import annotations

import json
import re

import pynvml
import pytest
from fake_nvml import GPU, FakeNvml, rtx3060, rtx3090
from test_devices_nvml import HOST

from llamasplit.cli import main
from llamasplit.devices import sources
from llamasplit.devices.inventory import load_inventory
from llamasplit.devices.nvml import NvmlSource

TABLE_2X3090_3060 = """\
NAME   DEVICE                        TOTAL      FREE       BW GB/s  FP16 TFLOPS  CC   PCIE     ID
CUDA0  NVIDIA GeForce RTX 3090       24.00 GiB  23.50 GiB  936      71.0         8.6  4.0 x16  sim:0:3090
CUDA1  NVIDIA GeForce RTX 3090       24.00 GiB  23.50 GiB  936      71.0         8.6  4.0 x16  sim:1:3090
CUDA2  NVIDIA GeForce RTX 3060 12GB  12.00 GiB  11.50 GiB  360      25.5         8.6  4.0 x16  sim:2:3060-12g

host simulated: 64.00 GiB RAM (60.00 GiB available), 16 cores, RAM bandwidth 50 GB/s
"""

TOPO_2X3090_3060 = """\
       CUDA0      CUDA1      CUDA2
CUDA0  X          NV4 56.25  PHB 31.52
CUDA1  NV4 56.25  X          PHB 31.52
CUDA2  PHB 31.52  PHB 31.52  X
"""


@pytest.fixture
def nvml_with(monkeypatch):
    """Make the CLI's NVML reads go to a fake."""

    def install(fake: FakeNvml) -> FakeNvml:
        monkeypatch.setattr(sources, "NvmlSource", lambda nvml=None, env=None: NvmlSource(fake, env=env, host=HOST))
        return fake

    return install


def test_fleet_table(capsys):
    assert main(["gpus", "--fleet", "2x3090,3060"]) == 0
    out, err = capsys.readouterr()
    assert out == TABLE_2X3090_3060
    assert err.splitlines()[0] == "source: fleet:2x3090,3060 (simulated)"


def test_fleet_topology(capsys):
    assert main(["gpus", "--fleet", "2x3090,3060", "--topo"]) == 0
    out, _ = capsys.readouterr()
    table, topo = out.split("\n\n       ", 1)
    assert "       " + topo.split("\n\n")[0] + "\n" == TOPO_2X3090_3060
    assert out.rstrip().endswith("Numbers: GB/s per direction.")


def test_fleet_json(capsys):
    assert main(["gpus", "--fleet", "2x3090,3060", "--json"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    data = json.loads(out)
    assert [(d["name"], d["total_bytes"], d["free_bytes"], d["bandwidth_gb_s"]) for d in data["devices"]] == [
        ("CUDA0", 25769803776, 25232932864, 936.0),
        ("CUDA1", 25769803776, 25232932864, 936.0),
        ("CUDA2", 12884901888, 12348030976, 360.0),
    ]
    assert data["simulated"] is True
    assert {(l["kind"], l["bandwidth_gb_s"]) for l in data["links"]} == {("NV", 56.25), ("PHB", 31.52)}


def test_no_gpu_at_all_is_a_cpu_machine(capsys, nvml_with):
    """No driver: `gpus` shows the host (CPU, RAM) and says in one line why there is no GPU."""
    nvml_with(FakeNvml([], init_error=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND))
    assert main(["gpus"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("no GPU: llama.cpp runs on the CPU\nhost localhost: ")
    assert " cores, " in out and " RAM (" in out
    notes = [line for line in err.splitlines() if line.startswith("note: ")]
    assert len(notes) == 1
    assert notes[0].startswith("note: no NVIDIA GPU found (no NVIDIA driver found")
    assert "planning for the CPU" in notes[0]
    assert main(["gpus", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["source"] == "cpu" and data["devices"] == []
    assert data["host"]["ram_total_bytes"] > 0


def test_plan_without_a_gpu_plans_for_the_cpu(capsys, nvml_with, tmp_path):
    """`plan MODEL` with no GPU: every layer on the host, -ngl 0, and the reason in one stderr line."""
    from synth import write_model

    nvml_with(FakeNvml([], init_error=pynvml.NVML_ERROR_DRIVER_NOT_LOADED))
    path = write_model(tmp_path / "tiny.gguf")
    assert main(["plan", str(path), "-c", "512", "--json"]) == 0
    out, err = capsys.readouterr()
    plan = json.loads(out)
    assert plan["devices"] == [] and plan["host"]["layers"] == [0, 1, 2]  # 2 layers + output, all on the host
    assert plan["host"]["model_bytes"] > 0 and plan["fleet"]["source"] == "cpu"
    assert plan["argv"][plan["argv"].index("-ngl") + 1] == "0"
    assert err.count("planning for the CPU") == 1


def test_nvml_table_json_and_topology(capsys, nvml_with):
    a = rtx3090("00000000:01:00.0", "GPU-aaaa0000-0000-0000-0000-000000000000", nvlinks=[("00000000:02:00.0", GPU)] * 4)
    b = rtx3090("00000000:02:00.0", "GPU-bbbb0000-0000-0000-0000-000000000000", nvlinks=[("00000000:01:00.0", GPU)] * 4)
    c = rtx3060("00000000:41:00.0", "GPU-cccc0000-0000-0000-0000-000000000000")
    nvml_with(FakeNvml([a, b, c], ancestors={frozenset({a.bus_id, c.bus_id}): pynvml.NVML_TOPOLOGY_NODE,
                                             frozenset({b.bus_id, c.bus_id}): pynvml.NVML_TOPOLOGY_SYSTEM}))
    assert main(["gpus", "--topo"]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[1].split() == ["CUDA0", "NVIDIA", "GeForce", "RTX", "3090", "24.00", "GiB", "23.67", "GiB", "936",
                                "71.0", "8.6", "4.0", "x16", "GPU-aaaa0000-0000-0000-0000-000000000000"]
    assert lines[3].split()[:8] == ["CUDA2", "NVIDIA", "GeForce", "RTX", "3060", "12.00", "GiB", "11.75"]
    matrix = [re.split(r"\s{2,}", line.strip()) for line in out.split("\n\n")[2].splitlines()]
    assert matrix == [
        ["CUDA0", "CUDA1", "CUDA2"],
        ["CUDA0", "X", "NV4 56.25", "NODE 31.52"],
        ["CUDA1", "NV4 56.25", "X", "SYS 31.52"],
        ["CUDA2", "NODE 31.52", "SYS 31.52", "X"],
    ]
    assert "source: nvml" in err
    assert main(["gpus", "--json"]) == 0
    out, err = capsys.readouterr()
    assert [d["free_bytes"] for d in json.loads(out)["devices"]] == [24237 * 2**20, 24237 * 2**20, 12036 * 2**20]
    assert err == ""


def test_save_then_read_inventory(tmp_path, capsys):
    path = tmp_path / "fleet.json"
    assert main(["gpus", "--fleet", "2x3090,3060", "--save", str(path)]) == 0
    out, err = capsys.readouterr()
    assert out == TABLE_2X3090_3060
    assert f"saved 3 devices to {path}" in err
    assert len(load_inventory(path).devices) == 3
    assert main(["gpus", "--inventory", str(path)]) == 0
    out, err = capsys.readouterr()
    assert out == TABLE_2X3090_3060
    assert f"source: inventory:{path} (simulated)" in err


@pytest.mark.parametrize(
    ("argv", "code", "words"),
    [
        (["gpus", "--fleet", "2x3099"], 2, ["unknown GPU '3099'", "3090"]),
        (["gpus", "--fleet", "3090", "--inventory", "x.json"], 2, ["not both"]),
        (["gpus", "--inventory", "/nonexistent/x.json"], 1, ["inventory /nonexistent/x.json does not exist"]),
        (["gpus", "--fleet", "3090", "--rpc", "nohost"], 2, ["RPC endpoint 'nohost' is not host:port"]),
    ],
)
def test_errors_are_one_line_on_stderr(capsys, argv, code, words):
    assert main(argv) == code
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("llamasplit: error: ")
    for word in words:
        assert word in err


@pytest.mark.parametrize("passes", ["0", "11", "two"])
def test_bench_passes_out_of_range_is_one_clear_line(capsys, passes):
    # checked before anything is started or measured: no llama-bench, no worker
    assert main(["bench", "--passes", passes]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert "--passes" in err and "Traceback" not in err
