"""Where llamasplit keeps what it fetches and builds: outside the repo, shared across clones."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path


def cache_dir(env: Mapping[str, str] | None = None) -> Path:
    """``$LLAMASPLIT_CACHE``, else ``$XDG_CACHE_HOME/llamasplit``, else ``~/.cache/llamasplit``."""
    env = os.environ if env is None else env
    if env.get("LLAMASPLIT_CACHE"):
        return Path(env["LLAMASPLIT_CACHE"]).expanduser()
    base = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "llamasplit"
