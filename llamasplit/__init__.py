"""llamasplit: plan and run llama.cpp across several GPUs and hosts.

``plan``, ``load`` and ``serve`` (see ``llamasplit.api``) are imported on first use, so that
``import llamasplit`` and the CLI stay quick.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "plan": "llamasplit.api",
    "load": "llamasplit.api",
    "serve": "llamasplit.api",
    "plan_options": "llamasplit.api",
    "Plan": "llamasplit.planner.plan",
    "PlanOptions": "llamasplit.planner.plan",
    "Server": "llamasplit.runner.launch",
    "Verification": "llamasplit.runner.verify",
    "LlamasplitError": "llamasplit.errors",
    "ModelReadError": "llamasplit.errors",
    "DeviceQueryError": "llamasplit.errors",
    "NoFeasiblePlan": "llamasplit.errors",
    "LaunchError": "llamasplit.errors",
    "UsageError": "llamasplit.errors",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'llamasplit' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
