"""llamasplit: plan and run llama.cpp across several GPUs and hosts."""

from __future__ import annotations

__version__ = "0.1.0"
