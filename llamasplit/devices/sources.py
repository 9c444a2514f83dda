"""Where a fleet comes from: one small interface, and the rule that picks a source.

``resolve_fleet`` takes, in this order: a ``--fleet`` spec (simulated), else an ``--inventory``
file, else the local GPUs through NVML. RPC workers (``--rpc host:port,...``) are read through
llama.cpp's own ``--list-devices`` and put first, as llama.cpp orders them.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from llamasplit.devices.device import Device, Fleet, Link, LinkKind
from llamasplit.devices.fleet import fleet_from_spec
from llamasplit.devices.inventory import load_inventory
from llamasplit.devices.listdevices import list_devices, parse_endpoints
from llamasplit.devices.nvml import NoGpuFound, NvmlSource, local_host
from llamasplit.errors import UsageError
from llamasplit.units import format_size


@runtime_checkable
class DeviceSource(Protocol):
    """Anything that can take one snapshot of the hardware."""

    def read(self) -> Fleet:
        """Read the devices once; raise ``DeviceQueryError`` with one line when it cannot."""
        ...


@dataclasses.dataclass(frozen=True)
class SpecSource:
    """A simulated fleet from a spec such as ``2x3090,3060-12g``."""

    spec: str

    def read(self) -> Fleet:
        return fleet_from_spec(self.spec)


@dataclasses.dataclass(frozen=True)
class InventorySource:
    """A fleet saved earlier with ``llamasplit gpus --save FILE``."""

    path: Path

    def read(self) -> Fleet:
        return load_inventory(self.path)


@dataclasses.dataclass(frozen=True)
class ListDevicesSource:
    """Devices as a llama.cpp binary lists them (``--rpc ... --list-devices``)."""

    binary: Path
    rpc: tuple[str, ...] = ()
    timeout_s: float = 60.0

    def read(self) -> Fleet:
        devices = list_devices(self.binary, self.rpc, timeout_s=self.timeout_s)
        return Fleet(devices=tuple(devices), host=local_host(), source="llama.cpp", links=network_links(devices))


def network_links(devices: Sequence[Device], existing: Sequence[Link] = ()) -> tuple[Link, ...]:
    """``existing`` plus a link for every pair involving an RPC device: ``NET`` across hosts, unknown within one."""
    links = list(existing)
    for i, a in enumerate(devices):
        for b in devices[i + 1:]:
            if a.backend != "RPC" and b.backend != "RPC":
                continue
            kind = LinkKind.UNKNOWN if a.host == b.host else LinkKind.NETWORK
            links.append(Link(a.id, b.id, kind))
    return tuple(links)


def with_rpc_devices(fleet: Fleet, rpc_devices: Sequence[Device]) -> Fleet:
    """``fleet`` with ``rpc_devices`` put first (llama.cpp's order); stale copies of them are dropped,
    but what ``llamasplit bench`` measured on them (speeds, the links between them) is kept."""
    hosts = {d.host for d in rpc_devices}
    stale = {d.id: d for d in fleet.devices if d.backend == "RPC" and d.host in hosts}
    rpc_devices = [dataclasses.replace(d, measured=stale[d.id].measured)
                   if d.id in stale and d.measured is None and stale[d.id].measured is not None else d for d in rpc_devices]
    kept = tuple(d for d in fleet.devices if d.id not in stale)
    local_ids = {d.id for d in kept if d.backend != "RPC"}
    local_links = [link for link in fleet.links if link.a in local_ids and link.b in local_ids]
    new_ids = {d.id for d in rpc_devices}
    local_links += [link for link in fleet.links if link.a in new_ids and link.b in new_ids and link.latency_us is not None]
    devices = tuple(rpc_devices) + kept
    source = fleet.source if fleet.source.endswith("+rpc") else f"{fleet.source}+rpc"
    return dataclasses.replace(fleet, devices=devices, links=network_links(devices, local_links), source=source)


def _rpc_devices(endpoints: list[str], binary: str | Path | None, timeout_s: float) -> list[Device]:
    if binary is None:
        from llamasplit.llamacpp.binaries import find_binary  # lazily: the llama.cpp side is optional

        binary = find_binary("llama-server")
    return [d for d in list_devices(binary, endpoints, timeout_s=timeout_s) if d.backend == "RPC"]


def cpu_fleet(reason: str | None = None) -> Fleet:
    """This machine with no GPU: llama.cpp runs every layer on the CPU, in RAM.

    ``reason`` (why no GPU was found) becomes the fleet's note, which the CLI prints as one line.
    """
    host = local_host()
    notes: tuple[str, ...] = ()
    if reason is not None:
        ram = format_size(host.ram_total_bytes) if host.ram_total_bytes is not None else "unknown"
        cores = host.cpu_cores if host.cpu_cores is not None else "?"
        notes = (f"{reason}; planning for the CPU ({host.cpu_name or 'CPU'}, {cores} cores, {ram} RAM)",)
    return Fleet(devices=(), host=host, source="cpu", notes=notes)


def resolve_fleet(
    fleet_spec: str | None = None,
    inventory: str | Path | None = None,
    rpc: str | Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
    *,
    nvml: Any | None = None,
    binary: str | Path | None = None,
    timeout_s: float = 60.0,
    fetch: Any | None = None,
) -> Fleet:
    """The fleet to plan for: ``--fleet`` spec, else ``--inventory`` file, else NVML (+ RPC workers).

    ``env`` is the environment the plan will run under (``CUDA_VISIBLE_DEVICES``); default a copy of
    ``os.environ`` taken here. ``nvml`` and ``binary`` replace pynvml and the llama.cpp binary
    (tests); ``fetch`` the request for what a worker publishes (``workerinfo.serving``). With no local GPU: the CPU alone (``cpu_fleet``), plus the RPC workers if any.
    """
    if fleet_spec is not None and inventory is not None:
        raise UsageError("give --fleet or --inventory, not both", remedy="--fleet simulates, --inventory reads a saved fleet")
    endpoints = parse_endpoints(rpc)
    if fleet_spec is not None:
        fleet = SpecSource(fleet_spec).read()
    elif inventory is not None:
        fleet = InventorySource(Path(inventory)).read()
    else:
        snapshot_env = dict(os.environ if env is None else env)
        try:
            fleet = NvmlSource(nvml, env=snapshot_env).read()
        except NoGpuFound as err:
            fleet = cpu_fleet(None if endpoints else err.message)
    if endpoints:
        from llamasplit.devices.workerinfo import serving_fleet

        fleet = serving_fleet(fleet, _rpc_devices(endpoints, binary, timeout_s), rpc, fetch=fetch)
    return fleet
