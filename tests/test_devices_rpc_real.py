"""The real thing: two ``ggml-rpc-server`` workers on loopback, listed by the real ``llama-server``."""

from __future__ import annotations

import pynvml
import pytest
from fake_nvml import FakeNvml
from procs import endpoints, free_port, rpc_workers

from llamasplit.devices.device import LinkKind
from llamasplit.devices.listdevices import list_devices
from llamasplit.devices.sources import resolve_fleet
from llamasplit.errors import DeviceQueryError, LaunchError
from llamasplit.llamacpp.binaries import find_binary

MiB = 1024**2


def _binary(name: str):
    try:
        return find_binary(name)
    except LaunchError as exc:
        pytest.skip(f"llama.cpp binary {name} not built: {exc.one_line()}")


@pytest.mark.llamacpp
def test_list_devices_of_two_real_rpc_workers():
    server = _binary("llama-server")
    _binary("ggml-rpc-server")
    with rpc_workers(2) as workers:
        eps = endpoints(workers)
        assert all(ep.startswith("127.0.0.1:") for ep in eps)
        devices = [d for d in list_devices(server, eps, timeout_s=60) if d.backend == "RPC"]
        fleet = resolve_fleet(
            rpc=",".join(eps), nvml=FakeNvml([], init_error=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND),
            binary=server, env={},
        )
    # every worker shows up, in --rpc order, numbered RPC0..n by llama.cpp
    assert [d.host for d in devices][:1] == [eps[0]] and {d.host for d in devices} == set(eps)
    assert [d.name for d in devices] == [f"RPC{i}" for i in range(len(devices))]
    for d in devices:
        assert d.total_bytes > 0 and d.total_bytes % MiB == 0
        assert 0 <= d.free_bytes <= d.total_bytes
        assert d.id.startswith(f"rpc:{d.host}#")
    assert [d.id for d in fleet.devices] == [d.id for d in devices]
    assert fleet.source == "cpu+rpc"  # no GPU here: the CPU fleet, RPC workers first
    first, last = fleet.devices[0], fleet.devices[-1]
    assert fleet.link(first.id, last.id).kind is LinkKind.NETWORK


@pytest.mark.llamacpp
def test_unreachable_rpc_worker_is_one_line():
    server = _binary("llama-server")
    port = free_port()  # nothing listens there
    with pytest.raises(DeviceQueryError) as err:
        list_devices(server, [f"127.0.0.1:{port}"], timeout_s=60)
    assert str(err.value).startswith(f"RPC worker 127.0.0.1:{port} did not answer")
    assert "\n" not in str(err.value)
