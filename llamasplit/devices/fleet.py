"""Simulated fleets: plan for hardware you do not have, from a spec like ``2x3090,3060-12g``.

A spec is a comma-separated list of ``[N x]GPU`` tokens (catalog names or aliases) and optional
host settings ``ram=SIZE``, ``cores=N``, ``ram-bw=GB/s``. Devices are numbered ``CUDA0..n`` in
the order written.

Memory. ``total_bytes`` is the catalog VRAM (what NVML reports as total, see ``gpus.json``);
``free_bytes`` is that minus ``IDLE_USED_BYTES`` = 512 MiB, what an idle headless card with
persistence mode on shows as taken (the driver's reservation plus its own context: nvidia-smi
reports 250-600 MiB on such cards). A card that also drives a display loses more; measure it.

Topology. Identical cards whose catalog entry has ``nvlink_topology = "bridge"`` (3090, A6000,
A100/H100 PCIe) are bridged in pairs in spec order (CUDA0+CUDA1, CUDA2+CUDA3, ...). SXM boards
(``"switch"``: A100/H100/H200 SXM) of the same model sit behind NVSwitch, all-to-all, in groups of
8 as on an HGX board. Every other pair talks over PCIe through the host bridge (``PHB``) at the
lower generation and width of the two cards.

Host. 64 GiB RAM of which 15/16 is available (the rest kept by the OS), 16 cores and 50 GB/s
memory bandwidth (dual-channel DDR5 territory), unless the spec says otherwise.

>>> fleet = fleet_from_spec("2x3090,3060")
>>> [d.name for d in fleet.devices]
['CUDA0', 'CUDA1', 'CUDA2']
>>> fleet.link("sim:0:3090", "sim:1:3090").n_links
4
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from llamasplit.devices.catalog import Catalog, GpuSpec, load_catalog
from llamasplit.devices.device import Device, Fleet, HostInfo, Link, LinkKind
from llamasplit.errors import UsageError
from llamasplit.units import GiB, MiB, parse_size

IDLE_USED_BYTES = 512 * MiB
"""VRAM an idle headless card shows as taken (driver reservation and context)."""

NVSWITCH_GROUP = 8
"""GPUs per NVSwitch domain (one HGX baseboard)."""

MAX_DEVICES = 64

DEFAULT_RAM_BYTES = 64 * GiB
DEFAULT_CPU_CORES = 16
DEFAULT_RAM_BANDWIDTH_GB_S = 50.0

_COUNT_RE = re.compile(r"^(\d+)\s*[x×*]\s*(\S.*)$", re.IGNORECASE)


@dataclass(frozen=True)
class FleetSpec:
    """A parsed fleet spec: the GPUs in order and the simulated host."""

    gpus: tuple[GpuSpec, ...]
    host: HostInfo
    text: str


def parse_fleet_spec(spec: str, *, catalog: Catalog | None = None) -> FleetSpec:
    """Parse ``2x3090,3060-12g,ram=128GiB`` into catalog entries and a host.

    A bad token raises ``UsageError`` naming it (and close catalog names for an unknown GPU).
    """
    catalog = catalog or load_catalog()
    text = spec.strip()
    if not text:
        raise UsageError("empty --fleet spec", remedy="write GPUs like 2x3090,3060-12g")
    gpus: list[GpuSpec] = []
    ram_bytes = DEFAULT_RAM_BYTES
    cores = DEFAULT_CPU_CORES
    ram_bw = DEFAULT_RAM_BANDWIDTH_GB_S
    for raw in text.split(","):
        token = raw.strip()
        if not token:
            raise UsageError(f"empty entry in --fleet {spec!r}", remedy="separate GPUs with single commas")
        if "=" in token:
            key, _, value = (part.strip() for part in token.partition("="))
            key = key.lower()
            if key == "ram":
                ram_bytes = parse_size(value)
                if ram_bytes <= 0:
                    raise UsageError(f"ram={value} in --fleet must be positive", remedy="e.g. ram=128GiB")
            elif key == "cores":
                if not value.isdigit() or int(value) == 0:
                    raise UsageError(f"cores={value} in --fleet is not a positive integer", remedy="e.g. cores=32")
                cores = int(value)
            elif key in ("ram-bw", "ram_bw"):
                try:
                    ram_bw = float(value)
                except ValueError:
                    ram_bw = -1.0
                if not ram_bw > 0:
                    raise UsageError(f"ram-bw={value} in --fleet is not a positive GB/s figure", remedy="e.g. ram-bw=80")
            else:
                raise UsageError(
                    f"unknown setting {token!r} in --fleet {spec!r}",
                    remedy="host settings are ram=SIZE, cores=N, ram-bw=GB/s",
                )
            continue
        count = 1
        name = token
        match = _COUNT_RE.match(token)
        if match:
            count = int(match.group(1))
            name = match.group(2).strip()
            if count == 0:
                raise UsageError(f"{token!r} in --fleet asks for zero GPUs", remedy="write 1x or leave the count out")
        if len(gpus) + count > MAX_DEVICES:  # checked before the list is built: 300000000x3090 took 14 s
            raise UsageError(f"--fleet {spec!r} has more than {MAX_DEVICES} GPUs", remedy="split the fleet")
        gpu = catalog.get(name, where=f" in --fleet {spec!r}")
        gpus.extend([gpu] * count)
    if not gpus:
        raise UsageError(f"--fleet {spec!r} names no GPU", remedy="write GPUs like 2x3090,3060-12g")
    host = HostInfo(
        name="simulated",
        ram_total_bytes=ram_bytes,
        ram_available_bytes=ram_bytes * 15 // 16,
        cpu_cores=cores,
        ram_bandwidth_gb_s=ram_bw,
    )
    return FleetSpec(gpus=tuple(gpus), host=host, text=text)


def simulated_device(index: int, gpu: GpuSpec) -> Device:
    """``CUDA{index}`` as a fresh card of catalog model ``gpu`` would show up."""
    return Device(
        id=f"sim:{index}:{gpu.key}",
        name=f"CUDA{index}",
        description=gpu.name,
        backend="CUDA",
        total_bytes=gpu.vram_bytes,
        free_bytes=gpu.vram_bytes - IDLE_USED_BYTES,
        bandwidth_gb_s=gpu.bandwidth_gb_s,
        fp16_tflops=gpu.fp16_tflops,
        fp16_acc16_tflops=gpu.fp16_acc16_tflops,
        int8_tops=gpu.int8_tops,
        board_power_w=gpu.board_power_w,
        sm_count=gpu.sm_count,
        compute_capability=gpu.compute_capability,
        nvml_index=index,
        cuda_index=index,
        pcie_gen=gpu.pcie_gen,
        pcie_width=gpu.pcie_width,
        notes=(f"simulated {gpu.key}: {gpu.source}",),
    )


def simulated_links(gpus: tuple[GpuSpec, ...], ids: list[str], catalog: Catalog) -> tuple[Link, ...]:
    """Links between every pair of simulated devices, by the rules in the module docstring."""
    nvlink: dict[tuple[int, int], Link] = {}
    by_model: dict[str, list[int]] = {}
    for i, gpu in enumerate(gpus):
        by_model.setdefault(gpu.key, []).append(i)
    for key, members in by_model.items():
        gpu = catalog.specs[key]
        bandwidth = gpu.nvlink_gb_s
        if bandwidth is None:
            continue
        if gpu.nvlink_topology == "bridge":
            for a, b in zip(members[0::2], members[1::2]):
                nvlink[(a, b)] = Link(
                    ids[a], ids[b], LinkKind.NVLINK, bandwidth, n_links=gpu.nvlink_links, p2p=True
                )
        elif gpu.nvlink_topology == "switch":
            for start in range(0, len(members), NVSWITCH_GROUP):
                group = members[start:start + NVSWITCH_GROUP]
                for x, a in enumerate(group):
                    for b in group[x + 1:]:
                        nvlink[(a, b)] = Link(
                            ids[a], ids[b], LinkKind.NVSWITCH, bandwidth, n_links=gpu.nvlink_links, p2p=True
                        )
    links: list[Link] = []
    for a in range(len(gpus)):
        for b in range(a + 1, len(gpus)):
            if (a, b) in nvlink:
                links.append(nvlink[(a, b)])
                continue
            gen = min(gpus[a].pcie_gen, gpus[b].pcie_gen)
            width = min(gpus[a].pcie_width, gpus[b].pcie_width)
            links.append(Link(ids[a], ids[b], LinkKind.PHB, catalog.pcie_gb_s(gen, width)))
    return tuple(links)


def fleet_from_spec(spec: str, *, catalog: Catalog | None = None) -> Fleet:
    """A simulated ``Fleet`` for a spec such as ``2x3090,3060-12g`` or ``4xa100-80g-sxm``."""
    catalog = catalog or load_catalog()
    parsed = parse_fleet_spec(spec, catalog=catalog)
    devices = tuple(simulated_device(i, gpu) for i, gpu in enumerate(parsed.gpus))
    links = simulated_links(parsed.gpus, [d.id for d in devices], catalog)
    return Fleet(
        devices=devices,
        host=parsed.host,
        links=links,
        source=f"fleet:{parsed.text}",
        simulated=True,
    )
