"""Imports every subcommand module so each registers itself on the app."""

from __future__ import annotations

import importlib

for _name in ("models", "inspect", "gpus", "plan", "run"):
    try:
        importlib.import_module(f"llamasplit.cli.{_name}")
    except ModuleNotFoundError as exc:  # a subcommand not written yet
        if exc.name != f"llamasplit.cli.{_name}":
            raise
