"""Published llama-bench results (``llamasplit/data/llama_bench.csv``) and the fit of the speed
model's per-family coefficients to them.

Each row is one llama-bench figure (``tg128`` or ``pp512``) of one model on one to several GPUs,
with its source; a row whose ``excluded`` column gives a reason (a build whose kernels the pinned
llama.cpp no longer runs) stays in the file but is neither fitted nor checked. ``predict_row``
runs the planner's own path on it: the model's shape typed by llama.cpp's quantization recipe
(``ModelProfile.requantized``), ``estimate()`` for the devices (every layer offloaded, split by
equal free memory as llama.cpp does), then the speed model (``layer_split_speed``), with the
card's prefill rates (``int8_tops``, ``fp16_acc16_tflops``), board power and SM count read from
the catalog entry ``catalog_key`` names, or for a card the catalog lacks from the row's own
columns of those names (with ``figures_source``); a prefill row without them is not predicted.
``fit_families`` finds, per GPU architecture family, the decode bandwidth efficiency and
per-layer cost (least squares on relative error) and the efficiency of each prefill kernel
(MMQ, cuBLAS: ``speed.model.prefill_path``); the per-token cost is a fixed prior (one model
shape cannot tell a per-token from a per-layer cost). ``benchmarks/calibrate_speed.py`` writes
the result into ``speed.json``."""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

from llamasplit.devices.device import Device, Fleet, HostInfo

SHAPES: dict[str, dict[str, int]] = {
    "llama-2-7b": dict(n_layer=32, n_embd=4096, n_head=32, n_head_kv=32, n_ff=11008, n_vocab=32000, n_ctx_train=4096),
    "codellama-7b": dict(n_layer=32, n_embd=4096, n_head=32, n_head_kv=32, n_ff=11008, n_vocab=32016, n_ctx_train=16384),
    "llama-3.1-8b": dict(n_layer=32, n_embd=4096, n_head=32, n_head_kv=8, n_ff=14336, n_vocab=128256, n_ctx_train=131072),
}
"""The shapes of the models the published rows ran (their GGUF headers' hyperparameters)."""

TG_DEPTH = 64
"""tg128 starts from an empty cache: on average 64 cells are in use."""


@dataclass(frozen=True)
class BenchRow:
    """One published llama-bench figure."""

    gpu: str
    family: str
    compute_capability: tuple[int, int]
    catalog_key: str
    bw_gb_s: float
    fp16_tflops: float | None
    n_gpus: int
    split_mode: str
    shape: str
    quant: str
    test: str
    t_s: float
    fa: bool
    source: str
    notes: str
    fp16_acc16_tflops: float | None = None
    """FP16-accumulate tensor rate: the catalog's for ``catalog_key``, else the CSV's (``figures_source``)."""
    int8_tops: float | None = None
    """Rate of the MMQ path (int8 tensor cores, else dp4a): the catalog's, else the CSV's."""
    board_power_w: float | None = None
    sm_count: int | None = None
    """Board power and SM count (``speed.model.power_factor``): the catalog's, else the CSV's."""
    figures_source: str = ""
    """Where the row's own prefill figures come from (a card the catalog lacks), or why it has none."""
    excluded: str = ""
    """Why the row is not calibrated on or checked (empty: it is); the CSV's ``excluded`` column."""

    @property
    def decode(self) -> bool:
        return self.test.startswith("tg")

    @property
    def n_tokens(self) -> int:
        return int(self.test[2:])


def load_rows(text: str | None = None) -> list[BenchRow]:
    """The packaged calibration rows (or those in ``text``, the same CSV)."""
    from llamasplit.devices.catalog import load_catalog

    if text is None:
        text = resources.files("llamasplit").joinpath("data", "llama_bench.csv").read_text(encoding="utf-8")
    catalog = load_catalog()
    rows = []
    for r in csv.DictReader(io.StringIO(text)):
        major, minor = (int(x) for x in r["compute_capability"].split("."))
        spec = catalog.specs.get(r["catalog_key"]) if r["catalog_key"] else None
        rows.append(BenchRow(
            gpu=r["gpu"], family=r["family"], compute_capability=(major, minor), catalog_key=r["catalog_key"],
            bw_gb_s=float(r["bw_gb_s"]), fp16_tflops=float(r["fp16_tflops"]) if r["fp16_tflops"] else None,
            n_gpus=int(r["n_gpus"]), split_mode=r["split_mode"], shape=r["shape"], quant=r["quant"], test=r["test"],
            t_s=float(r["t_s"]), fa=r["fa"] == "1", source=r["source"], notes=r["notes"],
            fp16_acc16_tflops=spec.fp16_acc16_tflops if spec else _num(r, "fp16_acc16_tflops"),
            int8_tops=spec.int8_tops if spec else _num(r, "int8_tops"),
            board_power_w=spec.board_power_w if spec else _num(r, "board_power_w"),
            sm_count=spec.sm_count if spec else (None if _num(r, "sm_count") is None else int(_num(r, "sm_count"))),
            figures_source=(r.get("figures_source") or "").strip(), excluded=(r.get("excluded") or "").strip(),
        ))
    return rows


def _num(r: dict[str, str], key: str) -> float | None:
    text = (r.get(key) or "").strip()
    return float(text) if text else None


@functools.lru_cache(maxsize=16)
def row_model(shape: str, quant: str):
    """The row's model: its shape, typed by llama.cpp's recipe for ``quant``."""
    from llamasplit.model.shapes import dense_profile

    return dense_profile(**SHAPES[shape], name=shape).requantized(quant)


def row_fleet(row: BenchRow) -> Fleet:
    """``n_gpus`` identical CUDA devices with the row's datasheet figures (80 GiB each: memory does not matter here)."""
    size = 80 << 30
    devices = tuple(
        Device(id=f"cal-{i}", name=f"CUDA{i}", description=row.gpu, backend="CUDA", total_bytes=size, free_bytes=size,
               bandwidth_gb_s=row.bw_gb_s, fp16_tflops=row.fp16_tflops, fp16_acc16_tflops=row.fp16_acc16_tflops,
               int8_tops=row.int8_tops, board_power_w=row.board_power_w, sm_count=row.sm_count,
               compute_capability=row.compute_capability)
        for i in range(row.n_gpus)
    )
    return Fleet(devices=devices, host=HostInfo(), source="calibration")


def prefill_path(row: BenchRow) -> tuple[str, str] | None:
    """The kernel and datasheet rate the row's prefill matmuls run at (``speed.model.prefill_path``
    for the row's weight type: the recipe's main type), ``None`` when the catalog lacks that rate."""
    from llamasplit.speed.model import _rate_tflops, prefill_path as path_of

    # every quantized recipe in the rows (Q4_0 ... Q8_0, K-quants) holds MMQ types only
    path = path_of(row.compute_capability, row.quant if row.quant in ("F16", "BF16", "F32") else "Q4_0")
    if path is None or not _rate_tflops(row_fleet(row).devices[0], path[1]):
        return None
    return path


def predict_row(row: BenchRow, coeffs: dict[str, Any] | None = None, *, need_rate: bool = True) -> float | None:
    """The speed model's tok/s for the row (``None``: prefill of a GPU whose catalog entry lacks
    the rate its prefill kernel runs at, see ``prefill_path``, unless not ``need_rate``)."""
    from llamasplit.memory.estimate import estimate
    from llamasplit.memory.settings import LlamaSettings
    from llamasplit.speed.model import layer_split_speed

    if need_rate and not row.decode and prefill_path(row) is None:
        return None
    model = row_model(row.shape, row.quant)
    fleet = row_fleet(row)
    ctx = row.n_tokens
    s = LlamaSettings(n_ctx=ctx, flash_attn="on" if row.fa else "off", binary="llama-completion",
                      split_mode="layer" if row.n_gpus > 1 else "none")
    est = estimate(model, list(fleet.devices), s, fast=True)
    fill = TG_DEPTH / est.n_ctx if row.decode else 0.0
    sp = layer_split_speed(model, fleet, list(fleet.devices), est, prompt_tokens=ctx if not row.decode else 512,
                           kv_fill=fill, coeffs=coeffs)
    return sp.decode_tok_s if row.decode else sp.prefill_tok_s


def errors(rows: Sequence[BenchRow], coeffs: dict[str, Any] | None = None) -> list[tuple[BenchRow, float, float]]:
    """(row, predicted, |predicted / measured - 1|) for every predictable row that is not excluded."""
    out = []
    for r in rows:
        if r.excluded:
            continue
        p = predict_row(r, coeffs)
        if p is not None:
            out.append((r, p, abs(p / r.t_s - 1)))
    return out


def summary(errs: Sequence[tuple[BenchRow, float, float]]) -> dict[str, dict[str, Any]]:
    """Per family and phase: rows, median and worst |predicted / measured - 1|."""
    groups: dict[str, list[float]] = {}
    for r, _, e in errs:
        groups.setdefault(f"{r.family}/{'tg' if r.decode else 'pp'}", []).append(e)
    return {k: {"rows": len(v), "median_error": round(statistics.median(v), 4), "worst_error": round(max(v), 4)}
            for k, v in sorted(groups.items())}


def _with(coeffs: dict[str, Any], family: str, **values: float) -> dict[str, Any]:
    fam = dict(coeffs["families"].get(family) or coeffs["datasheet"])
    fam.update(values)
    return {**coeffs, "families": {**coeffs["families"], family: fam}}


def _implied_inverse(row: BenchRow, coeffs: dict[str, Any]) -> float:
    """1 / the prefill efficiency the row implies: its time per prompt token is ``x / efficiency + rest``
    (``rest``: the fixed per-layer, per-ubatch and transfer costs), both read off the model itself."""
    fam = row.family
    rest = 1 / predict_row(row, _with(coeffs, fam, prefill_mmq_efficiency=1e12, prefill_cublas_efficiency=1e12))
    x = 1 / predict_row(row, _with(coeffs, fam, prefill_mmq_efficiency=1.0, prefill_cublas_efficiency=1.0)) - rest
    return (1 / row.t_s - rest) / x


def fallback_inverse(row: BenchRow, coeffs: dict[str, Any]) -> float:
    """1 / the efficiency the row implies against its FP16 (FP32-accumulate) figure alone, as a
    device whose catalog entry lacks the kernel's own rate is predicted."""
    bare = dataclasses.replace(row, int8_tops=None, fp16_acc16_tflops=None)
    ds = coeffs["datasheet"]
    one = {**coeffs, "families": {}, "datasheet": {**ds, "prefill_fallback_efficiency": 1.0}}
    inf = {**coeffs, "families": {}, "datasheet": {**ds, "prefill_fallback_efficiency": 1e12}}
    fam = coeffs["families"].get(row.family)
    if fam:  # keep the family's fixed costs
        one["datasheet"].update({k: fam[k] for k in ("decode_bandwidth_efficiency", "layer_us", "token_us")})
        inf["datasheet"].update({k: fam[k] for k in ("decode_bandwidth_efficiency", "layer_us", "token_us")})
    rest = 1 / predict_row(bare, inf, need_rate=False)
    x = 1 / predict_row(bare, one, need_rate=False) - rest
    return (1 / row.t_s - rest) / x


def fit_families(rows: Sequence[BenchRow], coeffs: dict[str, Any], *, token_us: float) -> dict[str, dict[str, Any]]:
    """Per family: decode efficiency and per-layer cost (relative least squares, non-negative;
    a family with fewer than three distinct cards takes the per-layer cost of all families pooled),
    and per prefill kernel (``mmq``: int8 tensor cores or dp4a; ``cublas``: FP16 GEMM, see
    ``speed.model.prefill_path``) the efficiency: the median of what each of the family's prefill
    rows on that kernel implies, against the catalog's rate for that kernel."""
    import numpy as np

    def features(r: BenchRow, fam: str) -> tuple[float, float, float]:
        """Seconds per token = inv_eff * x + layer_s * n + rest, read off the model itself."""
        base = dict(decode_bandwidth_efficiency=1e12, layer_us=0.0, token_us=token_us)
        rest = 1 / predict_row(r, _with(coeffs, fam, **base))
        x = 1 / predict_row(r, _with(coeffs, fam, **{**base, "decode_bandwidth_efficiency": 1.0})) - rest
        n = (1 / predict_row(r, _with(coeffs, fam, **{**base, "layer_us": 1.0})) - rest) / 1e-6
        return x, n, rest

    def solve(items: list[tuple[float, float, float, float]], layer_s: float | None) -> tuple[float, float]:
        # items: (x, n, rest, measured seconds); minimise sum(((inv*x + L*n + rest) / t - 1)^2)
        if layer_s is None:
            a = np.array([[x / t, n / t] for x, n, _, t in items])
            y = np.array([1 - rest / t for _, _, rest, t in items])
            (inv, lay), *_ = np.linalg.lstsq(a, y, rcond=None)
            if lay >= 0 and inv > 0:
                return float(inv), float(lay)
            layer_s = 0.0
        a = np.array([[x / t] for x, _, _, t in items])
        y = np.array([1 - (rest + layer_s * n) / t for _, n, rest, t in items])
        (inv,), *_ = np.linalg.lstsq(a, y, rcond=None)
        return float(inv), layer_s

    rows = [r for r in rows if not r.excluded]
    decode = [r for r in rows if r.decode]
    families = sorted({r.family for r in rows})
    feats = {id(r): features(r, r.family) for r in decode}
    pooled_items = [(*feats[id(r)], 1 / r.t_s) for r in decode]
    # pooled layer cost: one efficiency per family, one layer cost for all
    fam_index = {f: i for i, f in enumerate(families)}
    a = np.zeros((len(decode), len(families) + 1))
    y = np.zeros(len(decode))
    for k, (r, (x, n, rest, t)) in enumerate(zip(decode, pooled_items)):
        a[k, fam_index[r.family]] = x / t
        a[k, -1] = n / t
        y[k] = 1 - rest / t
    sol, *_ = np.linalg.lstsq(a, y, rcond=None)
    pooled_layer_s = max(float(sol[-1]), 0.0)
    out: dict[str, dict[str, Any]] = {}
    for fam in families:
        fam_rows = [r for r in decode if r.family == fam]
        if not fam_rows:
            continue
        items = [(*feats[id(r)], 1 / r.t_s) for r in fam_rows]
        distinct = len({r.gpu for r in fam_rows})
        inv, layer_s = solve(items, None if distinct >= 3 else pooled_layer_s)
        entry = {
            "decode_bandwidth_efficiency": round(1 / inv, 4), "layer_us": round(layer_s * 1e6, 2), "token_us": token_us,
            "prefill_mmq_efficiency": None, "prefill_cublas_efficiency": None, "cards": sorted({r.gpu for r in fam_rows}),
            "layer_cost": "fitted" if distinct >= 3 else "pooled over all families",
        }
        fixed = {k: v for k, v in entry.items() if k in ("decode_bandwidth_efficiency", "layer_us", "token_us")}
        for path in ("mmq", "cublas"):
            implied = [_implied_inverse(r, _with(coeffs, fam, **fixed)) for r in rows
                       if r.family == fam and not r.decode and (pp := prefill_path(r)) is not None and pp[0] == path]
            if implied:
                entry[f"prefill_{path}_efficiency"] = round(1 / statistics.median(implied), 4)
                entry[f"prefill_{path}_rows"] = len(implied)
        out[fam] = entry
    return out
