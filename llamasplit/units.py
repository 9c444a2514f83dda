"""Byte sizes: one parser and one formatter.

>>> parse_size("24GiB")
25769803776
>>> parse_size("1.5 GB")
1500000000
>>> parse_size("512M")
536870912
>>> parse_size("4096")
4096
>>> format_size(25769803776)
'24.00 GiB'
>>> format_size(1023)
'1023 B'
>>> format_size(None)
'?'
"""

from __future__ import annotations

import re

from llamasplit.errors import UsageError

MiB = 1024 * 1024
GiB = 1024 * MiB

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kib": 1024,
    "kb": 1000,
    "m": MiB,
    "mib": MiB,
    "mb": 1000**2,
    "g": GiB,
    "gib": GiB,
    "gb": 1000**3,
    "t": 1024**4,
    "tib": 1024**4,
    "tb": 1000**4,
}

_SIZE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str | int) -> int:
    """Parse ``"24GiB"``, ``"1.5 GB"``, ``"512M"`` or a plain byte count into bytes.

    Single letters (K, M, G, T) are binary, as in llama.cpp and nvidia-smi.
    """
    if isinstance(text, int):
        if text < 0:
            raise UsageError(f"size {text} is negative", remedy="give a size like 24GiB or 512MiB")
        return text
    match = _SIZE_RE.match(str(text))
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        raise UsageError(
            f"cannot read {text!r} as a size",
            remedy="write a number with an optional unit: 24GiB, 1.5GB, 512M, 4096",
        )
    return int(float(match.group(1)) * _UNITS[unit])


def format_size(n_bytes: int | None) -> str:
    """Human-readable binary size; ``None`` (unknown) prints as ``?``."""
    if n_bytes is None:
        return "?"
    sign = "-" if n_bytes < 0 else ""
    value = abs(n_bytes)
    if value < 1024:
        return f"{sign}{value} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            return f"{sign}{value:.2f} {unit}"
    raise AssertionError("unreachable")


def mib(n_bytes: int | None) -> float | None:
    """Bytes as MiB (float), keeping unknown as ``None``."""
    return None if n_bytes is None else n_bytes / MiB
