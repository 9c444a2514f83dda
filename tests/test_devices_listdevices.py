"""llama.cpp ``--list-devices``: parsing real-format output, running a binary, and picking a source."""

from __future__ import annotations

import stat
import textwrap

import pynvml
import pytest

from llamasplit.units import format_size
from fake_nvml import FakeNvml, rtx3090
from test_devices_nvml import HOST

from llamasplit.devices import sources
from llamasplit.devices.device import LinkKind
from llamasplit.devices.listdevices import list_devices, parse_endpoints, parse_list_devices
from llamasplit.devices.nvml import NoGpuFound, NvmlSource
from llamasplit.devices.sources import DeviceSource, InventorySource, SpecSource, resolve_fleet
from llamasplit.errors import DeviceQueryError, UsageError

MiB = 1024**2

# common_print_available_devices(): printf("  %s: %s (%zu MiB, %zu MiB free)\n", name, description, total/MiB, free/MiB)
# with CUDA init chatter before it, a virtual-device CUDA description with its own parentheses, and an
# RPC server that exposes two devices.
LISTING = textwrap.dedent(
    """\
    ggml_cuda_init: found 2 CUDA devices:
      Device 0: NVIDIA GeForce RTX 3090, compute capability 8.6, VMM: yes
      Device 1: NVIDIA GeForce RTX 3060, compute capability 8.6, VMM: yes
    Available devices:
      CUDA0: NVIDIA GeForce RTX 3090 (24135 MiB, 23800 MiB free)
      CUDA1: NVIDIA GeForce RTX 3060 (dev p1/v1) (11909 MiB, 11757 MiB free)
      RPC0: 192.168.1.20:50052 (24105 MiB, 24105 MiB free)
      RPC1: 192.168.1.20:50052 (7962 MiB, 7800 MiB free)
      RPC2: 127.0.0.1:50053 (16000 MiB, 15000 MiB free)
    """
)


def test_parse_real_format():
    devices = parse_list_devices(LISTING)
    assert [(d.name, d.backend, d.host, d.id) for d in devices] == [
        ("CUDA0", "CUDA", "localhost", "llama.cpp:CUDA0"),
        ("CUDA1", "CUDA", "localhost", "llama.cpp:CUDA1"),
        ("RPC0", "RPC", "192.168.1.20:50052", "rpc:192.168.1.20:50052#0"),
        ("RPC1", "RPC", "192.168.1.20:50052", "rpc:192.168.1.20:50052#1"),
        ("RPC2", "RPC", "127.0.0.1:50053", "rpc:127.0.0.1:50053#0"),
    ]
    cuda0, cuda1 = devices[0], devices[1]
    assert (cuda0.description, cuda0.total_bytes, cuda0.free_bytes) == (
        "NVIDIA GeForce RTX 3090", 25307381760, 23800 * MiB)  # 24135 MiB = 25307381760 bytes
    assert cuda1.description == "NVIDIA GeForce RTX 3060 (dev p1/v1)"
    assert (cuda0.cuda_index, cuda1.cuda_index, devices[2].cuda_index) == (0, 1, None)
    assert devices[3].total_bytes == 7962 * MiB
    assert devices[0].bandwidth_gb_s is None  # llama.cpp does not say: unknown


def test_parse_older_rpc_names_and_none():
    old = "Available devices:\n  RPC0[127.0.0.1:50052]: RPC0[127.0.0.1:50052] (24105 MiB, 24000 MiB free)\n"
    (d,) = parse_list_devices(old)
    assert (d.name, d.backend, d.host, d.id, d.free_bytes) == (
        "RPC0[127.0.0.1:50052]", "RPC", "127.0.0.1:50052", "rpc:127.0.0.1:50052#0", 24000 * MiB)
    assert parse_list_devices("load_backend: loaded CPU backend\nAvailable devices:\n  (none)\n") == []
    trailing = "Available devices:\n  Vulkan0: AMD Radeon (16368 MiB, 16000 MiB free)\nmain: exiting\n"
    assert [d.backend for d in parse_list_devices(trailing)] == ["Vulkan"]


def test_parse_errors():
    with pytest.raises(DeviceQueryError) as err:
        parse_list_devices("error: invalid argument: --list-devices\n")
    assert "printed no 'Available devices:' list" in str(err.value)
    with pytest.raises(DeviceQueryError) as err:
        parse_list_devices("Available devices:\n  CUDA0: RTX 3090 (lots of memory)\n")
    assert "cannot read llama.cpp device line 'CUDA0: RTX 3090 (lots of memory)'" in str(err.value)


def test_parse_endpoints():
    assert parse_endpoints(["a.local:50052,10.0.0.3:1", "a.local:50052"]) == ["a.local:50052", "10.0.0.3:1"]
    assert parse_endpoints("[::1]:50052") == ["[::1]:50052"]
    assert parse_endpoints(None) == []
    for bad in ("localhost", "host:0", "host:70000", "a b:1", ""):
        with pytest.raises(UsageError):
            parse_endpoints(bad)


# -- running a binary (a shell script standing in for llama-server) -------------------------------


def fake_binary(tmp_path, body: str):
    path = tmp_path / "llama-server"
    path.write_text("#!/bin/sh\n" + f'printf "%s\\n" "$@" > "{tmp_path}/argv"\n' + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def test_list_devices_runs_rpc_before_list_devices(tmp_path):
    binary = fake_binary(tmp_path, textwrap.dedent("""\
        echo "Available devices:"
        echo "  RPC0: 127.0.0.1:50052 (24105 MiB, 24105 MiB free)"
        echo "  RPC1: 127.0.0.1:50053 (1000 MiB, 900 MiB free)"
    """))
    devices = list_devices(binary, ["127.0.0.1:50052", "127.0.0.1:50053"])
    assert [d.name for d in devices] == ["RPC0", "RPC1"]
    # --list-devices exits as soon as it is parsed: --rpc must come first
    assert (tmp_path / "argv").read_text().split() == ["--rpc", "127.0.0.1:50052,127.0.0.1:50053", "--list-devices"]


def test_list_devices_failures(tmp_path):
    with pytest.raises(DeviceQueryError) as err:
        list_devices(tmp_path / "absent", [])
    assert "not found" in str(err.value)

    crash = fake_binary(tmp_path, textwrap.dedent("""\
        echo "[New LWP 6644]" >&2
        echo "/src/ggml-rpc.cpp:547: Failed to connect to 127.0.0.1:50999" >&2
        echo "#0  0x00007f in __GI___wait4" >&2
        exit 134
    """))
    with pytest.raises(DeviceQueryError) as err:
        list_devices(crash, ["127.0.0.1:50999"])
    assert str(err.value).startswith(
        "RPC worker 127.0.0.1:50999 did not answer (llama-server --list-devices exited with 134)")

    missing = fake_binary(tmp_path, 'echo "Available devices:"; echo "  RPC0: 127.0.0.1:1 (1 MiB, 1 MiB free)"\n')
    with pytest.raises(DeviceQueryError) as err:
        list_devices(missing, ["127.0.0.1:1", "127.0.0.1:2"])
    assert str(err.value).startswith("RPC worker 127.0.0.1:2 reported no devices")

    slow = fake_binary(tmp_path, "sleep 5\n")
    with pytest.raises(DeviceQueryError) as err:
        list_devices(slow, ["127.0.0.1:1"], timeout_s=0.2)
    assert "did not answer within 0.2 s (RPC workers: 127.0.0.1:1)" in str(err.value)

    other = fake_binary(tmp_path, 'echo "error: unknown argument: --list-devices" >&2; exit 1\n')
    with pytest.raises(DeviceQueryError) as err:
        list_devices(other)
    assert str(err.value).startswith("llama-server --list-devices exited with 1: error: unknown argument: --list-devices")


# -- resolve_fleet --------------------------------------------------------------------------------

NO_DRIVER = FakeNvml([], init_error=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)


def test_sources_share_one_interface(tmp_path):
    assert isinstance(SpecSource("3090"), DeviceSource)
    assert isinstance(InventorySource(tmp_path / "x.json"), DeviceSource)
    assert isinstance(NvmlSource(NO_DRIVER, env={}), DeviceSource)


def test_resolve_prefers_fleet_then_inventory_then_nvml(tmp_path):
    assert resolve_fleet(fleet_spec="2x3090", nvml=NO_DRIVER).source == "fleet:2x3090"
    from llamasplit.devices.inventory import save_inventory

    path = save_inventory(resolve_fleet(fleet_spec="3060"), tmp_path / "inv.json")
    assert resolve_fleet(inventory=path, nvml=NO_DRIVER).source == f"inventory:{path}"
    gpu = FakeNvml([rtx3090("00000000:01:00.0", "GPU-aaaa0000-0000-0000-0000-000000000000")])
    fleet = resolve_fleet(nvml=gpu, env={})
    assert fleet.source == "nvml" and [d.id for d in fleet.devices] == ["GPU-aaaa0000-0000-0000-0000-000000000000"]
    with pytest.raises(UsageError):
        resolve_fleet(fleet_spec="3090", inventory=path)


def test_resolve_without_any_gpu_is_the_cpu(monkeypatch):
    """No driver: the fleet is the host alone, and its one note says why and what is planned."""
    monkeypatch.setattr(sources, "local_host", lambda: HOST)
    fleet = resolve_fleet(nvml=NO_DRIVER, env={})
    assert (fleet.devices, fleet.source, fleet.host) == ((), "cpu", HOST)
    cores, ram = HOST.cpu_cores, format_size(HOST.ram_total_bytes)
    assert fleet.notes == (
        "no NVIDIA GPU found (no NVIDIA driver found: libnvidia-ml.so.1 cannot be loaded); "
        f"planning for the CPU (CPU, {cores} cores, {ram} RAM)",)


def NO_NETWORK(endpoint: str):
    """The request for what a worker publishes, answered here: tests contact no other host."""
    return None, "tests contact no other host"


def test_resolve_with_rpc_workers_and_no_local_gpu(tmp_path, monkeypatch):
    binary = fake_binary(tmp_path, textwrap.dedent("""\
        echo "Available devices:"
        echo "  RPC0: 10.0.0.2:50052 (24105 MiB, 24105 MiB free)"
        echo "  RPC1: 10.0.0.3:50052 (8000 MiB, 7000 MiB free)"
    """))
    monkeypatch.setattr(sources, "local_host", lambda: HOST)
    fleet = resolve_fleet(rpc=["10.0.0.2:50052,10.0.0.3:50052"], nvml=NO_DRIVER, binary=binary, env={}, fetch=NO_NETWORK)
    assert [d.name for d in fleet.devices] == ["RPC0", "RPC1"]
    assert [(d.serves, d.serves_source) for d in fleet.devices] == [("CPU", "assumed-cpu")] * 2
    assert fleet.source == "cpu+rpc" and fleet.host == HOST and fleet.notes == ()
    (link,) = fleet.links
    assert (link.kind, link.bandwidth_gb_s) == (LinkKind.NETWORK, None)


def test_resolve_nvml_plus_rpc_puts_rpc_first(tmp_path):
    binary = fake_binary(tmp_path, textwrap.dedent("""\
        echo "Available devices:"
        echo "  CUDA0: NVIDIA GeForce RTX 3090 (24135 MiB, 23800 MiB free)"
        echo "  RPC0: 10.0.0.2:50052 (24105 MiB, 24105 MiB free)"
    """))
    gpus = FakeNvml([rtx3090("00000000:01:00.0", "GPU-aaaa0000-0000-0000-0000-000000000000"),
                     rtx3090("00000000:02:00.0", "GPU-bbbb0000-0000-0000-0000-000000000000")])
    fleet = resolve_fleet(rpc="10.0.0.2:50052=3090", nvml=gpus, binary=binary, env={})  # described: no probe
    assert [d.name for d in fleet.devices] == ["RPC0", "CUDA0", "CUDA1"]  # llama.cpp lists RPC first
    assert fleet.source == "nvml+rpc"
    ids = [d.id for d in fleet.devices]
    assert fleet.link(ids[0], ids[1]).kind is LinkKind.NETWORK
    assert fleet.link(ids[1], ids[2]).kind is LinkKind.PHB
    assert len(fleet.links) == 3
