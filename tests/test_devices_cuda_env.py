"""The child environment: CUDA devices pinned by UUID in plan order, nothing else touched."""

from __future__ import annotations

import pytest

from llamasplit.devices.cuda_env import CudaUnit, launch_env, visible_units
from llamasplit.devices.device import Device
from llamasplit.devices.fleet import fleet_from_spec
from llamasplit.errors import DeviceQueryError

G1 = "GPU-11111111-0000-0000-0000-000000000000"
G2 = "GPU-22222222-0000-0000-0000-000000000000"
M1 = "MIG-33333333-0000-0000-0000-000000000000"


def cuda(uuid: str, n: int) -> Device:
    return Device(id=uuid, name=f"CUDA{n}", description="gpu", backend="CUDA", total_bytes=1, free_bytes=1)


def rpc(n: int) -> Device:
    return Device(id=f"rpc:10.0.0.2:50052#{n}", name=f"RPC{n}", description="10.0.0.2:50052", backend="RPC",
                  total_bytes=1, free_bytes=1, host="10.0.0.2:50052")


def test_uuids_in_plan_order_and_base_env_untouched():
    base = {"PATH": "/usr/bin", "CUDA_VISIBLE_DEVICES": "0,1", "CUDA_DEVICE_ORDER": "FASTEST_FIRST"}
    before = dict(base)
    env = launch_env([rpc(0), cuda(G2, 1), cuda(M1, 2), cuda(G1, 0)], base)
    assert env == {"PATH": "/usr/bin", "CUDA_VISIBLE_DEVICES": f"{G2},{M1},{G1}", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    assert base == before
    assert env is not base


def test_devices_without_uuid_leave_visibility_alone():
    fleet = fleet_from_spec("2x3090")
    env = launch_env(fleet.devices, {"CUDA_VISIBLE_DEVICES": "1,0"})
    assert env == {"CUDA_VISIBLE_DEVICES": "1,0", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    assert launch_env([rpc(0)], {}) == {"CUDA_DEVICE_ORDER": "PCI_BUS_ID"}


def test_mixed_pinned_and_unpinned_cuda_devices_are_refused():
    sim = fleet_from_spec("3090").devices[0]
    with pytest.raises(DeviceQueryError) as err:
        launch_env([cuda(G1, 0), sim], {})
    assert "CUDA0 has no GPU UUID" in str(err.value)


def test_a_device_twice_is_refused():
    with pytest.raises(DeviceQueryError):
        launch_env([cuda(G1, 0), cuda(G1, 1)], {})


def test_visible_units_rules():
    units = [CudaUnit(G1, 0), CudaUnit(M1, 1, parent_uuid=G2, gpu_instance_id=1, compute_instance_id=0)]
    assert visible_units(units, None) == ([0, 1], [])
    assert visible_units(units, "") == ([], [])
    assert visible_units(units, "1") == ([1], [])  # index of the MIG parent: its instances
    assert visible_units(units, "GPU-22222222") == ([1], [])
    assert visible_units(units, f"MIG-{G2}/1/0,0") == ([1, 0], [])
    assert visible_units(units, f"MIG-{G2}/2/0,0") == (
        [], [f"CUDA_VISIBLE_DEVICES entry 'MIG-{G2}/2/0' matches no GPU; CUDA ignores it and the 1 entry after it"])
    assert visible_units(units, "0,1,2,3")[1] == [
        "CUDA_VISIBLE_DEVICES entry '2' matches no GPU; CUDA ignores it and the 1 entry after it"]
    assert visible_units(units, "GPU-") == (
        [], ["CUDA_VISIBLE_DEVICES entry 'GPU-' matches no GPU; CUDA ignores it"])  # ambiguous prefix
