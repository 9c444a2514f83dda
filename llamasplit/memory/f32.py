"""IEEE float32 arithmetic without numpy, for the places where llama.cpp computes in ``float``.

Each operation on float32 values is done in double and rounded once to float32; for +, -, * and /
that is exactly float32's correctly rounded result (a double has more than 2 x 24 + 2 bits).
Importing numpy costs more than the rest of ``plan``'s start-up together, so it is not used here.

>>> f32(0.1)
0.10000000149011612
>>> prefix_fractions([1, 2])
[0.3333333432674408, 1.0]
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

_F = struct.Struct("f")


def f32(x: float) -> float:
    """``x`` rounded to the nearest float32 (as a Python float holding that exact value)."""
    return _F.unpack(_F.pack(x))[0]


def prefix_sums(values: Sequence[float]) -> list[float]:
    """float32 running sums, accumulated left to right as a C++ loop (or ``np.cumsum``) does."""
    out: list[float] = []
    acc = 0.0
    for v in values:
        acc = f32(acc + f32(v))
        out.append(acc)
    return out


def prefix_fractions(values: Sequence[float]) -> list[float]:
    """``prefix_sums(values)[i] / total`` in float32: llama.cpp's normalised split points."""
    sums = prefix_sums(values)
    if not sums or sums[-1] == 0:
        raise ValueError("split weights sum to zero")
    return [f32(s / sums[-1]) for s in sums]
