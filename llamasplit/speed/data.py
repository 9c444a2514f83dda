"""The speed model's coefficients: ``llamasplit/data/speed.json`` (each with where it came from)."""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any


@functools.lru_cache(maxsize=1)
def coefficients() -> dict[str, Any]:
    """The packaged ``speed.json`` (read once; it never changes while we run)."""
    return json.loads(resources.files("llamasplit").joinpath("data", "speed.json").read_text(encoding="utf-8"))
