"""Subcommand modules register themselves on the app when imported.

``load(argv)`` imports only the module of the subcommand being run (start-up time matters for a
tool people call in scripts), or all of them for ``--help`` and unknown names.
"""

from __future__ import annotations

import importlib

MODULES = {
    "inspect": "inspect",
    "gpus": "gpus",
    "plan": "plan",
    "demo": "plan",
    "fetch-models": "models",
    "build-llama-cpp": "models",
    "run": "run",
    "worker": "run",
    "comm": "tensor",
    "recommend": "tensor",
    "bench": "bench",
    "top": "top",
}


def _import(name: str) -> None:
    try:
        importlib.import_module(f"llamasplit.cli.{name}")
    except ModuleNotFoundError as exc:  # a subcommand module not written yet
        if exc.name != f"llamasplit.cli.{name}":
            raise


def load(argv: list[str] | None) -> None:
    words = [a for a in (argv or []) if not a.startswith("-")]
    if words and words[0] in MODULES and "--help" not in (argv or []):
        _import(MODULES[words[0]])
        return
    for name in sorted(set(MODULES.values())):
        _import(name)
