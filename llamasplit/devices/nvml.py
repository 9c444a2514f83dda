"""The NVML device source: read the local NVIDIA GPUs once into frozen ``Device``s and ``Link``s.

NVML sits behind one door: ``NvmlSource(nvml=...)`` takes the module object (default
``import pynvml``, NVIDIA's official nvidia-ml-py), so tests pass a fake with the same function
names that raises pynvml's own exception classes.

What is read, per GPU: name, UUID, PCI bus id, memory (``nvmlMemory_v2``, falling back to v1;
NotSupported on both means unified memory, reported as host RAM), bandwidth
(2 x max memory clock MHz x bus width bits / 8 / 1000), compute capability, architecture,
max PCIe generation and width, MIG mode (a MIG-enabled GPU contributes its MIG instances).
Per pair: NVLink links whose remote bus id is the peer (per-link bandwidth from the architecture
table in the catalog, not the reported NVLink version), NVSwitch links, P2P read status and the
PCIe common ancestor (PIX/PXB/PHB/NODE/SYS).

Order: devices come out in CUDA order under ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` (the order llamasplit
launches with), filtered and ordered by ``CUDA_VISIBLE_DEVICES`` from the ``env`` given, and are
named ``CUDA{cuda_index}``. Every NVML failure becomes one ``DeviceQueryError`` line; values a GPU
does not support become ``None`` with a note. ``nvmlShutdown`` is always called.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from types import ModuleType
from typing import Any

from llamasplit.devices.catalog import Catalog, load_catalog
from llamasplit.devices.cuda_env import CudaUnit, visible_units
from llamasplit.devices.device import Device, Fleet, HostInfo, Link, LinkKind
from llamasplit.errors import DeviceQueryError

P2P_CAPS_INDEX_READ = 0
"""Passed as a plain int: nvidia-ml-py 12.555+ defines ``NVML_P2P_CAPS_INDEX_READ = 0,`` (a tuple)."""
P2P_CAPS_INDEX_NVLINK = 2
P2P_STATUS_OK = 0

NO_GPU_REMEDY = "plan for other hardware with --fleet 2x3090 or --inventory FILE"

_ANCESTOR_KIND = {
    0: LinkKind.PIX,  # NVML_TOPOLOGY_INTERNAL: two GPUs on one board
    10: LinkKind.PIX,  # SINGLE
    20: LinkKind.PXB,  # MULTIPLE
    30: LinkKind.PHB,  # HOSTBRIDGE
    40: LinkKind.NODE,  # NODE
    50: LinkKind.SYS,  # SYSTEM
}

_MIG_SLICES_RE = re.compile(r"\b(\d)g\.\d+gb\b", re.IGNORECASE)
_MIG_COMPUTE_SLICES = 7  # A100/H100/H200: 7 compute slices per GPU


class NoGpuFound(DeviceQueryError):
    """NVML works or is absent, but there is no GPU to use (no driver, none present, all hidden)."""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def normalize_bus_id(bus_id: str) -> str:
    """``0000:01:00.0`` or ``00000000:01:00.0`` (any case) -> ``00000000:01:00.0``.

    >>> normalize_bus_id("0000:3b:00.0")
    '00000000:3B:00.0'
    """
    text = _text(bus_id).strip()
    match = re.fullmatch(r"(?:([0-9a-fA-F]{1,8}):)?([0-9a-fA-F]{1,2}):([0-9a-fA-F]{1,2})\.([0-7])", text)
    if not match:
        return text.upper()
    domain = int(match.group(1) or "0", 16)
    return f"{domain:08X}:{int(match.group(2), 16):02X}:{int(match.group(3), 16):02X}.{match.group(4)}"


def bus_sort_key(bus_id: str) -> tuple[int, ...] | tuple[int, str]:
    """Sort key ordering PCI bus ids as CUDA's ``PCI_BUS_ID`` order does (domain, bus, device, function)."""
    norm = normalize_bus_id(bus_id)
    match = re.fullmatch(r"([0-9A-F]{8}):([0-9A-F]{2}):([0-9A-F]{2})\.([0-7])", norm)
    if not match:
        return (1 << 40, norm)
    return tuple(int(g, 16) for g in match.groups())


def memory_bandwidth_gb_s(max_mem_clock_mhz: int | None, bus_width_bits: int | None) -> float | None:
    """Peak memory bandwidth from NVML's numbers: 2 x clock MHz x width bits / 8 / 1000.

    >>> memory_bandwidth_gb_s(9751, 384)
    936.096
    """
    if not max_mem_clock_mhz or not bus_width_bits:
        return None
    return 2 * max_mem_clock_mhz * bus_width_bits / 8 / 1000


@dataclass
class _Gpu:
    """What was read of one physical GPU (mutable while reading, then turned into Devices)."""

    nvml_index: int
    handle: Any
    name: str
    uuid: str
    bus_id: str
    notes: list[str] = field(default_factory=list)
    total_bytes: int | None = None
    free_bytes: int | None = None
    reserved_bytes: int | None = None
    bandwidth_gb_s: float | None = None
    fp16_tflops: float | None = None
    fp16_acc16_tflops: float | None = None
    int8_tops: float | None = None
    board_power_w: float | None = None
    sm_count: int | None = None
    compute_capability: tuple[int, int] | None = None
    architecture: str | None = None
    pcie_gen: int | None = None
    pcie_width: int | None = None
    mig_enabled: bool = False
    mig: list[_Mig] = field(default_factory=list)
    nvlink_peers: list[str] = field(default_factory=list)
    """Remote bus ids of active NVLinks to GPUs."""
    nvswitch_links: int = 0


@dataclass
class _Mig:
    """What was read of one MIG instance of a GPU."""

    handle: Any
    uuid: str
    name: str
    total_bytes: int | None
    free_bytes: int | None
    reserved_bytes: int | None
    gpu_instance_id: int | None
    compute_instance_id: int | None
    notes: list[str] = field(default_factory=list)


class NvmlSource:
    """``DeviceSource`` for the local NVIDIA GPUs, read through NVML.

    ``nvml``: the pynvml module or a fake with its names (default: ``import pynvml``).
    ``env``: the environment whose ``CUDA_VISIBLE_DEVICES``/``CUDA_DEVICE_ORDER`` apply (default:
    a copy of ``os.environ`` taken here; the source never changes it).
    ``host``: the host snapshot; default read with psutil.
    """

    def __init__(
        self,
        nvml: Any | None = None,
        *,
        env: Mapping[str, str] | None = None,
        host: HostInfo | None = None,
        catalog: Catalog | None = None,
    ) -> None:
        self._nvml = nvml
        self._env = dict(os.environ if env is None else env)
        self._host = host
        self._catalog = catalog

    def read(self) -> Fleet:
        """One snapshot of every CUDA-visible GPU and the links between them."""
        nvml = self._nvml if self._nvml is not None else _import_pynvml()
        check_official(nvml)
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as exc:
            raise init_error(nvml, exc) from exc
        try:
            return _Reader(nvml, self._env, self._host, self._catalog or load_catalog()).read()
        finally:
            try:
                nvml.nvmlShutdown()
            except nvml.NVMLError:
                pass


def _import_pynvml() -> ModuleType:
    try:
        import pynvml
    except ImportError as exc:
        raise DeviceQueryError(
            "cannot import pynvml (package nvidia-ml-py)",
            remedy="pip install nvidia-ml-py==13.615.71, or " + NO_GPU_REMEDY,
        ) from exc
    return pynvml


def check_official(nvml: Any) -> None:
    """Refuse the unofficial ``pynvml``/``nvidia-ml-py3`` packages that shadow NVIDIA's module.

    Like gpustat, tell them apart by the absence of ``_nvmlGetFunctionPointer``.
    """
    if not hasattr(nvml, "_nvmlGetFunctionPointer"):
        where = getattr(nvml, "__file__", None) or getattr(nvml, "__name__", "pynvml")
        raise DeviceQueryError(
            f"the pynvml module at {where} is not NVIDIA's nvidia-ml-py (an unofficial pynvml or nvidia-ml-py3 shadows it)",
            remedy="pip uninstall -y pynvml nvidia-ml-py3 && pip install --force-reinstall nvidia-ml-py==13.615.71",
        )


def _is(nvml: Any, exc: BaseException, name: str) -> bool:
    cls = getattr(nvml, name, None)
    return isinstance(cls, type) and isinstance(exc, cls)


def init_error(nvml: Any, exc: BaseException) -> DeviceQueryError:
    """The one line for an ``nvmlInit`` failure."""
    if _is(nvml, exc, "NVMLError_LibraryNotFound"):
        return NoGpuFound(
            "no NVIDIA GPU found (no NVIDIA driver found: libnvidia-ml.so.1 cannot be loaded)",
            remedy="install the NVIDIA driver, or " + NO_GPU_REMEDY,
        )
    if _is(nvml, exc, "NVMLError_DriverNotLoaded"):
        return NoGpuFound(
            "no NVIDIA GPU found (the NVIDIA kernel driver is installed but not loaded)",
            remedy="load it with `sudo modprobe nvidia` or reboot, or " + NO_GPU_REMEDY,
        )
    if _is(nvml, exc, "NVMLError_LibRmVersionMismatch"):
        return DeviceQueryError(
            "the NVIDIA driver library and the loaded kernel module have different versions "
            "(the driver was upgraded without a reboot)",
            remedy="reboot (or reload the nvidia kernel modules)",
        )
    return query_error(nvml, exc, "initialising NVML")


def query_error(nvml: Any, exc: BaseException, what: str) -> DeviceQueryError:
    """The one line for any other NVML failure while reading ``what``."""
    if _is(nvml, exc, "NVMLError_FunctionNotFound"):
        return DeviceQueryError(
            f"the NVIDIA driver is older than the nvidia-ml-py binding (NVML has no function for {what})",
            remedy="upgrade the NVIDIA driver, or install an nvidia-ml-py no newer than the driver",
        )
    if _is(nvml, exc, "NVMLError_GpuIsLost"):
        return DeviceQueryError(
            f"{what}: the GPU is lost (it fell off the bus)",
            remedy="check `dmesg` for Xid 79 and power-cycle the machine; "
            "hide the GPU with CUDA_VISIBLE_DEVICES meanwhile",
        )
    if _is(nvml, exc, "NVMLError_NoPermission"):
        return DeviceQueryError(f"no permission to query NVML ({what})", remedy="run as a user with access to /dev/nvidia*")
    if _is(nvml, exc, "NVMLError_LibRmVersionMismatch"):
        return init_error(nvml, exc)
    return DeviceQueryError(f"NVML failed while {what}: {exc}", remedy="check `nvidia-smi`; or " + NO_GPU_REMEDY)


class _Reader:
    """One read of NVML; holds the module, the notes and the GPUs while reading."""

    def __init__(self, nvml: Any, env: Mapping[str, str], host: HostInfo | None, catalog: Catalog) -> None:
        self.nvml = nvml
        self.env = env
        self.host = host
        self.catalog = catalog
        self.fleet_notes: list[str] = []

    # -- calls -----------------------------------------------------------------------------

    def must(self, what: str, fn: Callable[..., Any], *args: Any) -> Any:
        """A value the read cannot do without: any failure is a ``DeviceQueryError``."""
        try:
            return fn(*args)
        except self.nvml.NVMLError as exc:
            raise query_error(self.nvml, exc, what) from exc

    def may(self, notes: list[str], what: str, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        """A value that may be missing: NotSupported (or another non-fatal error) -> ``None`` and a note."""
        try:
            return fn(*args, **kw)
        except self.nvml.NVMLError as exc:
            if _is(self.nvml, exc, "NVMLError_GpuIsLost"):
                raise
            if _is(self.nvml, exc, "NVMLError_NotSupported"):
                notes.append(f"{what}: not supported")
            else:
                notes.append(f"{what}: {exc}")
            return None

    def _host(self) -> HostInfo:
        if self.host is None:
            self.host = local_host()
        return self.host

    # -- reading ---------------------------------------------------------------------------

    def read(self) -> Fleet:
        nvml = self.nvml
        count = self.must("counting GPUs", nvml.nvmlDeviceGetCount)
        if count == 0:
            raise NoGpuFound("no NVIDIA GPU found (the driver reports 0 GPUs)", remedy=NO_GPU_REMEDY)
        gpus: list[_Gpu] = []
        for index in range(count):
            what = f"reading GPU {index}"
            try:
                gpus.append(self.read_gpu(index))
            except nvml.NVMLError as exc:
                raise query_error(nvml, exc, what) from exc
        by_bus = {g.bus_id: g for g in gpus}
        for gpu in gpus:
            try:
                self.read_nvlinks(gpu, by_bus)
            except nvml.NVMLError as exc:
                raise query_error(nvml, exc, f"reading the NVLinks of GPU {gpu.nvml_index} ({gpu.bus_id})") from exc
        return self.assemble(gpus)

    def read_gpu(self, index: int) -> _Gpu:
        nvml = self.nvml
        handle = self.must(f"getting the handle of GPU {index}", nvml.nvmlDeviceGetHandleByIndex, index)
        name = _text(self.must(f"reading the name of GPU {index}", nvml.nvmlDeviceGetName, handle))
        uuid = _text(self.must(f"reading the UUID of GPU {index}", nvml.nvmlDeviceGetUUID, handle))
        pci = self.must(f"reading the PCI info of GPU {index}", nvml.nvmlDeviceGetPciInfo, handle)
        gpu = _Gpu(nvml_index=index, handle=handle, name=name, uuid=uuid, bus_id=normalize_bus_id(pci.busId))
        notes = gpu.notes
        try:
            gpu.total_bytes, gpu.free_bytes, gpu.reserved_bytes = self.read_memory(handle, notes)
            if gpu.total_bytes is None:
                host = self._host()
                gpu.total_bytes, gpu.free_bytes = host.ram_total_bytes, host.ram_available_bytes
                notes.append("unified memory: NVML reports no framebuffer, so host RAM is shown")
            clock = self.may(notes, "max memory clock", nvml.nvmlDeviceGetMaxClockInfo, handle, nvml.NVML_CLOCK_MEM)
            width = self.may(notes, "memory bus width", nvml.nvmlDeviceGetMemoryBusWidth, handle)
            gpu.bandwidth_gb_s = memory_bandwidth_gb_s(clock, width)
            cc = self.may(notes, "compute capability", nvml.nvmlDeviceGetCudaComputeCapability, handle)
            gpu.compute_capability = (int(cc[0]), int(cc[1])) if cc is not None else None
            arch = self.may(notes, "architecture", nvml.nvmlDeviceGetArchitecture, handle)
            gpu.architecture = self.catalog.architectures.get(arch) if arch is not None else None
            gen = self.may(notes, "max PCIe generation", nvml.nvmlDeviceGetMaxPcieLinkGeneration, handle)
            if gen is None and hasattr(nvml, "nvmlDeviceGetGpuMaxPcieLinkGeneration"):
                gen = self.may([], "GPU max PCIe generation", nvml.nvmlDeviceGetGpuMaxPcieLinkGeneration, handle)
            gpu.pcie_gen = gen
            gpu.pcie_width = self.may(notes, "max PCIe width", nvml.nvmlDeviceGetMaxPcieLinkWidth, handle)
            spec = self.catalog.by_nvml_name(name, gpu.total_bytes)
            if spec is not None:
                gpu.fp16_tflops = spec.fp16_tflops
                gpu.fp16_acc16_tflops = spec.fp16_acc16_tflops
                gpu.int8_tops = spec.int8_tops
                gpu.board_power_w = spec.board_power_w
                gpu.sm_count = spec.sm_count
                if gpu.bandwidth_gb_s is None:
                    gpu.bandwidth_gb_s = spec.bandwidth_gb_s
                    notes.append(f"bandwidth from catalog entry {spec.key}")
                if gpu.architecture is None:
                    gpu.architecture = spec.architecture
            self.read_mig(gpu)
        except nvml.NVMLError as exc:
            raise query_error(nvml, exc, f"reading GPU {index} ({gpu.bus_id})") from exc
        return gpu

    def read_memory(self, handle: Any, notes: list[str]) -> tuple[int | None, int | None, int | None]:
        """(total, free, reserved) from ``nvmlMemory_v2``, else v1; all ``None`` when unsupported."""
        nvml = self.nvml
        version = getattr(nvml, "nvmlMemory_v2", None)
        if version is not None:
            try:
                mem = nvml.nvmlDeviceGetMemoryInfo(handle, version=version)
                return int(mem.total), int(mem.free), int(mem.reserved)
            except nvml.NVMLError as exc:
                if _is(nvml, exc, "NVMLError_GpuIsLost"):
                    raise
        try:
            mem = nvml.nvmlDeviceGetMemoryInfo(handle)
        except nvml.NVMLError as exc:
            if _is(nvml, exc, "NVMLError_NotSupported"):
                return None, None, None
            raise
        return int(mem.total), int(mem.free), None

    def read_mig(self, gpu: _Gpu) -> None:
        nvml = self.nvml
        if not hasattr(nvml, "nvmlDeviceGetMigMode"):
            return
        mode = self.may([], "MIG mode", nvml.nvmlDeviceGetMigMode, gpu.handle)
        if mode is None:
            return
        current, pending = int(mode[0]), int(mode[1])
        if current != pending:
            gpu.notes.append("a MIG mode change is pending; reset the GPU to apply it")
        if current != 1:
            return
        gpu.mig_enabled = True
        slots = self.may(gpu.notes, "MIG device count", nvml.nvmlDeviceGetMaxMigDeviceCount, gpu.handle) or 0
        for slot in range(slots):
            try:
                handle = nvml.nvmlDeviceGetMigDeviceHandleByIndex(gpu.handle, slot)
            except nvml.NVMLError as exc:
                if _is(nvml, exc, "NVMLError_NotFound") or _is(nvml, exc, "NVMLError_InvalidArgument"):
                    continue
                raise
            notes: list[str] = []
            uuid = _text(self.must(f"reading the UUID of MIG device {slot} of GPU {gpu.nvml_index}", nvml.nvmlDeviceGetUUID, handle))
            name = self.may(notes, "MIG device name", nvml.nvmlDeviceGetName, handle)
            total, free, reserved = self.read_memory(handle, notes)
            gi = self.may(notes, "GPU instance id", nvml.nvmlDeviceGetGpuInstanceId, handle)
            ci = self.may(notes, "compute instance id", nvml.nvmlDeviceGetComputeInstanceId, handle)
            gpu.mig.append(
                _Mig(handle, uuid, _text(name) if name is not None else f"{gpu.name} MIG", total, free, reserved, gi, ci, notes)
            )
        if not gpu.mig:
            self.fleet_notes.append(
                f"GPU {gpu.nvml_index} ({gpu.name}, {gpu.bus_id}) has MIG enabled but no MIG instances; CUDA cannot use it"
            )

    def read_nvlinks(self, gpu: _Gpu, by_bus: Mapping[str, _Gpu]) -> None:
        nvml = self.nvml
        if gpu.mig_enabled:
            return  # NVLink and P2P are unavailable under MIG
        switch_type = getattr(nvml, "NVML_NVLINK_DEVICE_TYPE_SWITCH", 2)
        gpu_type = getattr(nvml, "NVML_NVLINK_DEVICE_TYPE_GPU", 0)
        for link in range(nvml.NVML_NVLINK_MAX_LINKS):
            try:
                active = nvml.nvmlDeviceGetNvLinkState(gpu.handle, link)
            except nvml.NVMLError as exc:
                if _is(nvml, exc, "NVMLError_NotSupported") or _is(nvml, exc, "NVMLError_InvalidArgument"):
                    continue
                raise
            if not active:
                continue
            try:
                remote = normalize_bus_id(nvml.nvmlDeviceGetNvLinkRemotePciInfo(gpu.handle, link).busId)
            except nvml.NVMLError as exc:
                if _is(nvml, exc, "NVMLError_GpuIsLost"):
                    raise
                gpu.notes.append(f"NVLink {link} is active but its peer cannot be read: {exc}")
                continue
            try:
                kind = nvml.nvmlDeviceGetNvLinkRemoteDeviceType(gpu.handle, link)
            except nvml.NVMLError as exc:
                if _is(nvml, exc, "NVMLError_GpuIsLost"):
                    raise
                kind = gpu_type if remote in by_bus else switch_type
            if kind == switch_type:
                gpu.nvswitch_links += 1
            elif remote in by_bus:
                gpu.nvlink_peers.append(remote)

    # -- building the snapshot -------------------------------------------------------------

    def assemble(self, gpus: list[_Gpu]) -> Fleet:
        ordered = sorted(gpus, key=lambda g: bus_sort_key(g.bus_id))
        units: list[CudaUnit] = []
        owners: list[tuple[_Gpu, _Mig | None]] = []
        for position, gpu in enumerate(ordered):
            if gpu.mig_enabled:
                for mig in gpu.mig:
                    units.append(CudaUnit(mig.uuid, position, gpu.uuid, mig.gpu_instance_id, mig.compute_instance_id))
                    owners.append((gpu, mig))
            else:
                units.append(CudaUnit(gpu.uuid, position))
                owners.append((gpu, None))
        cvd = self.env.get("CUDA_VISIBLE_DEVICES")
        chosen, cvd_notes = visible_units(units, cvd)
        self.fleet_notes.extend(cvd_notes)
        if not chosen:
            if cvd is not None:
                raise NoGpuFound(
                    f"no NVIDIA GPU found (CUDA_VISIBLE_DEVICES={cvd!r} hides all {len(gpus)})",
                    remedy="unset or fix CUDA_VISIBLE_DEVICES, or " + NO_GPU_REMEDY,
                )
            raise NoGpuFound("no NVIDIA GPU found (no GPU usable by CUDA)", remedy=NO_GPU_REMEDY)
        if self.env.get("CUDA_DEVICE_ORDER") != "PCI_BUS_ID" and len({g.name for g in gpus}) > 1:
            self.fleet_notes.append(
                "mixed GPU models: CUDA's default FASTEST_FIRST order may differ from the PCI order shown; "
                "llamasplit launches with CUDA_DEVICE_ORDER=PCI_BUS_ID"
                + (" (CUDA_VISIBLE_DEVICES indices were read in PCI order)" if cvd and any(
                    t.strip().isdigit() for t in cvd.split(",")) else "")
            )
        devices = [self.device(cuda_index, *owners[u]) for cuda_index, u in enumerate(chosen)]
        pairs = [owners[u] for u in chosen]
        links = []
        for i in range(len(devices)):
            for j in range(i + 1, len(devices)):
                links.append(self.link(devices[i], pairs[i], devices[j], pairs[j]))
        return Fleet(
            devices=tuple(devices),
            host=self._host(),
            links=tuple(links),
            source="nvml",
            simulated=False,
            notes=tuple(self.fleet_notes),
        )

    def device(self, cuda_index: int, gpu: _Gpu, mig: _Mig | None) -> Device:
        base = Device(
            id=gpu.uuid,
            name=f"CUDA{cuda_index}",
            description=gpu.name,
            backend="CUDA",
            total_bytes=gpu.total_bytes,
            free_bytes=gpu.free_bytes,
            reserved_bytes=gpu.reserved_bytes,
            bandwidth_gb_s=gpu.bandwidth_gb_s,
            fp16_tflops=gpu.fp16_tflops,
            fp16_acc16_tflops=gpu.fp16_acc16_tflops,
            int8_tops=gpu.int8_tops,
            board_power_w=gpu.board_power_w,
            sm_count=gpu.sm_count,
            compute_capability=gpu.compute_capability,
            nvml_index=gpu.nvml_index,
            cuda_index=cuda_index,
            pci_bus_id=gpu.bus_id,
            pcie_gen=gpu.pcie_gen,
            pcie_width=gpu.pcie_width,
            notes=tuple(gpu.notes),
        )
        if mig is None:
            return base
        notes = list(mig.notes)
        bandwidth = None
        if gpu.bandwidth_gb_s is not None and mig.total_bytes and gpu.total_bytes:
            bandwidth = round(gpu.bandwidth_gb_s * mig.total_bytes / gpu.total_bytes, 1)
            notes.append("MIG: bandwidth scaled by the instance's share of memory")
        fp16 = None
        slices = _MIG_SLICES_RE.search(mig.name)

        def share(rate: float | None) -> float | None:
            return round(rate * int(slices.group(1)) / _MIG_COMPUTE_SLICES, 1) if rate is not None and slices else None

        if gpu.fp16_tflops is not None and slices:
            fp16 = share(gpu.fp16_tflops)
            notes.append(f"MIG: fp16_tflops is {slices.group(1)}/{_MIG_COMPUTE_SLICES} of the GPU's")
        notes.append("MIG: no NVLink or P2P")
        return replace(
            base,
            id=mig.uuid,
            description=mig.name,
            total_bytes=mig.total_bytes,
            free_bytes=mig.free_bytes,
            reserved_bytes=mig.reserved_bytes,
            bandwidth_gb_s=bandwidth,
            fp16_tflops=fp16,
            fp16_acc16_tflops=share(gpu.fp16_acc16_tflops),
            int8_tops=share(gpu.int8_tops),
            board_power_w=share(gpu.board_power_w),
            sm_count=gpu.sm_count * int(slices.group(1)) // _MIG_COMPUTE_SLICES if gpu.sm_count and slices else None,
            mig=True,
            notes=tuple(notes),
        )

    def link(self, a: Device, pa: tuple[_Gpu, _Mig | None], b: Device, pb: tuple[_Gpu, _Mig | None]) -> Link:
        nvml = self.nvml
        ga, gb = pa[0], pb[0]
        pcie = self.catalog.pcie_gb_s(
            min(ga.pcie_gen, gb.pcie_gen) if ga.pcie_gen and gb.pcie_gen else None,
            min(ga.pcie_width, gb.pcie_width) if ga.pcie_width and gb.pcie_width else None,
        )
        if ga is gb:  # two MIG instances of one GPU: no P2P, copies are staged through the host
            return Link(a.id, b.id, LinkKind.PHB, pcie, p2p=False)
        level = self.may([], "topology", nvml.nvmlDeviceGetTopologyCommonAncestor, ga.handle, gb.handle)
        pcie_kind = _ANCESTOR_KIND.get(level, LinkKind.UNKNOWN) if level is not None else LinkKind.UNKNOWN
        if pa[1] is not None or pb[1] is not None:
            return Link(a.id, b.id, pcie_kind, pcie, p2p=False)
        p2p_status = self.may([], "P2P status", nvml.nvmlDeviceGetP2PStatus, ga.handle, gb.handle, P2P_CAPS_INDEX_READ)
        p2p = None if p2p_status is None else p2p_status == P2P_STATUS_OK
        n_ab = ga.nvlink_peers.count(gb.bus_id)
        n_ba = gb.nvlink_peers.count(ga.bus_id)
        n_direct = min(n_ab, n_ba) if n_ab and n_ba else max(n_ab, n_ba)
        per_link = self.catalog.nvlink_gb_s_per_link(ga.architecture, ga.compute_capability)
        if n_direct:
            nvlink_status = self.may(
                [], "P2P NVLink status", nvml.nvmlDeviceGetP2PStatus, ga.handle, gb.handle, P2P_CAPS_INDEX_NVLINK
            )
            if nvlink_status is not None and nvlink_status != P2P_STATUS_OK:
                self.fleet_notes.append(
                    f"{a.name} and {b.name} share {n_direct} NVLinks but the driver reports NVLink P2P status {nvlink_status}"
                )
            bandwidth = n_direct * per_link if per_link is not None else None
            return Link(a.id, b.id, LinkKind.NVLINK, bandwidth, n_links=n_direct, p2p=p2p)
        if ga.nvswitch_links and gb.nvswitch_links:
            n = min(ga.nvswitch_links, gb.nvswitch_links)
            bandwidth = n * per_link if per_link is not None else None
            return Link(a.id, b.id, LinkKind.NVSWITCH, bandwidth, n_links=n, p2p=p2p)
        return Link(a.id, b.id, pcie_kind, pcie, p2p=p2p)


def local_host() -> HostInfo:
    """RAM and cores of this machine via psutil; memory bandwidth is unknown (``None``)."""
    try:
        import psutil
    except ImportError:
        return HostInfo()
    vm = psutil.virtual_memory()
    cores = psutil.cpu_count(logical=False) or psutil.cpu_count(logical=True)
    return HostInfo(
        name="localhost",
        ram_total_bytes=int(vm.total),
        ram_available_bytes=int(vm.available),
        cpu_cores=cores,
        ram_bandwidth_gb_s=None,
        cpu_name=cpu_model_name(),
        **_cpu_features(),
    )


def _cpu_features(cpuinfo: str = "/proc/cpuinfo") -> dict:
    """``cpu_flags`` / ``cpu_machine`` of this CPU as the pinned llama.cpp build sees it: the AMX
    flags only when the build compiled AMX (``llamacpp.binaries.want_amx``)."""
    from llamasplit.llamacpp.binaries import want_amx

    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as fh:
            text = fh.read()
    except OSError:
        return {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("flags", "features"):  # x86 / ARM
            flags = set(value.split())
            if not want_amx():
                flags = {f for f in flags if not f.startswith("amx")}
            return {"cpu_flags": tuple(sorted(flags)), "cpu_machine": "x86_64" if key == "flags" else "aarch64"}
    return {}


def cpu_model_name(cpuinfo: str = "/proc/cpuinfo") -> str | None:
    """The first ``model name`` of ``/proc/cpuinfo`` (sanitized), else ``platform.processor()``, else None."""
    import platform

    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as fh:
            for line in fh.read(1 << 16).splitlines():
                key, sep, value = line.partition(":")
                if sep and key.strip() == "model name" and value.strip():
                    return " ".join("".join(ch for ch in value if ch.isprintable()).split())[:128]
    except OSError:
        pass
    return platform.processor() or None
