"""What moving data between two devices costs: NVLink, PCIe peer-to-peer, host-staged PCIe, and
the network (or loopback) under llama.cpp's RPC backend.

Link figures come from the fleet; ``DEFAULT_LATENCY_US`` and ``DEFAULT_BANDWIDTH_GB_S`` fill in
what a fleet does not know; RPC on loopback was calibrated on the real stack (``tensor_compat.json``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from llamasplit.devices.device import Device, Fleet, Link, LinkKind

def _loopback() -> dict[str, float]:
    from llamasplit.planner.tensor_split import compat_record

    return compat_record()["calibration"]["rpc_loopback"]


DEFAULT_LATENCY_US = {"nvlink": 8.0, "pcie-p2p": 12.0, "host-staged": 25.0, "network": 780.0}
"""Per-copy latency (launch, sync and wire) when the fleet does not say. NVLink/PCIe: typical small
NCCL/cudaMemcpyPeer latencies. RPC on loopback is measured (``tensor_compat.json`` ``calibration``:
about 580 us per copy on a 2-core host); RPC over a LAN: that plus a LAN round trip (~250 us) less
loopback's (~50 us)."""

DEFAULT_BANDWIDTH_GB_S = {"pcie-p2p": 16.0, "host-staged": 8.0, "network": 1.25}


@dataclass(frozen=True)
class LinkCost:
    """What moving data between two devices costs.

    One copy costs ``latency_s + bytes / bandwidth_bytes_s``, twice the bytes when ``staged`` (the
    data goes to the host and back out: RPC, PCIe without peer-to-peer). ``subgraph_s`` is what
    each Meta subgraph costs beyond its compute (launch and synchronisation; over RPC the whole
    subgraph is serialised and sent every time, since its graph id changes from one to the next).
    """

    kind: str
    latency_s: float
    bandwidth_bytes_s: float
    staged: bool = False
    subgraph_s: float = 0.0
    note: str = ""

    def seconds(self, n_bytes: float) -> float:
        return self.latency_s + (2 if self.staged else 1) * n_bytes / self.bandwidth_bytes_s

    def to_dict(self) -> dict[str, object]:
        return {
            "kind": self.kind, "latency_us": self.latency_s * 1e6, "bandwidth_gb_s": self.bandwidth_bytes_s / 1e9,
            "staged": self.staged, "subgraph_us": self.subgraph_s * 1e6, "note": self.note,
        }


DEFAULT_SUBGRAPH_US = {"nvlink": 6.0, "pcie-p2p": 6.0, "host-staged": 8.0, "network": 200.0}
"""Per Meta subgraph and token: a CUDA graph launch and stream sync; over RPC a serialised graph."""


def _link_cost(a: Device, b: Device, link: Link | None, loopback: LinkCost | None) -> LinkCost:
    rpc = a.backend.upper() == "RPC" or b.backend.upper() == "RPC"
    if rpc:
        hosts = {d.host.rsplit(":", 1)[0] for d in (a, b) if d.backend.upper() == "RPC"}
        local = hosts <= {"127.0.0.1", "localhost", "::1", "[::1]"}
        kind = "rpc-loopback" if local else "network"
        if local:
            if loopback is not None:
                return loopback
            cal = _loopback()
            latency = link.latency_us if link is not None and link.latency_us is not None else cal["latency_us"]
            bandwidth = link.bandwidth_gb_s if link is not None and link.bandwidth_gb_s else cal["bandwidth_gb_s"]
            return LinkCost(kind, latency * 1e-6, bandwidth * 1e9, True, cal["subgraph_us"] * 1e-6,
                            "calibrated on loopback (tensor_compat.json)")
    elif link is None:
        kind = "pcie-p2p"
    elif link.kind in (LinkKind.NVLINK, LinkKind.NVSWITCH):
        kind = "nvlink"
    elif link.p2p is False or link.kind in (LinkKind.NODE, LinkKind.SYS):
        kind = "host-staged"
    else:
        kind = "pcie-p2p"
    latency = link.latency_us if link is not None and link.latency_us is not None else DEFAULT_LATENCY_US[kind]
    if link is not None and link.bandwidth_gb_s:
        bandwidth = link.bandwidth_gb_s
    else:
        bandwidth = DEFAULT_BANDWIDTH_GB_S.get(kind, 16.0)
    staged = kind in ("host-staged", "network", "rpc-loopback")
    return LinkCost(kind, latency * 1e-6, bandwidth * 1e9, staged, DEFAULT_SUBGRAPH_US[kind] * 1e-6, f"{a.name}<->{b.name}")


def group_link(fleet: Fleet | None, devices: Sequence[Device], *, loopback: LinkCost | None = None) -> LinkCost | None:
    """The slowest link among ``devices`` (a collective is as slow as its slowest hop); ``None`` for one device."""
    worst: LinkCost | None = None
    for i, a in enumerate(devices):
        for b in devices[i + 1:]:
            cost = _link_cost(a, b, fleet.link(a.id, b.id) if fleet else None, loopback)
            if worst is None or cost.seconds(1 << 20) > worst.seconds(1 << 20):
                worst = cost
    return worst


def hop_links(fleet: Fleet, devices: Sequence[Device]) -> list[LinkCost]:
    out = []
    for a, b in zip(devices, devices[1:]):
        out.append(_link_cost(a, b, fleet.link(a.id, b.id), None))
    return out
