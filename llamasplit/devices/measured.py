"""Speeds measured on the user's own devices (``llamasplit bench``), as stored in inventories."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class MeasuredSpeed:
    """What ``llamasplit bench`` measured on one device (or the host CPU) with llama-bench.

    The speed model (``llamasplit.speed``) uses these instead of datasheet figures: a token costs
    ``bytes read / decode_gb_s + layers x layer_us + matrix rows x row_ns + token_us`` there, a
    prompt ubatch ``FLOPs / prefill_gflops + rows x tokens x prefill_row_ns`` plus the same fixed
    costs. Inventories written before ``row_ns`` existed read as 0 (no per-row cost).
    """

    decode_gb_s: float
    """Effective bytes read per second while decoding, GB/s (10^9 bytes/s)."""
    prefill_gflops: float
    """Effective matmul rate while processing a prompt, GFLOP/s."""
    layer_us: float = 0.0
    """Fixed cost per layer and token (kernel launches, small ops), microseconds."""
    token_us: float = 0.0
    """Fixed cost per token on this device (graph launch; over RPC the round trips), microseconds."""
    row_ns: float = 0.0
    """Fixed cost per matrix row a decoded token computes (one dot product), nanoseconds."""
    prefill_row_ns: float = 0.0
    """Fixed cost per matrix row and prompt token, nanoseconds."""
    prefill_read_gb_s: float | None = None
    """Each prompt ubatch reads its weights once at this rate, GB/s, on top of its FLOPs (a CPU
    worker's matmuls do not hide that read behind their compute at short prompts); ``None``: not
    measured (inventories written before it existed), no such cost."""
    threads: int | None = None
    """CPU threads llama-bench used (CPU and CPU-backed RPC workers)."""
    how: str = ""
    """What was run, and when."""
    types: dict[str, list[float]] | None = None
    """Per weight type (``Q4_K``, ``Q8_0``, ...): ``[decode GB/s, prefill GFLOP/s]`` when its kernels
    run at other speeds than the probes' Q4_0 (the CPU repacks some types for its SIMD units), and
    a third element, the type's own prefill cost per matrix row and prompt token in ns (instead of
    ``prefill_row_ns``), where a narrow probe of the type measured it."""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MeasuredSpeed:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
