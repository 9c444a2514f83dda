"""llama.cpp's own dry-run figures: ``llama-fit-params -fitp on`` per device, in MiB.

It loads the model with ``no_alloc`` and prints, per device and for the host,
``NAME model context compute`` as whole MiB (floored). That is the oracle the estimator is
measured against.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from llamasplit.errors import LaunchError
from llamasplit.llamacpp.binaries import find_binary
from llamasplit.runner.processes import run_to_end


@dataclass(frozen=True)
class OracleRow:
    name: str
    model_mib: int
    context_mib: int
    compute_mib: int


def parse_fit_print(text: str) -> list[OracleRow]:
    """Parse the ``-fitp on`` table.

    >>> parse_fit_print("RPC0 23 33 32 \\nHost 28 0 21 \\n")
    [OracleRow(name='RPC0', model_mib=23, context_mib=33, compute_mib=32), OracleRow(name='Host', model_mib=28, context_mib=0, compute_mib=21)]
    """
    rows = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 4 and all(p.isdigit() for p in parts[1:]):
            rows.append(OracleRow(parts[0], int(parts[1]), int(parts[2]), int(parts[3])))
    return rows


def fit_print(model: Path | str, args: Sequence[str], *, timeout_s: float = 120) -> list[OracleRow]:
    """Run ``llama-fit-params -fitp on`` for a model and llama.cpp flags."""
    argv = [str(find_binary("llama-fit-params")), "-m", str(model), "-fitp", "on", *args]
    result = run_to_end(argv, timeout_s=timeout_s)
    rows = parse_fit_print(result.stdout)
    if result.returncode != 0 or not rows:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise LaunchError(f"llama-fit-params failed (exit {result.returncode}): {last}")
    return rows
