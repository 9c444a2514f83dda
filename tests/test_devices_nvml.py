"""The NVML source against a fake NVML built from fleet descriptions (real pynvml exception classes)."""

from __future__ import annotations

import ctypes

import pynvml
import pytest
from fake_nvml import (
    GPU,
    SWITCH,
    FakeGpu,
    FakeMig,
    FakeNvml,
    a100_sxm_80g,
    h100_sxm,
    rtx3060,
    rtx3090,
    rtx4060ti16,
)

from llamasplit.devices.device import HostInfo, LinkKind
from llamasplit.devices.nvml import (
    NoGpuFound,
    NvmlSource,
    bus_sort_key,
    memory_bandwidth_gb_s,
    normalize_bus_id,
)
from llamasplit.errors import DeviceQueryError

MiB = 1024**2
GiB = 1024**3
HOST = HostInfo(name="localhost", ram_total_bytes=64 * GiB, ram_available_bytes=48 * GiB, cpu_cores=16)


def read(fake: FakeNvml, env: dict[str, str] | None = None):
    return NvmlSource(fake, env=env or {}, host=HOST).read()


# -- fleets -----------------------------------------------------------------------------------

BUS_A, BUS_B = "00000000:01:00.0", "00000000:21:00.0"
UUID_A = "GPU-3090aaaa-1111-2222-3333-444444444444"
UUID_B = "GPU-3090bbbb-1111-2222-3333-444444444444"


def two_3090s_bridged() -> FakeNvml:
    # the remote bus ids come back in the short lowercase form to exercise normalisation
    a = rtx3090(BUS_A, UUID_A, nvlinks=[("0000:21:00.0", GPU)] * 4)
    b = rtx3090(BUS_B, UUID_B, nvlinks=[("0000:01:00.0", GPU)] * 4)
    return FakeNvml([a, b])


def test_two_3090s_with_an_nvlink_bridge():
    fake = two_3090s_bridged()
    fleet = read(fake)
    assert fleet.source == "nvml" and not fleet.simulated
    a, b = fleet.devices
    assert (a.name, a.id, a.pci_bus_id, a.nvml_index, a.cuda_index) == ("CUDA0", UUID_A, BUS_A, 0, 0)
    assert (b.name, b.id, b.cuda_index) == ("CUDA1", UUID_B, 1)
    assert a.description == "NVIDIA GeForce RTX 3090"
    assert (a.total_bytes, a.free_bytes, a.reserved_bytes) == (25769803776, 24237 * MiB, 327 * MiB)
    assert a.bandwidth_gb_s == 936.096  # 2 x 9751 MHz x 384 bit / 8 / 1000
    assert a.fp16_tflops == 71.0  # NVML has no TFLOPS: from the catalog
    assert (a.compute_capability, a.pcie_gen, a.pcie_width, a.mig) == ((8, 6), 4, 16, False)
    link = fleet.link(a.id, b.id)
    # 4 links x 14.0625 GB/s (GA102 bridge) per direction
    assert (link.kind, link.n_links, link.bandwidth_gb_s, link.p2p) == (LinkKind.NVLINK, 4, 56.25, True)
    assert fleet.host == HOST
    assert fleet.notes == ()
    assert (fake.init_calls, fake.shutdown_calls) == (1, 1)


def test_p2p_index_is_a_plain_int_not_the_pynvml_tuple():
    fake = two_3090s_bridged()
    # the fake fails like ctypes when handed NVML_P2P_CAPS_INDEX_READ from nvidia-ml-py 12.555+: (0,)
    fake.nvmlInit()
    with pytest.raises(ctypes.ArgumentError):
        fake.nvmlDeviceGetP2PStatus(fake.nvmlDeviceGetHandleByIndex(0), fake.nvmlDeviceGetHandleByIndex(1), (0,))
    fake.nvmlShutdown()
    fake.p2p_indices.clear()
    read(fake)
    assert fake.p2p_indices == [0, 2]  # READ, then NVLINK for the bridged pair
    assert all(type(i) is int for i in fake.p2p_indices)


def test_driver_reporting_no_p2p_over_nvlink_is_noted():
    fake = two_3090s_bridged()
    pair = frozenset({BUS_A, BUS_B})
    fake.p2p = {(pair, 0): pynvml.NVML_P2P_STATUS_DISABLED_BY_REGKEY, (pair, 2): pynvml.NVML_P2P_STATUS_NOT_SUPPORTED}
    fleet = read(fake)
    link = fleet.links[0]
    assert (link.kind, link.p2p) == (LinkKind.NVLINK, False)
    assert fleet.notes == ("CUDA0 and CUDA1 share 4 NVLinks but the driver reports NVLink P2P status 5",)


def test_eight_h100_sxm_behind_nvswitch():
    switches = ["00000000:C5:00.0", "00000000:C6:00.0", "00000000:C7:00.0", "00000000:C8:00.0"]
    buses = ["18", "2A", "3A", "5D", "9A", "AB", "BA", "DB"]
    gpus = [h100_sxm(f"00000000:{bus}:00.0", f"GPU-h100000{i}-0000-0000-0000-000000000000", switches)
            for i, bus in enumerate(buses)]
    # socket 0 holds the first four: NODE within, SYS across (hidden by NVSwitch anyway)
    ancestors = {
        frozenset({gpus[i].bus_id, gpus[j].bus_id}): pynvml.NVML_TOPOLOGY_NODE if (i < 4) == (j < 4)
        else pynvml.NVML_TOPOLOGY_SYSTEM
        for i in range(8) for j in range(i + 1, 8)
    }
    fleet = read(FakeNvml(gpus, ancestors=ancestors))
    assert [d.name for d in fleet.devices] == [f"CUDA{i}" for i in range(8)]
    assert {d.bandwidth_gb_s for d in fleet.devices} == {3352.32}  # 2 x 2619 x 5120 / 8 / 1000
    assert {d.total_bytes for d in fleet.devices} == {81559 * MiB}
    assert {d.fp16_tflops for d in fleet.devices} == {989.4}
    assert len(fleet.links) == 28
    # 18 links x 25 GB/s (NVLink4) per direction through the switches
    assert {(l.kind, l.n_links, l.bandwidth_gb_s, l.p2p) for l in fleet.links} == {(LinkKind.NVSWITCH, 18, 450.0, True)}


BUS_3090, BUS_3060, BUS_4060, BUS_3060B = "00000000:01:00.0", "00000000:02:00.0", "00000000:41:00.0", "00000000:81:00.0"
U_3090 = "GPU-3090aaaa-0000-0000-0000-000000000000"
U_3060 = "GPU-3060bbbb-0000-0000-0000-000000000000"
U_4060 = "GPU-4060cccc-0000-0000-0000-000000000000"
U_3060B = "GPU-3060dddd-0000-0000-0000-000000000000"


def mixed(order: tuple[int, ...] = (0, 1, 2, 3)) -> FakeNvml:
    """3090 and 3060 under one host bridge, a 4060 Ti on another root complex, a 3060 on socket 1."""
    gpus = [rtx3090(BUS_3090, U_3090), rtx3060(BUS_3060, U_3060), rtx4060ti16(BUS_4060, U_4060),
            rtx3060(BUS_3060B, U_3060B)]
    T = pynvml
    ancestors = {
        frozenset({BUS_3090, BUS_3060}): T.NVML_TOPOLOGY_HOSTBRIDGE,
        frozenset({BUS_3090, BUS_4060}): T.NVML_TOPOLOGY_NODE,
        frozenset({BUS_3060, BUS_4060}): T.NVML_TOPOLOGY_NODE,
        frozenset({BUS_3090, BUS_3060B}): T.NVML_TOPOLOGY_SYSTEM,
        frozenset({BUS_3060, BUS_3060B}): T.NVML_TOPOLOGY_SYSTEM,
        frozenset({BUS_4060, BUS_3060B}): T.NVML_TOPOLOGY_SYSTEM,
    }
    return FakeNvml([gpus[i] for i in order], ancestors=ancestors)


def test_mixed_fleet_on_different_root_complexes():
    fleet = read(mixed(), env={"CUDA_DEVICE_ORDER": "PCI_BUS_ID"})
    d3090, d3060, d4060, d3060b = fleet.devices
    assert [d.bandwidth_gb_s for d in fleet.devices] == [936.096, 360.048, 288.032, 360.048]
    assert [d.fp16_tflops for d in fleet.devices] == [71.0, 25.5, 44.1, 25.5]
    assert d4060.total_bytes == 16380 * MiB and d4060.pcie_width == 8
    expect = {
        (d3090, d3060): (LinkKind.PHB, 31.52),  # Gen4 x16
        (d3090, d4060): (LinkKind.NODE, 15.76),  # Gen4 x8, the 4060 Ti's width
        (d3060, d4060): (LinkKind.NODE, 15.76),
        (d3090, d3060b): (LinkKind.SYS, 31.52),
        (d3060, d3060b): (LinkKind.SYS, 31.52),
        (d4060, d3060b): (LinkKind.SYS, 15.76),
    }
    for (x, y), (kind, bandwidth) in expect.items():
        link = fleet.link(x.id, y.id)
        assert (link.kind, link.bandwidth_gb_s, link.n_links, link.p2p) == (kind, bandwidth, None, False)
    assert fleet.notes == ()


def test_cuda_order_is_pci_bus_order_not_nvml_order():
    # NVML enumerates 4060 Ti, 3090, 3060 (socket 1), 3060; CUDA with PCI_BUS_ID sorts by bus id
    fleet = read(mixed(order=(2, 0, 3, 1)), env={"CUDA_DEVICE_ORDER": "PCI_BUS_ID"})
    assert [(d.name, d.id, d.nvml_index) for d in fleet.devices] == [
        ("CUDA0", U_3090, 1), ("CUDA1", U_3060, 3), ("CUDA2", U_4060, 0), ("CUDA3", U_3060B, 2)]
    assert fleet.notes == ()
    # without PCI_BUS_ID the user's own CUDA programs may number the cards otherwise: say so
    fleet = read(mixed(order=(2, 0, 3, 1)), env={})
    assert [d.id for d in fleet.devices] == [U_3090, U_3060, U_4060, U_3060B]
    assert len(fleet.notes) == 1 and "FASTEST_FIRST" in fleet.notes[0]


def test_bus_id_normalisation_and_sorting():
    assert normalize_bus_id("0000:0a:00.0") == "00000000:0A:00.0"
    assert normalize_bus_id("00000000:0A:00.0") == "00000000:0A:00.0"
    ids = ["00000001:01:00.0", "0000:0a:00.0", "00000000:09:00.0", "00000000:0A:00.1"]
    assert sorted(ids, key=bus_sort_key) == ["00000000:09:00.0", "0000:0a:00.0", "00000000:0A:00.1", "00000001:01:00.0"]
    assert memory_bandwidth_gb_s(None, 384) is None


# -- CUDA_VISIBLE_DEVICES ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cvd", "uuids", "note"),
    [
        ("2,0", [U_4060, U_3090], None),
        ("GPU-3060dddd,1", [U_3060B, U_3060], None),
        ("3060bbbb-0000-0000-0000-000000000000", [U_3060], None),  # bare UUID, no GPU- prefix
        (" 3 , 0 ", [U_3060B, U_3090], None),
        ("1,9,0", [U_3060], "CUDA_VISIBLE_DEVICES entry '9' matches no GPU; CUDA ignores it and the 1 entry after it"),
        ("0,GPU-3060,1", [U_3090], "CUDA_VISIBLE_DEVICES entry 'GPU-3060' matches no GPU; CUDA ignores it and the 1 entry after it"),
        ("0,0", [U_3090], "CUDA_VISIBLE_DEVICES entry '0' repeats a GPU; CUDA ignores it"),
    ],
)
def test_cuda_visible_devices(cvd, uuids, note):
    fleet = read(mixed(order=(2, 0, 3, 1)), env={"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": cvd})
    assert [d.id for d in fleet.devices] == uuids
    assert [d.name for d in fleet.devices] == [f"CUDA{i}" for i in range(len(uuids))]
    assert fleet.notes == ((note,) if note else ())
    assert len(fleet.links) == len(uuids) * (len(uuids) - 1) // 2


@pytest.mark.parametrize("cvd", ["", "-1", "GPU-3060"])
def test_cuda_visible_devices_hiding_everything(cvd):
    fake = mixed()
    with pytest.raises(NoGpuFound) as err:
        read(fake, env={"CUDA_VISIBLE_DEVICES": cvd})
    assert f"CUDA_VISIBLE_DEVICES={cvd!r} hides all 4" in str(err.value)
    assert "--fleet" in str(err.value) and "--inventory" in str(err.value)
    assert fake.shutdown_calls == 1


# -- MIG --------------------------------------------------------------------------------------

MIG_PARENT = "GPU-a100aaaa-0000-0000-0000-000000000000"
MIG_1 = "MIG-11111111-0000-0000-0000-000000000000"
MIG_2 = "MIG-22222222-0000-0000-0000-000000000000"
A100_WHOLE = "GPU-a100bbbb-0000-0000-0000-000000000000"


def mig_fleet(**kw) -> FakeNvml:
    sliced = a100_sxm_80g(
        "00000000:07:00.0", MIG_PARENT, mig_enabled=True,
        mig=[
            FakeMig(MIG_1, "NVIDIA A100-SXM4-80GB MIG 3g.40gb", 40192 * MiB, 40000 * MiB, 0, 1, 0),
            None,  # an empty slot: NVML says NotFound
            FakeMig(MIG_2, "NVIDIA A100-SXM4-80GB MIG 3g.40gb", 40192 * MiB, 39000 * MiB, 0, 2, 0),
        ],
        **kw,
    )
    whole = a100_sxm_80g("00000000:0F:00.0", A100_WHOLE)
    return FakeNvml([sliced, whole])


def test_mig_partitioned_a100():
    fake = mig_fleet()
    fleet = read(fake, env={"CUDA_DEVICE_ORDER": "PCI_BUS_ID"})
    m1, m2, whole = fleet.devices
    assert [(d.name, d.id, d.mig) for d in fleet.devices] == [
        ("CUDA0", MIG_1, True), ("CUDA1", MIG_2, True), ("CUDA2", A100_WHOLE, False)]
    assert (m1.description, m1.total_bytes, m1.free_bytes) == ("NVIDIA A100-SXM4-80GB MIG 3g.40gb", 40192 * MiB, 40000 * MiB)
    assert (m1.nvml_index, m1.pci_bus_id) == (0, "00000000:07:00.0")
    # 2039.04 GB/s (2 x 1593 MHz x 5120 bit) x 40192/81920 of the memory = 1000.4; 312 x 3/7 = 133.7
    assert (m1.bandwidth_gb_s, m1.fp16_tflops) == (1000.4, 133.7)
    assert (whole.bandwidth_gb_s, whole.fp16_tflops, whole.total_bytes) == (2039.04, 312.0, 81920 * MiB)
    same_gpu = fleet.link(m1.id, m2.id)
    assert (same_gpu.kind, same_gpu.bandwidth_gb_s, same_gpu.p2p) == (LinkKind.PHB, 31.52, False)
    across = fleet.link(m1.id, whole.id)
    assert (across.kind, across.p2p) == (LinkKind.PHB, False)
    assert fake.p2p_indices == []  # no P2P query involves a MIG instance


@pytest.mark.parametrize(
    ("cvd", "uuids"),
    [
        (MIG_2, [MIG_2]),
        ("MIG-2222", [MIG_2]),
        (f"MIG-{MIG_PARENT}/1/0", [MIG_1]),  # the pre-R470 form MIG-GPU-<uuid>/<gi>/<ci>
        ("0", [MIG_1, MIG_2]),
        (f"{A100_WHOLE},{MIG_1}", [A100_WHOLE, MIG_1]),
    ],
)
def test_mig_ids_in_cuda_visible_devices(cvd, uuids):
    fleet = read(mig_fleet(), env={"CUDA_VISIBLE_DEVICES": cvd})
    assert [d.id for d in fleet.devices] == uuids


def test_mig_enabled_without_instances_and_pending_change():
    fake = mig_fleet()
    fake.gpus[0].mig = []
    fake.gpus[1].mig_pending = True
    fleet = read(fake)
    assert [d.id for d in fleet.devices] == [A100_WHOLE]
    assert fleet.notes == (
        "GPU 0 (NVIDIA A100-SXM4-80GB, 00000000:07:00.0) has MIG enabled but no MIG instances; CUDA cannot use it",)
    assert fleet.devices[0].notes == ("a MIG mode change is pending; reset the GPU to apply it",)


# -- missing values ---------------------------------------------------------------------------


def test_memory_v1_fallback_when_v2_is_missing():
    fake = FakeNvml([rtx3090(BUS_A, UUID_A, memory_v2=False)])
    (d,) = read(fake).devices
    assert (d.total_bytes, d.free_bytes, d.reserved_bytes) == (24576 * MiB, 24237 * MiB, None)


def test_unified_memory_reports_host_ram():
    gb10 = FakeGpu(
        name="NVIDIA GB10", uuid="GPU-gb100000-0000-0000-0000-000000000000", bus_id="0000000F:01:00.0",
        total_bytes=0, free_bytes=0, reserved_bytes=0, mem_clock_mhz=None, bus_width=None, cc=(12, 1),
        arch=pynvml.NVML_DEVICE_ARCH_BLACKWELL, pcie_gen=5, pcie_width=1, unified_memory=True,
    )
    (d,) = read(FakeNvml([gb10])).devices
    assert (d.total_bytes, d.free_bytes, d.reserved_bytes) == (64 * GiB, 48 * GiB, None)
    assert d.bandwidth_gb_s is None and d.fp16_tflops is None  # unknown stays None, never 0
    assert "unified memory: NVML reports no framebuffer, so host RAM is shown" in d.notes
    assert "memory bus width: not supported" in d.notes


def test_not_supported_values_become_none_with_a_note():
    odd = rtx3090(BUS_A, UUID_A, name="NVIDIA Mystery GPU", bus_width=None)
    fake = FakeNvml([odd], fail={"nvmlDeviceGetArchitecture": pynvml.NVML_ERROR_NOT_SUPPORTED,
                                 "nvmlDeviceGetMaxPcieLinkWidth": pynvml.NVML_ERROR_NO_PERMISSION})
    (d,) = read(fake).devices
    assert (d.bandwidth_gb_s, d.fp16_tflops, d.pcie_width, d.pcie_gen) == (None, None, None, 4)
    assert d.notes == ("memory bus width: not supported", "architecture: not supported",
                       "max PCIe width: Insufficient Permissions")


def test_bandwidth_falls_back_to_the_catalog():
    fake = FakeNvml([rtx3090(BUS_A, UUID_A, mem_clock_mhz=None)])
    (d,) = read(fake).devices
    assert d.bandwidth_gb_s == 936.0
    assert d.notes == ("max memory clock: not supported", "bandwidth from catalog entry 3090")


# -- failure modes ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "words", "cls"),
    [
        (pynvml.NVML_ERROR_LIBRARY_NOT_FOUND, ["no NVIDIA GPU found", "no NVIDIA driver found", "--fleet", "--inventory"], NoGpuFound),
        (pynvml.NVML_ERROR_DRIVER_NOT_LOADED, ["no NVIDIA GPU found", "not loaded", "modprobe", "--fleet"], NoGpuFound),
        (pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH, ["different versions", "reboot"], DeviceQueryError),
        (pynvml.NVML_ERROR_NO_PERMISSION, ["no permission"], DeviceQueryError),
        (pynvml.NVML_ERROR_UNKNOWN, ["NVML failed while initialising NVML: Unknown Error"], DeviceQueryError),
    ],
)
def test_init_failures(code, words, cls):
    fake = FakeNvml([], init_error=code)
    with pytest.raises(DeviceQueryError) as err:
        read(fake)
    assert type(err.value) is cls
    assert isinstance(err.value.__cause__, pynvml.NVMLError) and err.value.__cause__.value == code
    text = str(err.value)
    assert "\n" not in text
    for word in words:
        assert word in text
    assert fake.shutdown_calls == 0  # nothing to shut down


def test_no_gpus():
    fake = FakeNvml([])
    with pytest.raises(NoGpuFound) as err:
        read(fake)
    assert str(err.value) == ("no NVIDIA GPU found (the driver reports 0 GPUs); "
                              "plan for other hardware with --fleet 2x3090 or --inventory FILE")
    assert fake.shutdown_calls == 1


def test_driver_older_than_binding():
    fake = two_3090s_bridged()
    fake.fail = {"nvmlDeviceGetUUID": pynvml.NVML_ERROR_FUNCTION_NOT_FOUND}
    with pytest.raises(DeviceQueryError) as err:
        read(fake)
    assert str(err.value) == (
        "the NVIDIA driver is older than the nvidia-ml-py binding (NVML has no function for reading the UUID of GPU 0); "
        "upgrade the NVIDIA driver, or install an nvidia-ml-py no newer than the driver")
    assert fake.shutdown_calls == 1


@pytest.mark.parametrize(
    ("fn", "where"),
    [
        ("nvmlDeviceGetName", "reading the name of GPU 1"),
        ("nvmlDeviceGetMemoryInfo", "reading GPU 1 (00000000:21:00.0)"),
        ("nvmlDeviceGetMemoryBusWidth", "reading GPU 1 (00000000:21:00.0)"),
        ("nvmlDeviceGetNvLinkState", "reading the NVLinks of GPU 1 (00000000:21:00.0)"),
    ],
)
def test_lost_gpu(fn, where):
    fake = two_3090s_bridged()
    fake.fail = {(fn, 1): pynvml.NVML_ERROR_GPU_IS_LOST}
    with pytest.raises(DeviceQueryError) as err:
        read(fake)
    text = str(err.value)
    assert text.startswith(f"{where}: the GPU is lost (it fell off the bus); check `dmesg` for Xid 79")
    assert "CUDA_VISIBLE_DEVICES" in text
    assert fake.shutdown_calls == 1


def test_other_errors_in_required_fields():
    fake = two_3090s_bridged()
    fake.fail = {("nvmlDeviceGetPciInfo", 0): pynvml.NVML_ERROR_UNKNOWN}
    with pytest.raises(DeviceQueryError) as err:
        read(fake)
    assert str(err.value).startswith("NVML failed while reading the PCI info of GPU 0: Unknown Error")
    assert fake.shutdown_calls == 1


def test_shutdown_failure_does_not_hide_the_result():
    fake = two_3090s_bridged()
    fake.fail = {"nvmlShutdown": pynvml.NVML_ERROR_UNKNOWN}
    assert len(read(fake).devices) == 2


def test_unofficial_pynvml_is_refused():
    fake = FakeNvml([rtx3090(BUS_A, UUID_A)], official=False)
    with pytest.raises(DeviceQueryError) as err:
        read(fake)
    text = str(err.value)
    assert "is not NVIDIA's nvidia-ml-py" in text and "pip uninstall -y pynvml nvidia-ml-py3" in text
    assert fake.init_calls == 0


def test_nvlink_not_supported_and_invalid_argument_are_skipped():
    # GeForce without NVLink: every link index NotSupported; H100 past its 18 slots: InvalidArgument
    fake = mixed()
    fleet = read(fake, env={"CUDA_DEVICE_ORDER": "PCI_BUS_ID"})
    assert all(l.kind is not LinkKind.NVLINK for l in fleet.links)
    lone = FakeNvml([h100_sxm("00000000:18:00.0", "GPU-h1000000-0000-0000-0000-000000000000", ["00000000:C5:00.0"])])
    assert len(read(lone).devices) == 1
    assert pynvml.NVML_NVLINK_MAX_LINKS > 18  # the loop really walks past the last slot


def test_remote_device_type_unavailable_falls_back_to_bus_ids():
    a = rtx3090(BUS_A, UUID_A, nvlinks=[(BUS_B, GPU)] * 4)
    b = rtx3090(BUS_B, UUID_B, nvlinks=[(BUS_A, GPU)] * 4)
    fake = FakeNvml([a, b], fail={"nvmlDeviceGetNvLinkRemoteDeviceType": pynvml.NVML_ERROR_FUNCTION_NOT_FOUND})
    link = read(fake).links[0]
    assert (link.kind, link.n_links) == (LinkKind.NVLINK, 4)
    # and a link to a bus that is no GPU counts as NVSwitch
    switched = [h100_sxm(f"00000000:{bus}:00.0", f"GPU-h10000{bus}-0000-0000-0000-000000000000", ["00000000:C5:00.0"])
                for bus in ("18", "2A")]
    fake = FakeNvml(switched, fail={"nvmlDeviceGetNvLinkRemoteDeviceType": pynvml.NVML_ERROR_FUNCTION_NOT_FOUND})
    link = read(fake).links[0]
    assert (link.kind, link.n_links, link.bandwidth_gb_s) == (LinkKind.NVSWITCH, 18, 450.0)
    assert SWITCH != GPU


def test_unreadable_nvlink_peer_is_noted_not_fatal():
    fake = two_3090s_bridged()
    fake.fail = {("nvmlDeviceGetNvLinkRemotePciInfo", 0): pynvml.NVML_ERROR_UNKNOWN}
    fleet = read(fake)
    assert fleet.devices[0].notes[:1] == ("NVLink 0 is active but its peer cannot be read: Unknown Error",)
    link = fleet.links[0]
    assert (link.kind, link.n_links, link.bandwidth_gb_s) == (LinkKind.NVLINK, 4, 56.25)  # the peer's side still counts
