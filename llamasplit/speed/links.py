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
    from llamasplit.memory.tensor_split import compat_record

    return compat_record()["calibration"]["rpc_loopback"]


def _defaults() -> dict[str, dict[str, float]]:
    from llamasplit.speed.data import coefficients

    return coefficients()["links"]


DEFAULT_LATENCY_US: dict[str, float] = dict(_defaults()["latency_us"])
"""Per-copy latency (launch, sync and wire) when the fleet does not say (``speed.json`` ``links``).
RPC on loopback is measured (``tensor_compat.json`` ``calibration``: about 580 us per copy on a
2-core host); RPC over a LAN: that plus a LAN round trip (~250 us) less loopback's (~50 us)."""

DEFAULT_BANDWIDTH_GB_S: dict[str, float] = dict(_defaults()["bandwidth_gb_s"])

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


DEFAULT_SUBGRAPH_US: dict[str, float] = dict(_defaults()["subgraph_us"])
"""Per Meta subgraph (or extra device graph) and token: a CUDA graph launch and stream sync; over RPC a serialised graph."""

FOLDED = LinkCost("folded", 0.0, float("inf"), note="measured with the device (llamasplit bench)")
"""A transfer whose cost the device's measured per-token cost already holds."""


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
            if link is not None and link.latency_us is not None:  # measured by llamasplit bench: the whole hop
                bandwidth = link.bandwidth_gb_s or cal["bandwidth_gb_s"]
                return LinkCost(kind, link.latency_us * 1e-6, bandwidth * 1e9, True, 0.0, "measured (llamasplit bench)")
            bandwidth = link.bandwidth_gb_s if link is not None and link.bandwidth_gb_s else cal["bandwidth_gb_s"]
            return LinkCost(kind, cal["latency_us"] * 1e-6, bandwidth * 1e9, True, cal["subgraph_us"] * 1e-6,
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


def device_link(fleet: Fleet | None, a: Device, b: Device, coeffs: object = None) -> LinkCost:
    """The cost of moving an activation from device ``a`` to device ``b`` (one layer-split boundary)."""
    return _link_cost(a, b, fleet.link(a.id, b.id) if fleet else None, None)


def host_link(d: Device, coeffs: object = None) -> LinkCost:
    """The host's link to ``d``: the activations going in, the logits coming out. Folded into a
    measured device's per-token cost (llama-bench measured it with the host in the loop)."""
    if d.measured is not None:
        return FOLDED
    if d.backend.upper() == "RPC":
        local = d.host.rsplit(":", 1)[0] in {"127.0.0.1", "localhost", "::1", "[::1]"}
        if local:
            cal = _loopback()
            return LinkCost("rpc-loopback", cal["latency_us"] * 1e-6, cal["bandwidth_gb_s"] * 1e9, True, 0.0,
                            "calibrated on loopback (tensor_compat.json)")
        return LinkCost("network", DEFAULT_LATENCY_US["network"] * 1e-6, DEFAULT_BANDWIDTH_GB_S["network"] * 1e9, True)
    bandwidth = DEFAULT_BANDWIDTH_GB_S["host"]
    if d.pcie_gen and d.pcie_width:
        from llamasplit.devices.catalog import pcie_gb_s

        bandwidth = pcie_gb_s(d.pcie_gen, d.pcie_width) or bandwidth
    return LinkCost("host", DEFAULT_LATENCY_US["host"] * 1e-6, bandwidth * 1e9, False, 0.0, f"host<->{d.name}")
