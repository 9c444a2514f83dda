"""Frozen snapshots of devices, links and the host; the planner's only view of hardware.

A ``Fleet`` is everything one planning run knows: the accelerator ``devices`` in the order
llama.cpp will number them, the ``host`` (RAM and CPU, where layers that are not offloaded run),
and the ``topology`` between pairs of devices. Every field that could not be read is ``None``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from llamasplit.devices.measured import MeasuredSpeed


class LinkKind(str, Enum):
    """How two devices are connected, best first (names as in ``nvidia-smi topo -m``)."""

    SAME = "X"  # the device itself
    NVLINK = "NV"  # direct NVLink (count of links in Link.n_links)
    NVSWITCH = "NVS"  # through an NVSwitch fabric
    PIX = "PIX"  # one PCIe switch
    PXB = "PXB"  # several PCIe switches, no host bridge
    PHB = "PHB"  # through the CPU's PCIe host bridge
    NODE = "NODE"  # across host bridges within one NUMA node
    SYS = "SYS"  # across NUMA nodes (QPI/UPI/Infinity Fabric)
    NETWORK = "NET"  # different hosts (llama.cpp RPC)
    UNKNOWN = "?"


@dataclass(frozen=True)
class Link:
    """The connection from device ``a`` to device ``b`` (by ``Device.id``)."""

    a: str
    b: str
    kind: LinkKind
    bandwidth_gb_s: float | None = None
    """Usable bandwidth per direction in GB/s (10^9 bytes/s); ``None`` when unknown."""
    n_links: int | None = None
    """NVLink: the number of links joining the pair."""
    p2p: bool | None = None
    """Whether the driver reports peer-to-peer reads between the pair."""
    latency_us: float | None = None
    """One-way latency of a small transfer, microseconds, when known."""


@dataclass(frozen=True)
class Device:
    """One accelerator as llama.cpp will see it.

    ``name`` is llama.cpp's name (``CUDA0``, ``RPC0[127.0.0.1:50052]``, ``Vulkan1``); ``id`` is stable
    across reboots where we can get one (the GPU UUID, or ``rpc:host:port#n``).
    """

    id: str
    name: str
    description: str
    backend: str
    """``CUDA``, ``RPC``, ``Metal``, ``Vulkan``, ``CPU``, ... as llama.cpp's device names begin."""
    total_bytes: int | None
    free_bytes: int | None
    reserved_bytes: int | None = None
    bandwidth_gb_s: float | None = None
    """Peak memory bandwidth, GB/s (2 x max memory clock x bus width)."""
    fp16_tflops: float | None = None
    """Dense FP16 tensor throughput with FP32 accumulate, TFLOPS (the catalog's ``fp16_tflops``)."""
    fp16_acc16_tflops: float | None = None
    """Dense FP16 tensor throughput with FP16 accumulate, TFLOPS: what cuBLAS gives llama.cpp's F16 weights."""
    int8_tops: float | None = None
    """Dense INT8 TOPS of the path llama.cpp's MMQ kernels take for quantized weights (tensor cores, else dp4a)."""
    board_power_w: float | None = None
    """Maximum board power (datasheet), W: with ``sm_count``, what bounds a compute-bound kernel's clock."""
    sm_count: int | None = None
    """Streaming multiprocessors (catalog); the CUDA context a process creates grows with them."""
    compute_capability: tuple[int, int] | None = None
    nvml_index: int | None = None
    cuda_index: int | None = None
    pci_bus_id: str | None = None
    pcie_gen: int | None = None
    pcie_width: int | None = None
    host: str = "localhost"
    """Where the device lives: ``localhost`` or the RPC endpoint ``host:port``."""
    mig: bool = False
    notes: tuple[str, ...] = ()
    """Things worth telling the user (``bandwidth from catalog``, ``NotSupported: ...``)."""
    measured: MeasuredSpeed | None = None
    """Decode/prefill speed ``llamasplit bench`` measured here; ``None``: not measured."""
    serves: str | None = None
    """RPC devices: the backend behind the worker (``CUDA``, ``CPU``, ...). The RPC client asks the
    worker for alignment and allocation sizes (ggml-rpc.cpp, ``RPC_CMD_GET_ALIGNMENT``/``GET_ALLOC_SIZE``),
    so buffers follow that backend's rules. ``None``: unknown (sized as a CPU)."""
    serves_source: str | None = None
    """Where ``serves`` came from: ``published`` (the worker's device endpoint), ``described``
    (``--rpc HOST:PORT=GPU``) or ``assumed-cpu``."""

    @property
    def alloc_backend(self) -> str:
        """The backend whose allocation rules size this device's buffers: ``serves`` for RPC, else ``backend``.

        >>> Device("rpc:h:1#0", "RPC0", "h:1", "RPC", None, None, serves="CUDA").alloc_backend
        'CUDA'
        >>> Device("rpc:h:1#0", "RPC0", "h:1", "RPC", None, None).alloc_backend
        'CPU'
        """
        kind = self.backend.upper()
        if kind == "RPC":
            return (self.serves or "CPU").upper()
        return kind

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["compute_capability"] = list(self.compute_capability) if self.compute_capability else None
        data["notes"] = list(self.notes)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Device:
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        if kwargs.get("compute_capability") is not None:
            kwargs["compute_capability"] = tuple(kwargs["compute_capability"])
        kwargs["notes"] = tuple(kwargs.get("notes") or ())
        if isinstance(kwargs.get("measured"), dict):
            kwargs["measured"] = MeasuredSpeed.from_dict(kwargs["measured"])
        return cls(**kwargs)


@dataclass(frozen=True)
class HostInfo:
    """The machine llama.cpp runs on: where the non-offloaded layers and the input layer live."""

    name: str = "localhost"
    ram_total_bytes: int | None = None
    ram_available_bytes: int | None = None
    cpu_cores: int | None = None
    ram_bandwidth_gb_s: float | None = None
    """Memory bandwidth of the host, GB/s; sets the speed of layers left on the CPU."""
    measured: MeasuredSpeed | None = None
    """The CPU's decode/prefill speed as ``llamasplit bench`` measured it; ``None``: not measured."""
    cpu_name: str | None = None
    """The CPU's model name (``/proc/cpuinfo``), when known."""
    cpu_flags: tuple[str, ...] | None = None
    """The CPU features ggml's kernels can use (``/proc/cpuinfo`` flags; the AMX ones only when the
    llama.cpp build has AMX): they decide which weights llama.cpp repacks (``planner.repack``)."""
    cpu_machine: str | None = None
    """``x86_64`` or ``aarch64``."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HostInfo:
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        if isinstance(kwargs.get("measured"), dict):
            kwargs["measured"] = MeasuredSpeed.from_dict(kwargs["measured"])
        if kwargs.get("cpu_flags") is not None:
            kwargs["cpu_flags"] = tuple(kwargs["cpu_flags"])
        return cls(**kwargs)


@dataclass(frozen=True)
class Fleet:
    """Everything a plan knows of the hardware, in llama.cpp's device order."""

    devices: tuple[Device, ...]
    host: HostInfo = field(default_factory=HostInfo)
    links: tuple[Link, ...] = ()
    source: str = "unknown"
    """Where this snapshot came from: ``nvml``, ``llama.cpp``, ``inventory:FILE``, ``fleet:SPEC``."""
    simulated: bool = False
    notes: tuple[str, ...] = ()
    """Things worth telling the user about the fleet as a whole (device order, hidden GPUs)."""

    def link(self, a: str, b: str) -> Link | None:
        """The link between two device ids, in either direction; ``None`` when not known."""
        for link in self.links:
            if (link.a, link.b) in ((a, b), (b, a)):
                return link
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "simulated": self.simulated,
            "host": self.host.to_dict(),
            "devices": [d.to_dict() for d in self.devices],
            "links": [
                {**dataclasses.asdict(link), "kind": link.kind.value} for link in self.links
            ],
            "notes": list(self.notes),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Fleet:
        return cls(
            devices=tuple(Device.from_dict(d) for d in data.get("devices", [])),
            host=HostInfo.from_dict(data.get("host", {})),
            links=tuple(
                Link(**{**link, "kind": LinkKind(link["kind"])}) for link in data.get("links", [])
            ),
            source=data.get("source", "unknown"),
            simulated=bool(data.get("simulated", False)),
            notes=tuple(data.get("notes") or ()),
        )
