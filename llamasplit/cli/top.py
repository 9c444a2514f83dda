"""``llamasplit top``: per-GPU used and free memory every second, next to a plan's prediction."""

from __future__ import annotations

import typer

from llamasplit.cli.app import app


@app.command("top")
def top_cmd(
    plan_file: str = typer.Option(None, "--plan", help="Show this plan's prediction per device (llamasplit plan ... --json > plan.json)."),
    pid: list[int] = typer.Option(None, "--pid", help="The llama-server process to watch (repeatable); default: every compute process."),
    interval: float = typer.Option(1.0, "--interval", help="Seconds between samples."),
    count: int = typer.Option(0, "--count", "-n", help="Stop after this many samples (0: until Ctrl-C)."),
) -> None:
    """Watch GPU memory through NVML (per process where NVML reports it) while llama.cpp serves.

    On a terminal the table is redrawn in place; otherwise one plain block per sample is printed.
    """
    from pathlib import Path

    from llamasplit.errors import UsageError
    from llamasplit.planner.plan import Plan
    from llamasplit.runner.watch import watch

    if interval < 0.05:
        raise UsageError(f"--interval {interval:g} is too short", remedy="use 0.05 seconds or more")
    if count < 0:
        raise UsageError(f"--count {count} is negative", remedy="0 watches until Ctrl-C")
    the_plan = None
    if plan_file:
        try:
            the_plan = Plan.from_json(Path(plan_file).read_text())
        except OSError as exc:
            raise UsageError(f"cannot read the plan {plan_file}: {exc.strerror or exc}") from exc
    from llamasplit.devices.nvml import NoGpuFound

    try:
        watch(pids=pid or (), plan=the_plan, interval_s=interval, count=count or None)
    except NoGpuFound as err:
        raise NoGpuFound(err.message, remedy="top watches NVIDIA GPUs through NVML; run it where llama-server uses them") from err
    except KeyboardInterrupt:
        raise SystemExit(130) from None
