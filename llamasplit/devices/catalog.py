"""The GPU catalog: specs of common NVIDIA GPUs, read from ``llamasplit/data/gpus.json``.

Simulated fleets (``--fleet 2x3090``) are built from it, and the NVML source fills in what NVML
cannot tell (tensor throughput) from it. The numbers are a data table, not code; the JSON's ``doc``
block says what each field means and ``source`` on every entry says where it comes from.

>>> cat = load_catalog()
>>> cat.get("3060").key
'3060-12g'
>>> cat.get("3090").vram_bytes
25769803776
>>> pcie_gb_s(4, 8)
15.76
"""

from __future__ import annotations

import difflib
import functools
import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from llamasplit.errors import UsageError
from llamasplit.units import MiB

_DEFAULT_PATH = "gpus.json"


@dataclass(frozen=True)
class GpuSpec:
    """One catalog entry: a GPU model as its datasheet describes it."""

    key: str
    """Catalog name, as written in a fleet spec (``3090``, ``a100-80g-sxm``)."""
    name: str
    """Marketing name, e.g. ``NVIDIA GeForce RTX 3090``."""
    nvml_names: tuple[str, ...]
    """Names NVML reports for this model (``nvmlDeviceGetName``)."""
    vram_bytes: int
    vram_basis: str
    """``nvidia-smi`` (the total NVML reports) or ``datasheet`` (nominal capacity, binary units)."""
    bandwidth_gb_s: float
    fp16_tflops: float | None
    """Dense FP16 tensor TFLOPS with FP32 accumulate; ``None`` for cards without tensor cores."""
    pcie_gen: int
    pcie_width: int
    nvlink_links: int
    nvlink_gb_s_per_link: float | None
    """Per link, per direction."""
    nvlink_topology: str | None
    """``bridge`` (pairs), ``switch`` (NVSwitch, all-to-all) or ``None``."""
    compute_capability: tuple[int, int]
    architecture: str
    aliases: tuple[str, ...]
    source: str
    sm_count: int | None = None
    """Streaming multiprocessors (the CUDA context grows with them); ``None``: not in the catalog."""
    fp16_acc16_tflops: float | None = None
    """Dense FP16 tensor TFLOPS with FP16 accumulate (cuBLAS ``CUBLAS_COMPUTE_16F``, what llama.cpp's
    F16 weights get); ``None``: unknown or no fast FP16."""
    int8_tops: float | None = None
    """Dense INT8 TOPS of the path llama.cpp's MMQ kernels take (int8 tensor cores, else dp4a); ``None``: unknown."""
    board_power_w: float | None = None
    """Maximum board power from the datasheet, W; ``None``: unknown."""

    @property
    def nvlink_gb_s(self) -> float | None:
        """NVLink bandwidth of one GPU over all its links, per direction; ``None`` without NVLink."""
        if not self.nvlink_links or self.nvlink_gb_s_per_link is None:
            return None
        return self.nvlink_links * self.nvlink_gb_s_per_link

    @property
    def pcie_gb_s(self) -> float | None:
        """The card's PCIe bandwidth per direction."""
        return pcie_gb_s(self.pcie_gen, self.pcie_width)


@dataclass(frozen=True)
class Catalog:
    """All catalog entries, their aliases and the per-architecture link tables."""

    specs: dict[str, GpuSpec]
    aliases: dict[str, str]
    nvlink_per_link: dict[str, float]
    pcie_per_lane: dict[int, float]
    architectures: dict[int, str]
    """NVML ``nvmlDeviceGetArchitecture`` codes to names."""

    def names(self) -> list[str]:
        """Catalog keys, sorted."""
        return sorted(self.specs)

    def find(self, name: str) -> GpuSpec | None:
        """The entry for a key or alias (case and spelling tolerant), or ``None``."""
        for candidate in _spellings(name):
            if candidate in self.specs:
                return self.specs[candidate]
            if candidate in self.aliases:
                return self.specs[self.aliases[candidate]]
        return None

    def get(self, name: str, *, where: str = "") -> GpuSpec:
        """The entry for a key or alias; ``UsageError`` naming close catalog names otherwise.

        ``where`` says where the name came from, for the message (`` in --fleet '...'``)."""
        spec = self.find(name)
        if spec is None:
            close = self.close_matches(name)
            listing = ", ".join(close) if close else ", ".join(self.names())
            raise UsageError(
                f"unknown GPU {name!r}{where}",
                remedy=f"{'close catalog names' if close else 'catalog names'}: {listing}",
            )
        return spec

    def close_matches(self, name: str, n: int = 5) -> list[str]:
        """Catalog keys whose key or alias looks like ``name``, best first."""
        wanted = _spellings(name)[0]
        pool = {**{k: k for k in self.specs}, **self.aliases}
        found: list[str] = []
        for hit in difflib.get_close_matches(wanted, list(pool), n=2 * n, cutoff=0.5):
            key = pool[hit]
            if key not in found:
                found.append(key)
        for key in self.names():  # a shared stem ("4060" in "4060ti-16g") also counts
            digits = re.findall(r"\d{3,}", wanted)
            if digits and any(d in key for d in digits) and key not in found:
                found.append(key)
        return found[:n]

    def by_nvml_name(self, nvml_name: str, total_bytes: int | None = None) -> GpuSpec | None:
        """The entry NVML's device name belongs to; several with the name: the closest in VRAM."""
        wanted = _plain_name(nvml_name)
        hits = [s for s in self.specs.values() if wanted in {_plain_name(n) for n in s.nvml_names}]
        if not hits:
            return None
        if total_bytes is None or len(hits) == 1:
            return hits[0]
        return min(hits, key=lambda s: abs(s.vram_bytes - total_bytes))

    def nvlink_gb_s_per_link(
        self, architecture: str | None, compute_capability: tuple[int, int] | None
    ) -> float | None:
        """NVLink bandwidth per link per direction for an architecture; ``None`` when not in the table."""
        if architecture is None:
            return None
        if compute_capability is not None:
            major, minor = compute_capability
            exact = self.nvlink_per_link.get(f"{architecture}/{major}.{minor}")
            if exact is not None:
                return exact
        return self.nvlink_per_link.get(architecture)

    def pcie_gb_s(self, gen: int | None, width: int | None) -> float | None:
        """PCIe bandwidth per direction of a link of ``width`` lanes at generation ``gen``."""
        if gen is None or width is None or gen not in self.pcie_per_lane:
            return None
        return round(self.pcie_per_lane[gen] * width, 3)


def _spellings(name: str) -> list[str]:
    """Ways a user may spell a catalog name, most literal first."""
    base = re.sub(r"[\s_]+", "-", name.strip().lower())
    out = [base]
    gb = re.sub(r"(\d)gb\b", r"\1g", base)
    out.append(gb)
    stripped = gb
    for prefix in ("nvidia-", "nvidia", "geforce-", "geforce", "tesla-", "quadro-"):
        if stripped.startswith(prefix):
            stripped = stripped[len(prefix):]
    out.append(stripped)
    if stripped.startswith("rtx") and not stripped.startswith("rtx6000"):
        out.append(stripped[3:].lstrip("-"))
    out.append(stripped.replace("-", ""))
    return list(dict.fromkeys(out))


def _plain_name(name: str) -> str:
    text = " ".join(name.split()).lower()
    return text[len("nvidia "):] if text.startswith("nvidia ") else text


def _spec(key: str, raw: dict[str, Any]) -> GpuSpec:
    per_link = raw.get("nvlink_gb_s_per_link")
    fp16 = raw.get("fp16_tflops")
    return GpuSpec(
        key=key,
        name=str(raw["name"]),
        nvml_names=tuple(raw.get("nvml_names", ())),
        vram_bytes=int(raw["vram_mib"]) * MiB,
        vram_basis=str(raw["vram_basis"]),
        bandwidth_gb_s=float(raw["bandwidth_gb_s"]),
        fp16_tflops=None if fp16 is None else float(fp16),
        pcie_gen=int(raw["pcie_gen"]),
        pcie_width=int(raw["pcie_width"]),
        nvlink_links=int(raw.get("nvlink_links") or 0),
        nvlink_gb_s_per_link=None if per_link is None else float(per_link),
        nvlink_topology=raw.get("nvlink_topology"),
        compute_capability=(int(raw["compute_capability"][0]), int(raw["compute_capability"][1])),
        architecture=str(raw["architecture"]),
        aliases=tuple(raw.get("aliases", ())),
        sm_count=None if raw.get("sm_count") is None else int(raw["sm_count"]),
        fp16_acc16_tflops=None if raw.get("fp16_acc16_tflops") is None else float(raw["fp16_acc16_tflops"]),
        int8_tops=None if raw.get("int8_tops") is None else float(raw["int8_tops"]),
        board_power_w=None if raw.get("board_power_w") is None else float(raw["board_power_w"]),
        source=str(raw["source"]),
    )


def parse_catalog(data: dict[str, Any]) -> Catalog:
    """Build a ``Catalog`` from the JSON document."""
    specs = {key: _spec(key, raw) for key, raw in data["gpus"].items()}
    aliases: dict[str, str] = {}
    for spec in specs.values():
        for alias in spec.aliases:
            aliases[alias] = spec.key
    return Catalog(
        specs=specs,
        aliases=aliases,
        nvlink_per_link={k: float(v) for k, v in data["nvlink_gb_s_per_link"].items() if k != "doc"},
        pcie_per_lane={int(k): float(v) for k, v in data["pcie_gb_s_per_lane"].items() if k != "doc"},
        architectures={int(k): v for k, v in data["nvml_architectures"].items()},
    )


@functools.lru_cache(maxsize=None)
def _packaged() -> Catalog:
    text = resources.files("llamasplit").joinpath("data", _DEFAULT_PATH).read_text(encoding="utf-8")
    return parse_catalog(json.loads(text))


def load_catalog(path: str | Path | None = None) -> Catalog:
    """The packaged catalog, or one read from ``path``."""
    if path is None:
        return _packaged()
    return parse_catalog(json.loads(Path(path).read_text(encoding="utf-8")))


def pcie_gb_s(gen: int | None, width: int | None) -> float | None:
    """PCIe bandwidth per direction, GB/s, from the packaged per-lane table.

    >>> pcie_gb_s(3, 16), pcie_gb_s(5, 16), pcie_gb_s(None, 16)
    (15.76, 63.04, None)
    """
    return _packaged().pcie_gb_s(gen, width)
