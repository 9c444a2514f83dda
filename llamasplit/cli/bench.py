"""``llamasplit bench``: measure decode and prefill speed of this machine's CPU and of each RPC
worker with llama-bench, and the cost of a stage boundary between workers; save them in an
inventory so that ``plan --inventory`` predicts speed from measurements."""

from __future__ import annotations

import json

import typer

from llamasplit.cli import options as O
from llamasplit.cli.app import app, say
from llamasplit.devices.device import Fleet
from llamasplit.errors import DeviceQueryError


def bench_table(fleet: Fleet) -> str:
    """One row per measured device: effective decode bandwidth, prefill rate, the rate a prompt
    ubatch reads its weights at (``-``: none measured), fixed costs."""
    rows = [("device", "decode GB/s", "prefill GFLOP/s", "prompt read GB/s", "layer us", "token us", "threads")]
    for name, m in [("CPU (host)", fleet.host.measured), *((d.name, d.measured) for d in fleet.devices)]:
        if m is None:
            continue
        read = f"{m.prefill_read_gb_s:.1f}" if m.prefill_read_gb_s else "-"  # "-": hidden behind the FLOPs
        rows.append((name, f"{m.decode_gb_s:.2f}", f"{m.prefill_gflops:.1f}", read, f"{m.layer_us:.1f}",
                     f"{m.token_us:.0f}", str(m.threads) if m.threads else "-"))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) if c == 0 else cell.rjust(w) for c, (cell, w) in enumerate(zip(r, widths))) for r in rows]
    hops = sorted({link.latency_us for link in fleet.links if link.latency_us is not None})
    if hops:
        lines.append(f"stage boundary between RPC workers: {hops[-1]:.0f} us per token")
    return "\n".join(lines)


@app.command("bench")
def bench_cmd(
    rpc: O.Rpc = None,
    save: str = typer.Option(None, "--save", help="Write the fleet with its measured speeds as an inventory (for plan --inventory)."),
    no_host: bool = typer.Option(False, "--no-host", help="Do not measure the host CPU."),
    as_json: bool = typer.Option(False, "--json", help="Print the measured fleet as JSON (stdout)."),
    passes: int = typer.Option(2, "--passes", min=1, max=10,
                               help="Passes over every device's probes; each probe's fastest run counts (more: steadier on a busy machine, longer)."),
) -> None:
    """Measure the host CPU, each local GPU and each RPC worker with llama-bench (about a minute per device)."""
    from llamasplit.devices.inventory import inventory_dict, save_inventory
    from llamasplit.devices.sources import resolve_fleet
    from llamasplit.llamacpp.binaries import find_binary
    from llamasplit.speed.measure import host_fleet, measure_fleet

    binary = find_binary("llama-bench")
    try:
        fleet = resolve_fleet(rpc=rpc)
    except DeviceQueryError:
        if rpc:
            raise
        fleet = host_fleet()
    unmeasurable = [d for d in fleet.devices if d.backend.upper() != "RPC" and not (d.backend.upper() == "CUDA" and d.cuda_index is not None)]
    if unmeasurable:
        say(f"llamasplit: {len(unmeasurable)} device(s) with no llama.cpp device name are not measured "
            "(their speed stays calibrated/datasheet)")
    measured = measure_fleet(fleet, binary=binary, progress=lambda m: say(f"llamasplit: bench: {m}"), host=not no_host,
                             passes=passes)
    if save:
        path = save_inventory(measured, save)
        say(f"llamasplit: saved {path}; plan with: llamasplit plan MODEL --inventory {path}")
    print(json.dumps(inventory_dict(measured), indent=2) if as_json else bench_table(measured))
