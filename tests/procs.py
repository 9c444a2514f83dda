"""Process helpers for real-stack tests: RPC workers and one-shot llama.cpp runs that always stop.

Tests use these instead of starting processes themselves, so no test leaves a child behind.
"""

from __future__ import annotations

from llamasplit.runner.processes import free_port, rpc_workers, run_to_end, spawn, start_rpc_worker

__all__ = ["free_port", "rpc_workers", "run_to_end", "spawn", "start_rpc_worker", "endpoints"]


def endpoints(workers) -> list[str]:
    """``host:port`` of each worker, in order."""
    return [w.endpoint for w in workers]
