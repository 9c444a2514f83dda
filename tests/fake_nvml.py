"""A fake NVML module built from a fleet description, for tests without GPUs.

It has the names of NVIDIA's ``pynvml`` (nvidia-ml-py) that llamasplit calls, its constants, and
raises pynvml's own exception classes, built the way pynvml builds them: ``pynvml.NVMLError(code)``
returns the ``NVMLError_*`` subclass for that code. ``P2P`` calls with a non-int index fail like
ctypes does with the ``NVML_P2P_CAPS_INDEX_READ = (0,)`` tuple.

Describe GPUs with ``FakeGpu`` (helpers ``rtx3090()``, ``h100_sxm()``, ... fill in real numbers),
then ``FakeNvml(gpus, ancestors=..., fail=...)``.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pynvml

MiB = 1024 * 1024

SWITCH = pynvml.NVML_NVLINK_DEVICE_TYPE_SWITCH
GPU = pynvml.NVML_NVLINK_DEVICE_TYPE_GPU


def nvml_error(code: int) -> pynvml.NVMLError:
    """The exception pynvml raises for an NVML return code (``_nvmlCheckReturn``)."""
    return pynvml.NVMLError(code)


@dataclass
class FakeMig:
    """One MIG instance."""

    uuid: str
    name: str
    total_bytes: int
    free_bytes: int
    reserved_bytes: int = 0
    gpu_instance_id: int = 1
    compute_instance_id: int = 0


@dataclass
class FakeGpu:
    """One physical GPU as NVML would describe it."""

    name: str
    uuid: str
    bus_id: str
    total_bytes: int
    free_bytes: int
    reserved_bytes: int
    mem_clock_mhz: int | None
    bus_width: int | None
    cc: tuple[int, int]
    arch: int
    pcie_gen: int
    pcie_width: int
    nvlink_slots: int = 0
    """Link indices that exist (NVML: InvalidArgument beyond); 0: NVLink NotSupported."""
    nvlinks: list[tuple[str, int]] = field(default_factory=list)
    """Active links, in link order: (remote PCI bus id, remote device type)."""
    mig_supported: bool = False
    mig_enabled: bool = False
    mig_pending: bool | None = None
    mig: list[FakeMig | None] = field(default_factory=list)
    """MIG slots; ``None`` is an empty slot."""
    memory_v2: bool = True
    unified_memory: bool = False
    processes: list[tuple[int, int | None]] = field(default_factory=list)
    """Compute processes on the GPU: (pid, used bytes; ``None`` = NVML_VALUE_NOT_AVAILABLE)."""


def _same_bus(x: str, y: str) -> bool:
    """``0000:21:00.0`` and ``00000000:21:00.0`` name the same device."""
    def parts(bus: str) -> list[int]:
        return [int(p, 16) for p in bus.replace(".", ":").split(":")]
    return parts(x) == parts(y)


@dataclass(frozen=True)
class FakeHandle:
    gpu: int
    mig: int | None = None


class FakeNvml:
    """An object with pynvml's function names, serving the ``gpus`` given.

    ``ancestors`` maps ``frozenset({bus_a, bus_b})`` to an ``NVML_TOPOLOGY_*`` level (default
    HOSTBRIDGE). ``p2p`` maps ``(frozenset({bus_a, bus_b}), index)`` to a status (default: OK for
    GPUs joined by NVLink or NVSwitch, NOT_SUPPORTED otherwise). ``fail`` maps a function name, or
    ``(function name, gpu index)``, to an NVML error code to raise. ``init_error``: the code
    ``nvmlInit`` fails with. ``official=False`` leaves out ``_nvmlGetFunctionPointer`` like the
    unofficial pynvml packages.
    """

    def __init__(
        self,
        gpus: list[FakeGpu],
        *,
        ancestors: dict[frozenset[str], int] | None = None,
        p2p: dict[tuple[frozenset[str], int], int] | None = None,
        fail: dict[Any, int] | None = None,
        init_error: int | None = None,
        official: bool = True,
    ) -> None:
        for name in dir(pynvml):
            if name.startswith(("NVML", "nvmlMemory_v")):
                setattr(self, name, getattr(pynvml, name))
        self.__name__ = "fake_nvml"
        self.gpus = gpus
        self.ancestors = ancestors or {}
        self.p2p = p2p or {}
        self.fail = fail or {}
        self.init_error = init_error
        self.initialised = False
        self.init_calls = 0
        self.shutdown_calls = 0
        self.p2p_indices: list[Any] = []
        if official:
            self._nvmlGetFunctionPointer = lambda name: name

    # -- plumbing --------------------------------------------------------------------------

    def _check(self, fn: str, handle: FakeHandle | None = None) -> None:
        if not self.initialised:
            raise nvml_error(pynvml.NVML_ERROR_UNINITIALIZED)
        code = self.fail.get((fn, handle.gpu)) if handle is not None else None
        code = code if code is not None else self.fail.get(fn)
        if code is not None:
            raise nvml_error(code)

    def _gpu(self, handle: FakeHandle) -> FakeGpu:
        return self.gpus[handle.gpu]

    # -- library ---------------------------------------------------------------------------

    def nvmlInit(self) -> None:
        self.init_calls += 1
        if self.init_error is not None:
            raise nvml_error(self.init_error)
        self.initialised = True

    def nvmlShutdown(self) -> None:
        self._check("nvmlShutdown")
        self.shutdown_calls += 1
        self.initialised = False

    def nvmlDeviceGetCount(self) -> int:
        self._check("nvmlDeviceGetCount")
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeHandle:
        self._check("nvmlDeviceGetHandleByIndex", FakeHandle(index))
        if not 0 <= index < len(self.gpus):
            raise nvml_error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return FakeHandle(index)

    # -- identity --------------------------------------------------------------------------

    def nvmlDeviceGetName(self, handle: FakeHandle) -> str:
        self._check("nvmlDeviceGetName", handle)
        if handle.mig is not None:
            return self._gpu(handle).mig[handle.mig].name  # type: ignore[union-attr]
        return self._gpu(handle).name

    def nvmlDeviceGetUUID(self, handle: FakeHandle) -> bytes:
        self._check("nvmlDeviceGetUUID", handle)
        if handle.mig is not None:
            return self._gpu(handle).mig[handle.mig].uuid.encode()  # type: ignore[union-attr]
        return self._gpu(handle).uuid.encode()  # nvml 13.x returns bytes here

    def nvmlDeviceGetPciInfo(self, handle: FakeHandle) -> SimpleNamespace:
        self._check("nvmlDeviceGetPciInfo", handle)
        return SimpleNamespace(busId=self._gpu(handle).bus_id)

    def nvmlDeviceGetCudaComputeCapability(self, handle: FakeHandle) -> tuple[int, int]:
        self._check("nvmlDeviceGetCudaComputeCapability", handle)
        return self._gpu(handle).cc

    def nvmlDeviceGetArchitecture(self, handle: FakeHandle) -> int:
        self._check("nvmlDeviceGetArchitecture", handle)
        return self._gpu(handle).arch

    # -- memory and clocks -----------------------------------------------------------------

    def nvmlDeviceGetMemoryInfo(self, handle: FakeHandle, version: int | None = None) -> SimpleNamespace:
        self._check("nvmlDeviceGetMemoryInfo", handle)
        gpu = self._gpu(handle)
        if gpu.unified_memory:
            raise nvml_error(pynvml.NVML_ERROR_NOT_SUPPORTED)
        if version and not gpu.memory_v2:
            raise nvml_error(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)
        if handle.mig is not None:
            mig = gpu.mig[handle.mig]
            assert mig is not None
            total, free, reserved = mig.total_bytes, mig.free_bytes, mig.reserved_bytes
        else:
            total, free, reserved = gpu.total_bytes, gpu.free_bytes, gpu.reserved_bytes
        if version:
            return SimpleNamespace(version=version, total=total, reserved=reserved, free=free,
                                   used=total - reserved - free)
        return SimpleNamespace(total=total, free=free, used=total - free)

    def nvmlDeviceGetComputeRunningProcesses(self, handle: FakeHandle) -> list[SimpleNamespace]:
        """pynvml's list of ``c_nvmlProcessInfo_t``: ``usedGpuMemory`` is ``None`` when not available."""
        self._check("nvmlDeviceGetComputeRunningProcesses", handle)
        return [SimpleNamespace(pid=pid, usedGpuMemory=used) for pid, used in self._gpu(handle).processes]

    def nvmlDeviceGetMaxClockInfo(self, handle: FakeHandle, clock_type: int) -> int:
        self._check("nvmlDeviceGetMaxClockInfo", handle)
        assert clock_type == pynvml.NVML_CLOCK_MEM
        if self._gpu(handle).mem_clock_mhz is None:
            raise nvml_error(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return self._gpu(handle).mem_clock_mhz  # type: ignore[return-value]

    def nvmlDeviceGetMemoryBusWidth(self, handle: FakeHandle) -> int:
        self._check("nvmlDeviceGetMemoryBusWidth", handle)
        if self._gpu(handle).bus_width is None:
            raise nvml_error(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return self._gpu(handle).bus_width  # type: ignore[return-value]

    # -- PCIe ------------------------------------------------------------------------------

    def nvmlDeviceGetMaxPcieLinkGeneration(self, handle: FakeHandle) -> int:
        self._check("nvmlDeviceGetMaxPcieLinkGeneration", handle)
        return self._gpu(handle).pcie_gen

    def nvmlDeviceGetGpuMaxPcieLinkGeneration(self, handle: FakeHandle) -> int:
        self._check("nvmlDeviceGetGpuMaxPcieLinkGeneration", handle)
        return self._gpu(handle).pcie_gen

    def nvmlDeviceGetMaxPcieLinkWidth(self, handle: FakeHandle) -> int:
        self._check("nvmlDeviceGetMaxPcieLinkWidth", handle)
        return self._gpu(handle).pcie_width

    def nvmlDeviceGetTopologyCommonAncestor(self, a: FakeHandle, b: FakeHandle) -> int:
        self._check("nvmlDeviceGetTopologyCommonAncestor", a)
        key = frozenset({self._gpu(a).bus_id, self._gpu(b).bus_id})
        return self.ancestors.get(key, pynvml.NVML_TOPOLOGY_HOSTBRIDGE)

    def nvmlDeviceGetP2PStatus(self, a: FakeHandle, b: FakeHandle, index: Any) -> int:
        self._check("nvmlDeviceGetP2PStatus", a)
        self.p2p_indices.append(index)
        if not isinstance(index, int) or isinstance(index, bool):
            # what ctypes says when handed the tuple NVML_P2P_CAPS_INDEX_READ = (0,)
            raise ctypes.ArgumentError("argument 3: TypeError: Don't know how to convert parameter 3")
        ga, gb = self._gpu(a), self._gpu(b)
        key = (frozenset({ga.bus_id, gb.bus_id}), index)
        if key in self.p2p:
            return self.p2p[key]
        linked = any(_same_bus(bus, gb.bus_id) for bus, _ in ga.nvlinks) or (
            any(t == SWITCH for _, t in ga.nvlinks) and any(t == SWITCH for _, t in gb.nvlinks)
        )
        return pynvml.NVML_P2P_STATUS_OK if linked else pynvml.NVML_P2P_STATUS_NOT_SUPPORTED

    # -- NVLink ----------------------------------------------------------------------------

    def _link(self, handle: FakeHandle, link: int) -> FakeGpu:
        gpu = self._gpu(handle)
        if gpu.nvlink_slots == 0:
            raise nvml_error(pynvml.NVML_ERROR_NOT_SUPPORTED)
        if not 0 <= link < gpu.nvlink_slots:
            raise nvml_error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return gpu

    def nvmlDeviceGetNvLinkState(self, handle: FakeHandle, link: int) -> int:
        self._check("nvmlDeviceGetNvLinkState", handle)
        gpu = self._link(handle, link)
        return pynvml.NVML_FEATURE_ENABLED if link < len(gpu.nvlinks) else pynvml.NVML_FEATURE_DISABLED

    def nvmlDeviceGetNvLinkRemotePciInfo(self, handle: FakeHandle, link: int) -> SimpleNamespace:
        self._check("nvmlDeviceGetNvLinkRemotePciInfo", handle)
        gpu = self._link(handle, link)
        if link >= len(gpu.nvlinks):
            raise nvml_error(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return SimpleNamespace(busId=gpu.nvlinks[link][0])

    def nvmlDeviceGetNvLinkRemoteDeviceType(self, handle: FakeHandle, link: int) -> int:
        self._check("nvmlDeviceGetNvLinkRemoteDeviceType", handle)
        gpu = self._link(handle, link)
        if link >= len(gpu.nvlinks):
            raise nvml_error(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return gpu.nvlinks[link][1]

    # -- MIG -------------------------------------------------------------------------------

    def nvmlDeviceGetMigMode(self, handle: FakeHandle) -> list[int]:
        self._check("nvmlDeviceGetMigMode", handle)
        gpu = self._gpu(handle)
        if not gpu.mig_supported:
            raise nvml_error(pynvml.NVML_ERROR_NOT_SUPPORTED)
        pending = gpu.mig_enabled if gpu.mig_pending is None else gpu.mig_pending
        return [int(gpu.mig_enabled), int(pending)]

    def nvmlDeviceGetMaxMigDeviceCount(self, handle: FakeHandle) -> int:
        self._check("nvmlDeviceGetMaxMigDeviceCount", handle)
        return len(self._gpu(handle).mig)

    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle: FakeHandle, index: int) -> FakeHandle:
        self._check("nvmlDeviceGetMigDeviceHandleByIndex", handle)
        slots = self._gpu(handle).mig
        if not 0 <= index < len(slots):
            raise nvml_error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        if slots[index] is None:
            raise nvml_error(pynvml.NVML_ERROR_NOT_FOUND)
        return FakeHandle(handle.gpu, index)

    def nvmlDeviceGetGpuInstanceId(self, handle: FakeHandle) -> int:
        self._check("nvmlDeviceGetGpuInstanceId", handle)
        return self._gpu(handle).mig[handle.mig].gpu_instance_id  # type: ignore[index,union-attr]

    def nvmlDeviceGetComputeInstanceId(self, handle: FakeHandle) -> int:
        self._check("nvmlDeviceGetComputeInstanceId", handle)
        return self._gpu(handle).mig[handle.mig].compute_instance_id  # type: ignore[index,union-attr]


# -- real-numbers builders ---------------------------------------------------------------------


def rtx3090(bus_id: str, uuid: str, **kw: Any) -> FakeGpu:
    """RTX 3090: 24576 MiB, 9751 MHz x 384 bit, GA102 (4 NVLink bridge slots)."""
    args = dict(
        name="NVIDIA GeForce RTX 3090", uuid=uuid, bus_id=bus_id,
        total_bytes=24576 * MiB, free_bytes=24237 * MiB, reserved_bytes=327 * MiB,
        mem_clock_mhz=9751, bus_width=384, cc=(8, 6), arch=pynvml.NVML_DEVICE_ARCH_AMPERE,
        pcie_gen=4, pcie_width=16, nvlink_slots=4,
    )
    args.update(kw)
    return FakeGpu(**args)  # type: ignore[arg-type]


def rtx3060(bus_id: str, uuid: str, **kw: Any) -> FakeGpu:
    """RTX 3060 12GB: 12288 MiB, 7501 MHz x 192 bit, no NVLink."""
    args = dict(
        name="NVIDIA GeForce RTX 3060", uuid=uuid, bus_id=bus_id,
        total_bytes=12288 * MiB, free_bytes=12036 * MiB, reserved_bytes=246 * MiB,
        mem_clock_mhz=7501, bus_width=192, cc=(8, 6), arch=pynvml.NVML_DEVICE_ARCH_AMPERE,
        pcie_gen=4, pcie_width=16,
    )
    args.update(kw)
    return FakeGpu(**args)  # type: ignore[arg-type]


def rtx4060ti16(bus_id: str, uuid: str, **kw: Any) -> FakeGpu:
    """RTX 4060 Ti 16GB: 16380 MiB, 9001 MHz x 128 bit, PCIe 4.0 x8."""
    args = dict(
        name="NVIDIA GeForce RTX 4060 Ti", uuid=uuid, bus_id=bus_id,
        total_bytes=16380 * MiB, free_bytes=16063 * MiB, reserved_bytes=311 * MiB,
        mem_clock_mhz=9001, bus_width=128, cc=(8, 9), arch=pynvml.NVML_DEVICE_ARCH_ADA,
        pcie_gen=4, pcie_width=8,
    )
    args.update(kw)
    return FakeGpu(**args)  # type: ignore[arg-type]


def h100_sxm(bus_id: str, uuid: str, switch_buses: list[str], **kw: Any) -> FakeGpu:
    """H100 SXM5 80GB: 81559 MiB, 2619 MHz x 5120 bit, 18 NVLinks to the NVSwitches given."""
    args = dict(
        name="NVIDIA H100 80GB HBM3", uuid=uuid, bus_id=bus_id,
        total_bytes=81559 * MiB, free_bytes=81008 * MiB, reserved_bytes=550 * MiB,
        mem_clock_mhz=2619, bus_width=5120, cc=(9, 0), arch=pynvml.NVML_DEVICE_ARCH_HOPPER,
        pcie_gen=5, pcie_width=16, nvlink_slots=18,
        nvlinks=[(switch_buses[i % len(switch_buses)], SWITCH) for i in range(18)],
    )
    args.update(kw)
    return FakeGpu(**args)  # type: ignore[arg-type]


def a100_sxm_80g(bus_id: str, uuid: str, **kw: Any) -> FakeGpu:
    """A100 SXM4 80GB: 81920 MiB, 1593 MHz x 5120 bit, MIG capable."""
    args = dict(
        name="NVIDIA A100-SXM4-80GB", uuid=uuid, bus_id=bus_id,
        total_bytes=81920 * MiB, free_bytes=81221 * MiB, reserved_bytes=698 * MiB,
        mem_clock_mhz=1593, bus_width=5120, cc=(8, 0), arch=pynvml.NVML_DEVICE_ARCH_AMPERE,
        pcie_gen=4, pcie_width=16, nvlink_slots=12, mig_supported=True,
    )
    args.update(kw)
    return FakeGpu(**args)  # type: ignore[arg-type]
