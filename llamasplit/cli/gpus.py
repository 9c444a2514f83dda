"""``llamasplit gpus``: show the devices a plan would use, their links, or save them as an inventory."""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer

from llamasplit.cli.app import app, say
from llamasplit.devices.device import Fleet, Link, LinkKind
from llamasplit.devices.inventory import save_inventory
from llamasplit.devices.sources import resolve_fleet
from llamasplit.units import format_size

_LEGEND = (
    "X = self; NV# = # NVLinks; NVS# = NVSwitch, # links per GPU; PIX = one PCIe switch; "
    "PXB = several PCIe switches; PHB = PCIe host bridge; NODE = across host bridges in a NUMA node; "
    "SYS = across NUMA nodes; NET = network (RPC); ? = unknown. Numbers: GB/s per direction."
)


def _num(value: float | None, fmt: str) -> str:
    return "?" if value is None else format(value, fmt)


def _align(rows: list[list[str]]) -> str:
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def render_table(fleet: Fleet) -> str:
    """The device table, one device a row, plain aligned text."""
    rows = [["NAME", "DEVICE", "TOTAL", "FREE", "BW GB/s", "FP16 TFLOPS", "CC", "PCIE", "ID"]]
    for d in fleet.devices:
        cc = f"{d.compute_capability[0]}.{d.compute_capability[1]}" if d.compute_capability else "?"
        pcie = f"{d.pcie_gen}.0 x{d.pcie_width}" if d.pcie_gen and d.pcie_width else "?"
        rows.append([
            d.name,
            d.description + (" [MIG]" if d.mig else ""),
            format_size(d.total_bytes),
            format_size(d.free_bytes),
            _num(d.bandwidth_gb_s, ".0f"),
            _num(d.fp16_tflops, ".1f"),
            cc,
            pcie,
            d.id,
        ])
    h = fleet.host
    ram = f"{format_size(h.ram_total_bytes)} RAM ({format_size(h.ram_available_bytes)} available)"
    cpu = f"{h.cpu_name}, " if h.cpu_name else ""
    host = f"host {h.name}: {cpu}{ram}, {_num(h.cpu_cores, 'd')} cores, RAM bandwidth {_num(h.ram_bandwidth_gb_s, 'g')} GB/s"
    if not fleet.devices:
        return "no GPU: llama.cpp runs on the CPU\n" + host
    return _align(rows) + "\n\n" + host


def _cell(link: Link | None) -> str:
    if link is None:
        return "?"
    if link.kind is LinkKind.NVLINK:
        label = f"NV{link.n_links or '?'}"
    elif link.kind is LinkKind.NVSWITCH:
        label = f"NVS{link.n_links or '?'}"
    else:
        label = link.kind.value
    return label if link.bandwidth_gb_s is None else f"{label} {link.bandwidth_gb_s:g}"


def render_topology(fleet: Fleet) -> str:
    """A matrix like ``nvidia-smi topo -m``: how each pair is connected, with GB/s per direction."""
    names = [d.name for d in fleet.devices]
    rows = [[""] + names]
    for a in fleet.devices:
        row = [a.name]
        for b in fleet.devices:
            row.append("X" if a.id == b.id else _cell(fleet.link(a.id, b.id)))
        rows.append(row)
    return _align(rows) + "\n\n" + _LEGEND


@app.command()
def gpus(
    fleet: str | None = typer.Option(
        None, "--fleet", help="Simulate GPUs instead of reading them: 2x3090,3060-12g (catalog names; ram=SIZE, cores=N)."
    ),
    inventory: Path | None = typer.Option(None, "--inventory", help="Read a fleet saved earlier with --save."),
    rpc: list[str] | None = typer.Option(None, "--rpc", help="RPC workers host:port[,host:port...] (ggml-rpc-server)."),
    as_json: bool = typer.Option(False, "--json", help="Print the fleet as JSON."),
    topo: bool = typer.Option(False, "--topo", help="Print the link matrix (like nvidia-smi topo -m)."),
    save: Path | None = typer.Option(None, "--save", help="Also save the fleet as an inventory file."),
) -> None:
    """List the GPUs (and RPC workers) a plan would use, with memory, bandwidth and links."""
    snapshot = resolve_fleet(fleet_spec=fleet, inventory=inventory, rpc=rpc, env=dict(os.environ))
    if save is not None:
        path = save_inventory(snapshot, save)
        say(f"saved {len(snapshot.devices)} devices to {path}")
    if as_json:
        print(json.dumps(snapshot.to_dict(), indent=2))
        return
    print(render_table(snapshot))
    if topo:
        print()
        print(render_topology(snapshot))
    say(f"source: {snapshot.source}" + (" (simulated)" if snapshot.simulated else ""))
    for d in snapshot.devices:
        for note in d.notes:
            say(f"{d.name}: {note}")
    for note in snapshot.notes:
        say(f"note: {note}")
