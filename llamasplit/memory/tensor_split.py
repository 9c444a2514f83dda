"""The ``-sm tensor`` estimator: what llama.cpp's Meta device puts on each device, from the header alone.

Under ``-sm tensor`` llama.cpp wraps every non-CPU device in one "Meta" device
(src/llama.cpp ``llama_prepare_model_devices``) and splits each weight tensor across them by the rule
of ``llama_meta_device_get_split_state`` (src/llama-model.cpp), mirrored here tensor by tensor:

- split axis by name: Q/K/V/QKV/attn_gate and ffn_up/gate(_exps)/gate_up on axis 1 (output rows),
  attn_output and ffn_down(_exps) on axis 0 (their input columns), biases along, ``output.weight`` on
  axis 1 (vocab rows), the KV cache ``cache_k/v_lN`` on axis 0 (whole heads); everything else
  (norms, the router, shared experts, a tied output matrix, which is named ``token_embd.weight``) is
  MIRRORED: a full copy on every device;
- the slice: ``high = ne * prefix(ts)[j] / sum(ts)`` in float32 (or ``ne * (j+1) / n`` in integers
  when no ``-ts`` is given: an even split, free memory plays no part), rounded down to a granularity
  (attention: whole groups of ``n_gqa`` query heads per KV head, with the block size of
  ``attn_output``'s type raised towards 128; FFN: ``lcm(block of ffn_down's type, 128)``), the last
  device takes the remainder;
- the rotation: device ``j`` of the scan is ``(j + r) % n`` with ``r`` = the number of earlier
  layers of the same kind (SWA or not) ``% n``, so the rounding remainder walks round the devices;
  tensors outside the blocks use ``r = n_layer % n``.

Each device's weights and KV cache are allocated in its own buffer (``ggml_backend_meta_alloc_ctx_tensors_from_buft``):
the per-device totals below. llama.cpp prints one line per Meta buffer and reports its size as the
MAX over the devices (``meta_*_bytes``). The compute buffer is measured on the whole graph (the
Meta buffer type's alloc size of a tensor is its full size) and allocated at that size on every
device.

``-sm row`` is refused: the CUDA backend no longer exports a split buffer type, only SYCL still has one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from functools import lru_cache
from importlib import resources
from typing import Any

from llamasplit.gguf_constants import GGML_QUANT_SIZES, GGMLQuantizationType

from llamasplit.devices.device import Device
from llamasplit.errors import UsageError
from llamasplit.model.profile import ModelProfile, TensorInfo
from llamasplit.memory import kv
from llamasplit.memory.f32 import f32, prefix_sums
from llamasplit.memory.estimate import DeviceEstimate, cuda_overhead, estimate, fattn_pool_high_water
from llamasplit.memory.weights import CPU_ALIGNMENT, CUDA_ALIGNMENT, CUDA_MATRIX_ROW_PADDING, HOST, _tables
from llamasplit.memory.settings import LlamaSettings

# ---------------------------------------------------------------------------------------------
# what llama.cpp accepts

DENIED_ARCHS = frozenset({
    "grok", "mpt", "plamo2", "minicpm3", "gemma3n", "mamba", "mamba2", "jamba", "falcon-h1", "olmo2", "olmoe",
    "deepseek2", "deepseek32", "hy_v4", "dots3note", "glm-dsa", "bitnet", "t5", "nemotron_h", "nemotron_h_moe",
    "granitehybrid", "minimax-01", "minimax-m2", "minimax-m3", "mistral4", "kimi-linear", "bailingmoe3", "kimi-k3",
    "glm5-next", "qwen3tts", "qwen4exp",
})
"""src/llama-arch.cpp ``llm_arch_supports_sm_tensor``: llama.cpp throws "LLAMA_SPLIT_MODE_TENSOR not
implemented for architecture" for these at model creation."""

NOT_MODELLED_ARCHS = frozenset({"qwen3next", "qwen35", "qwen35moe", "deepseek4", "dflash", "hrm_text"})
"""Archs llama.cpp splits with their own segment rules (fused Q-gate, linear-attention heads, grouped
output projections); llamasplit does not reproduce those yet."""

ROW_MODE_REASON = (
    "-sm row is deprecated in llama.cpp: the CUDA backend no longer exports a split buffer type, so "
    "loading fails with \"does not support split buffers\"; only the SYCL backend still has row split"
)


class Axis(str, Enum):
    """How a tensor is spread over the Meta device's members (``ggml_backend_meta_split_axis``)."""

    AXIS_0 = "0"
    AXIS_1 = "1"
    AXIS_2 = "2"
    MIRRORED = "mirrored"
    PARTIAL = "partial"  # a full-size copy on every device holding a partial sum

    @property
    def dim(self) -> int | None:
        return int(self.value) if self.value.isdigit() else None


@dataclass(frozen=True)
class Slice:
    """One tensor as the Meta device splits it."""

    name: str
    axis: Axis
    ne: tuple[int, ...]
    """Elements along ``axis`` on each device (``()`` for mirrored/partial tensors)."""
    granularity: tuple[int, ...]
    """Per segment: slices are multiples of this (the last device takes the remainder)."""
    rotation: int
    n_bytes: tuple[int, ...]
    """Bytes of the slice on each device (full size when mirrored)."""


# ---------------------------------------------------------------------------------------------
# the per-tensor rule (llama_meta_device_get_split_state), generic path

def _p(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


# the patterns as llama.cpp writes them (std::regex_match: the whole name; '.' unescaped stays a wildcard)
P_Q_W = _p(r"blk\.\d*\.attn_q.weight")
P_KV_W = _p(r"blk\.\d*\.attn_(k|v).weight")
P_QKV_W = _p(r"blk\.\d*\.attn_qkv.weight")
P_Q_B = _p(r"blk\.\d*\.attn_q\.bias")
P_KV_B = _p(r"blk\.\d*\.attn_(k|v)\.bias")
P_QKV_B = _p(r"blk\.\d*\.attn_qkv.bias")
P_QK_NORM = _p(r"blk\.\d*\.attn_(q|k)_norm\.weight")
P_KV_CACHE = _p(r"cache_(k|v)_l\d*")
P_SINKS = _p(r"blk\.\d*\.attn_sinks.weight")
P_OUT_W = _p(r"blk\.\d*\.attn_output.weight")
P_OUT_B = _p(r"blk\.\d*\.attn_output.bias")
P_GATE_W = _p(r"blk\.\d*\.attn_gate.weight")
P_SSM_OUT = _p(r"blk\.\d*\.ssm_out.weight")
P_UP_W = _p(r"blk\.\d*\.ffn_up(_exps)?.weight")
P_UP_B = _p(r"blk\.\d*\.ffn_up(_exps)?.bias")
P_FGATE_W = _p(r"blk\.\d*\.ffn_gate(_exps)?.weight")
P_FGATE_B = _p(r"blk\.\d*\.ffn_gate(_exps)?.bias")
P_GATE_UP_W = _p(r"blk\.\d*\.ffn_gate_up(_exps)?.weight")
P_DOWN_W = _p(r"blk\.\d*\.ffn_down(_exps)?.weight")
P_DOWN_B = _p(r"blk\.\d*\.ffn_down.bias")
P_DOWN_EXPS_B = _p(r"blk\.\d*\.ffn_down_exps.bias")
P_SHEXP = _p(r"blk\.\d*\.ffn_(up|gate|down)_shexp.weight")
P_OUTPUT_W = _p(r"output\.weight")
P_OUTPUT_B = _p(r"output\.bias")


def _m(pattern: re.Pattern[str], name: str) -> bool:
    return pattern.fullmatch(name) is not None


@dataclass(frozen=True)
class _Config:
    axis: Axis
    ref: str | None
    """The tensor whose type's block size sets the granularity (``tensor_axis_0``)."""
    il: int
    rotation: int


def _block_size(ggml_type: int) -> int:
    return GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)][0]


class _Rules:
    """The split rule for one model and device count (and ``-ts``)."""

    def __init__(self, model: ModelProfile, n_devices: int, tensor_split: Sequence[float] | None) -> None:
        self.model = model
        self.hp = model.hparams
        self.n = n_devices
        self.names = {t.name: t for t in model.tensors}
        ts = list(tensor_split or [])
        ts = ts[:n_devices] + [0.0] * (n_devices - len(ts[:n_devices]))
        self.ts = [float(x) for x in ts]
        hp = self.hp
        # earlier layers of the same kind (recurrent or not, SWA or not): llama.cpp's get_il_eff
        self._il_eff = []
        seen: dict[tuple[bool, bool], int] = {}
        for il in range(hp.n_layer):
            kind = (hp.is_recurrent[il], hp.is_swa[il])
            self._il_eff.append(seen.get(kind, 0))
            seen[kind] = seen.get(kind, 0) + 1

    # -- helpers mirroring llama_hparams
    def head_k(self, il: int) -> int:
        return self.hp.n_embd_head_k_swa if self.hp.is_swa[il] else self.hp.n_embd_head_k

    def head_v(self, il: int) -> int:
        return self.hp.n_embd_head_v_swa if self.hp.is_swa[il] else self.hp.n_embd_head_v

    def n_gqa(self, il: int) -> int:
        kv_heads = self.hp.n_head_kv[il]
        return self.hp.n_head[il] // kv_heads if kv_heads else 0

    def config(self, name: str) -> _Config:
        """``get_tensor_config``: the axis, the reference tensor for the block size, layer and rotation."""

        def impl(axis: Axis, suffix: str = "", fallback: str = "") -> _Config:
            if name.startswith("blk."):
                end = name.index(".", 4)
                prefix, il = name[: end + 1], int(name[4:end])
                rotation = self._il_eff[il] % self.n
            elif name.startswith("cache_"):
                il = int(name[name.index("_l", 6) + 2:])
                prefix, rotation = f"blk.{il}.", self._il_eff[il] % self.n
            else:
                il, prefix, rotation = 0, "", self.hp.n_layer_kv % self.n
            if not suffix:
                return _Config(axis, name, il, rotation)
            ref = prefix + suffix
            if ref not in self.names and fallback:
                ref = prefix + fallback
            if ref not in self.names:
                raise UsageError(
                    f"{name}: llama.cpp splits it like {prefix}{suffix}, which this model does not have "
                    "(llama.cpp would abort on a GGML_ASSERT)",
                    remedy="use -sm layer for this model",
                )
            return _Config(axis, ref, il, rotation)

        A0, A1, M = Axis.AXIS_0, Axis.AXIS_1, Axis.MIRRORED
        if _m(P_Q_W, name) or _m(P_KV_W, name) or _m(P_QKV_W, name):
            return impl(A1, "attn_output.weight", "ssm_out.weight")
        if _m(P_Q_B, name) or _m(P_KV_B, name) or _m(P_QKV_B, name):
            return impl(A0, "attn_output.weight", "ssm_out.weight")
        if _m(P_QK_NORM, name):
            t = self.names.get(name)
            return impl(M if t is None or len(t.shape) < 2 or t.shape[1] == 1 else A1, "attn_output.weight")
        if _m(P_KV_CACHE, name) or _m(P_SINKS, name):
            return impl(A0, "attn_output.weight")
        if _m(P_OUT_W, name):
            return impl(A0)
        if _m(P_OUT_B, name):
            return impl(M)
        if _m(P_GATE_W, name):
            return impl(A1, "attn_output.weight", "ssm_out.weight")
        if _m(P_UP_W, name) or _m(P_FGATE_W, name) or _m(P_GATE_UP_W, name):
            return impl(A1, "ffn_down.weight", "ffn_down_exps.weight")
        if _m(P_UP_B, name) or _m(P_FGATE_B, name):
            return impl(A0, "ffn_down.weight", "ffn_down_exps.weight")
        if _m(P_DOWN_W, name):
            return impl(A0, "ffn_down.weight", "ffn_down_exps.weight")
        if _m(P_DOWN_B, name):
            return impl(M)
        if _m(P_DOWN_EXPS_B, name):
            return impl(Axis.PARTIAL, "ffn_down_exps.weight")
        if _m(P_OUTPUT_W, name):
            return impl(A1)
        if _m(P_OUTPUT_B, name):
            return impl(A0)
        return impl(M)

    def segments(self, name: str, ne_axis: int, il: int) -> list[tuple[int, int]]:
        """``get_split_segments``: (elements, repeats) along the axis."""
        hp = self.hp
        if _m(P_QKV_W, name) or _m(P_QKV_B, name):
            q = hp.n_head[il] * self.head_k(il)
            k = self.head_k(il) * hp.n_head_kv[il]
            v = self.head_v(il) * hp.n_head_kv[il]
            if ne_axis != q + k + v:
                raise UsageError(f"{name}: {ne_axis} rows are not Q+K+V = {q}+{k}+{v} (llama.cpp asserts this)")
            return [(q, 1), (k, 2)] if k == v else [(q, 1), (k, 1), (v, 1)]
        if _m(P_UP_W, name) or _m(P_UP_B, name):
            n_ff = hp.n_ff[il]
            return [(n_ff, 2)] if n_ff and ne_axis == 2 * n_ff else [(ne_axis, 1)]
        if _m(P_GATE_UP_W, name):
            if ne_axis != 2 * hp.n_ff_exp:
                raise UsageError(f"{name}: {ne_axis} rows are not 2 x n_ff_exp = {2 * hp.n_ff_exp}")
            return [(hp.n_ff_exp, 2)]
        return [(ne_axis, 1)]

    def granularity(self, name: str, blck: int, il: int, n_segments: int) -> list[int]:
        """``get_split_granularity`` for attention layers (recurrent layers are not modelled)."""
        n_gqa = self.n_gqa(il)
        n_embd_q = n_gqa * self.head_k(il)
        perf = blck
        while perf < 128 and perf * self.n < n_embd_q:
            perf *= 2
        g_q = math.lcm(n_embd_q, perf) if n_embd_q else perf
        g_head = g_q // self.head_k(il) if self.head_k(il) else 1
        if _m(P_SINKS, name):
            return [g_head]
        if _m(P_Q_W, name) or _m(P_Q_B, name):
            return [g_q]
        if _m(P_OUT_W, name):
            return [g_head * self.head_v(il)]
        if _m(P_GATE_W, name):
            t = self.names.get(name)
            return [g_head if t is not None and len(t.shape) > 1 and t.shape[1] == self.hp.n_head[il] else g_q]
        g_kv = g_q // n_gqa if n_gqa else g_q
        g_v = (g_kv // self.head_k(il)) * self.head_v(il) if self.head_k(il) else g_kv
        if _m(P_KV_W, name) or _m(P_KV_B, name) or _m(P_KV_CACHE, name):
            is_v = "attn_v" in name or "cache_v" in name
            return [g_v if is_v else g_kv]
        if _m(P_QKV_W, name) or _m(P_QKV_B, name):
            return [g_q, g_kv, g_v] if n_segments == 3 else [g_q, g_kv]
        if any(_m(p, name) for p in (P_UP_W, P_UP_B, P_FGATE_W, P_FGATE_B, P_GATE_UP_W, P_DOWN_W, P_SHEXP)):
            return [math.lcm(blck, 128)]
        return [1] * n_segments

    def split(self, name: str, shape: Sequence[int]) -> tuple[Axis, tuple[int, ...], tuple[int, ...], int]:
        """Axis, elements along it per device, granularity per segment, rotation."""
        cfg = self.config(name)
        dim = cfg.axis.dim
        if dim is None:
            return cfg.axis, (), (), cfg.rotation
        ne_axis = shape[dim] if dim < len(shape) else 1
        ref = self.names.get(cfg.ref) if cfg.ref else None
        ref_type = ref.ggml_type if ref is not None else GGMLQuantizationType.F32
        blck = _block_size(ref_type)
        segs = self.segments(name, ne_axis, cfg.il)
        gran = self.granularity(name, blck, cfg.il, len(segs))
        n, rot = self.n, cfg.rotation
        scan = prefix_sums([self.ts[(j + rot) % n] for j in range(n)])
        out = [0] * n
        for (ne_s, nr_s), g in zip(segs, gran):
            low = 0
            for j in range(n - 1):
                if scan[-1] == 0:
                    high = ne_s * (j + 1) // n
                else:  # int64 * float / float in float32, truncated (C++ conversion to int64_t)
                    high = int(f32(f32(f32(ne_s) * scan[j]) / scan[-1]))
                high -= high % g
                out[(j + rot) % n] += (high - low) * nr_s
                low = high
            out[(n - 1 + rot) % n] += (ne_s - low) * nr_s
        return cfg.axis, tuple(out), tuple(gran), rot


def slice_shape(shape: Sequence[int], axis: Axis, ne_axis: int) -> tuple[int, ...]:
    dim = axis.dim
    if dim is None:
        return tuple(shape)
    full = list(shape) + [1] * (dim + 1 - len(shape))
    full[dim] = ne_axis
    return tuple(full)


def nbytes(ggml_type: int, shape: Sequence[int]) -> int:
    """``ggml_nbytes`` of a contiguous tensor (0 when any dimension is 0)."""
    if any(d == 0 for d in shape):
        return 0
    qtype = GGMLQuantizationType(ggml_type)
    return kv.row_bytes(qtype, shape[0]) * math.prod(shape[1:])


def device_alloc_bytes(ggml_type: int, shape: Sequence[int], backend: str) -> int:
    """Allocation size of a (slice of a) weight on one device's buffer, padded to its alignment."""
    size = nbytes(ggml_type, shape)
    if size == 0:
        return 0
    if backend == "CUDA":
        ne0 = shape[0]
        quantized = GGMLQuantizationType(ggml_type) not in (
            GGMLQuantizationType.F32, GGMLQuantizationType.F16, GGMLQuantizationType.BF16,
        )
        if quantized and ne0 % CUDA_MATRIX_ROW_PADDING:
            size += kv.row_bytes(GGMLQuantizationType(ggml_type), CUDA_MATRIX_ROW_PADDING - ne0 % CUDA_MATRIX_ROW_PADDING)
        return kv.pad(size, CUDA_ALIGNMENT)
    return kv.pad(size, CPU_ALIGNMENT)


def _check_slice(name: str, ggml_type: int, shape: Sequence[int]) -> None:
    blck = _block_size(ggml_type)
    if shape and shape[0] % blck:
        raise UsageError(
            f"{name}: a slice of {shape[0]} elements per row does not fill whole "
            f"{GGMLQuantizationType(ggml_type).name} blocks of {blck}",
            remedy="use -sm layer, an f16 KV cache, or another -ts",
        )


def weight_slices(model: ModelProfile, n_devices: int, tensor_split: Sequence[float] | None = None) -> list[Slice]:
    """How every weight tensor of ``model`` is split over ``n_devices`` (llama.cpp's Meta rule)."""
    rules = _rules(model, n_devices, tensor_split)
    out = []
    for t in model.loaded_tensors:  # NextN/MTP blocks get no buffer
        out.append(_slice(rules, t.name, t.ggml_type, t.shape))
    return out


def _slice(rules: _Rules, name: str, ggml_type: int, shape: Sequence[int]) -> Slice:
    axis, ne, gran, rot = rules.split(name, shape)
    if axis.dim is None:
        full = nbytes(ggml_type, shape)
        return Slice(name, axis, (), gran, rot, (full,) * rules.n)
    shapes = [slice_shape(shape, axis, e) for e in ne]
    for s in shapes:
        if nbytes(ggml_type, s):
            _check_slice(name, ggml_type, s)
    return Slice(name, axis, ne, gran, rot, tuple(nbytes(ggml_type, s) for s in shapes))


def _rules(model: ModelProfile, n_devices: int, tensor_split: Sequence[float] | None) -> _Rules:
    key = (id(model), n_devices, tuple(tensor_split) if tensor_split else None)
    cached = _RULES_CACHE.get(key)
    if cached is None or cached.model is not model:
        if len(_RULES_CACHE) > 32:
            _RULES_CACHE.clear()
        cached = _RULES_CACHE[key] = _Rules(model, n_devices, tensor_split)
    return cached


_RULES_CACHE: dict[tuple, _Rules] = {}


def kv_slices(model: ModelProfile, n_devices: int, tensor_split: Sequence[float] | None, il: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Elements of ``n_embd_k_gqa`` / ``n_embd_v_gqa`` of layer ``il``'s cache on each device (whole heads)."""
    rules = _rules(model, n_devices, tensor_split)
    hp = model.hparams
    _, k, _, _ = rules.split(f"cache_k_l{il}", (hp.n_embd_k_gqa(il), 1))
    _, v, _, _ = rules.split(f"cache_v_l{il}", (hp.n_embd_v_gqa(il), 1))
    return k, v


# ---------------------------------------------------------------------------------------------
# the compatibility record

@lru_cache(maxsize=1)
def compat_record() -> dict[str, Any]:
    """``llamasplit/data/tensor_compat.json``: what -sm tensor did when we ran it at the pinned version."""
    text = resources.files("llamasplit").joinpath("data", "tensor_compat.json").read_text(encoding="utf-8")
    return json.loads(text)


def arch_status(arch: str) -> tuple[str, str]:
    """(``works`` | ``crashes`` | ``denied`` | ``not-modelled`` | ``untested``, why)."""
    if arch in DENIED_ARCHS:
        return "denied", f"llama.cpp refuses -sm tensor for architecture '{arch}' (llm_arch_supports_sm_tensor)"
    if arch in NOT_MODELLED_ARCHS:
        return "not-modelled", f"llama.cpp splits '{arch}' with its own segment rules, which llamasplit does not model yet"
    entry = compat_record()["archs"].get(arch)
    if entry is None:
        return "untested", f"-sm tensor has not been run on a '{arch}' model here"
    return entry["status"], entry["reason"]


# ---------------------------------------------------------------------------------------------
# preconditions

@dataclass(frozen=True)
class Check:
    """Whether llama.cpp would run ``-sm tensor`` for this model, devices and settings."""

    ok: bool
    reasons: tuple[str, ...]
    """Why not (each one line); empty when ``ok``."""
    warnings: tuple[str, ...] = ()


def check_tensor_mode(
    model: ModelProfile, devices: Sequence[Device], settings: LlamaSettings, *, allow_untested: bool = True, deep: bool = True,
) -> Check:
    """llama.cpp's preconditions for ``-sm tensor`` plus what the compatibility record knows;
    ``deep`` also splits every tensor and cache to find slices that do not fill whole blocks."""
    reasons: list[str] = []
    warnings: list[str] = []
    hp = model.hparams
    status, why = arch_status(model.arch)
    if status in ("denied", "crashes", "not-modelled"):
        reasons.append(why)
    elif status == "untested":
        (warnings if allow_untested else reasons).append(why)
    if settings.flash_attn == "off":
        reasons.append("llama.cpp refuses -sm tensor without flash attention (\"SPLIT_MODE_TENSOR requires flash_attn\"); use -fa on or auto")
    accel = [d for d in devices if d.backend.upper() != "CPU"]
    if not accel:
        reasons.append("-sm tensor needs at least one non-CPU device (GPU or RPC); llama.cpp skips the CPU for tensor parallelism")
    elif len(accel) == 1:
        warnings.append("-sm tensor over a single device is not recommended by llama.cpp (no parallelism, extra overhead)")
    if any(hp.is_recurrent):
        reasons.append("recurrent/hybrid layers: llamasplit does not model how llama.cpp splits their state")
    if hp.is_mla:
        reasons.append("multi-head latent attention: llamasplit does not model its tensor split")
    if settings.effective_overrides:
        reasons.append("-ot / --cpu-moe with -sm tensor is not modelled by llamasplit")
    if settings.tensor_split is not None and len(settings.tensor_split) > len(accel):
        reasons.append(f"-ts has {len(settings.tensor_split)} values for {len(accel)} devices in the Meta device")
    if not reasons and accel:
        try:
            kv.cache_type(settings.type_k), kv.cache_type(settings.type_v)
            if deep:
                ts = _effective_ts(settings)
                rules = _rules(model, len(accel), ts)
                for t in model.loaded_tensors:
                    _slice(rules, t.name, t.ggml_type, t.shape)
                for il in range(hp.n_layer_kv):
                    _check_kv(model, len(accel), ts, il, settings)
        except UsageError as err:
            reasons.append(err.one_line())
    return Check(ok=not reasons, reasons=tuple(reasons), warnings=tuple(warnings))


def _effective_ts(settings: LlamaSettings) -> tuple[float, ...] | None:
    ts = settings.tensor_split
    return tuple(ts) if ts is not None and any(ts) else None


def _check_kv(model: ModelProfile, n: int, ts: Sequence[float] | None, il: int, settings: LlamaSettings) -> tuple[tuple[int, ...], tuple[int, ...]]:
    k, v = kv_slices(model, n, ts, il)
    for name, ctype, ne in (("K", settings.type_k, k), ("V", settings.type_v, v)):
        blck = GGML_QUANT_SIZES[kv.cache_type(ctype)][0]
        bad = [e for e in ne if e % blck]
        if bad:
            raise UsageError(
                f"layer {il}: a {name} cache slice of {bad[0]} elements does not fill whole {ctype} blocks of {blck}",
                remedy="use an f16 cache with -sm tensor",
            )
    return k, v


def refuse_row_mode(devices: Sequence[Device]) -> None:
    """``-sm row``: always a ``UsageError`` naming why."""
    sycl = any(d.backend.upper() == "SYCL" for d in devices)
    tail = "llamasplit does not plan it even there" if sycl else "none of these devices is SYCL"
    raise UsageError(f"{ROW_MODE_REASON}; {tail}", remedy="use -sm tensor (real tensor parallelism) or -sm layer")


# ---------------------------------------------------------------------------------------------
# the estimate

META_NAME = "Meta"


@dataclass(frozen=True)
class TensorEstimate:
    """Per-device bytes under ``-sm tensor`` and the figures llama.cpp prints for the Meta buffers."""

    devices: tuple[DeviceEstimate, ...]
    """Each member of the Meta device, in llama.cpp's order."""
    host: DeviceEstimate
    n_ctx: int
    tensor_split: tuple[float, ...] | None
    meta_model_bytes: int
    """``load_tensors: Meta(...) model buffer size``: the max over devices."""
    meta_kv_bytes: tuple[int, ...]
    """``llama_kv_cache: Meta(...) KV buffer size``, one per cache (full attention first, then SWA)."""
    meta_compute_bytes: int
    host_mapped_bytes: int
    layer_on_meta: tuple[bool, ...]
    """Per layer 0..n_layer (the last is the output layer): on the Meta device, else the CPU."""
    slices: tuple[Slice, ...] = field(repr=False, default=())
    layer_kv_bytes: tuple[tuple[int, ...], ...] = field(repr=False, default=())
    """Per layer (0..n_layer_kv-1): cache bytes on each device (zeros for layers not on the Meta device)."""
    warnings: tuple[str, ...] = ()

    @property
    def meta_total_bytes(self) -> int:
        """What llama.cpp's memory breakdown shows for the Meta device (the max per buffer, summed)."""
        return self.meta_model_bytes + sum(self.meta_kv_bytes) + self.meta_compute_bytes

    def to_dict(self) -> dict[str, Any]:
        return {
            "devices": [d.to_dict() for d in self.devices],
            "host": self.host.to_dict(),
            "n_ctx": self.n_ctx,
            "tensor_split": list(self.tensor_split) if self.tensor_split else None,
            "meta_model_bytes": self.meta_model_bytes,
            "meta_kv_bytes": list(self.meta_kv_bytes),
            "meta_compute_bytes": self.meta_compute_bytes,
            "warnings": list(self.warnings),
        }


def estimate_tensor(model: ModelProfile, devices: Sequence[Device], settings: LlamaSettings) -> TensorEstimate:
    """What llama.cpp allocates for ``model`` under ``-sm tensor`` over ``devices`` (the Meta device's
    members, in its order: non-CPU devices in registry order, RPC devices after local GPUs [inferred])."""
    if settings.split_mode == "row":
        refuse_row_mode(devices)
    check = check_tensor_mode(model, devices, settings, deep=False)  # the slicing below checks the rest
    if not check.ok:
        raise UsageError("-sm tensor: " + "; ".join(check.reasons), remedy="use -sm layer")
    hp = model.hparams
    devs = [d for d in devices if d.backend.upper() != "CPU"]
    n = len(devs)
    ts = _effective_ts(settings)
    rules = _rules(model, n, ts)
    backends = [d.alloc_backend for d in devs]

    # the host side and the whole-graph compute buffer are those of one device holding every
    # offloaded layer: run the layer estimator with a stand-in for the Meta device
    stand_in = dataclasses.replace(devs[0], id="meta", name=META_NAME)
    layer_settings = settings.replace(split_mode="layer", tensor_split=(1.0,))
    base = estimate(model, [stand_in], layer_settings)
    on_meta = tuple(d is not None for d in base.layer_device)

    ests = [DeviceEstimate(d.name) for d in devs]
    slices: list[Slice] = []
    for item in _tables(model).items:
        if item.slot is None or not on_meta[item.slot]:
            continue
        t: TensorInfo = item.tensor
        sl = _slice(rules, t.name, t.ggml_type, t.shape)
        slices.append(sl)
        for j, e in enumerate(ests):
            shape = slice_shape(t.shape, sl.axis, sl.ne[j]) if sl.ne else t.shape
            e.model_bytes += device_alloc_bytes(t.ggml_type, shape, backends[j])
            share = sl.n_bytes[j] / t.n_bytes if t.n_bytes else 0.0
            e.read_bytes += item.read_bytes * share
    for il in range(hp.n_layer + 1):
        if on_meta[il]:
            for e in ests:
                e.layers.append(il)

    # KV cache: whole heads per device, one Meta buffer per cache (full attention, then SWA)
    n_ctx = base.n_ctx
    n_batch = min(n_ctx, settings.n_batch)
    n_ubatch = min(n_batch, settings.n_ubatch)
    layout = kv.kv_layout(hp, n_ctx=n_ctx, n_seq=settings.seq_count, n_ubatch=n_ubatch, kv_unified=settings.unified, swa_full=settings.swa_full)
    caches: dict[bool, list[int]] = {}
    layer_kv: list[tuple[int, ...]] = [(0,) * n for _ in range(hp.n_layer_kv)]
    host_ctx = base.host.context_bytes
    tk, tv = kv.cache_type(settings.type_k), kv.cache_type(settings.type_v)
    for il in range(hp.n_layer_kv):
        if not on_meta[il] or not settings.offload_kqv:
            continue
        swa = hp.is_swa[il]
        cells = (layout.swa_size if swa else layout.kv_size) * layout.n_stream
        k, v = _check_kv(model, n, ts, il, settings)
        per = caches.setdefault(swa, [0] * n)
        row = []
        for j in range(n):
            align = CUDA_ALIGNMENT if backends[j] == "CUDA" else CPU_ALIGNMENT
            b = kv.pad(kv.row_bytes(tk, k[j]) * cells, align) if k[j] else 0
            if not hp.is_mla and v[j]:
                b += kv.pad(kv.row_bytes(tv, v[j]) * cells, align)
            per[j] += b
            ests[j].context_bytes += b
            row.append(b)
        layer_kv[il] = tuple(row)
    meta_kv = tuple(max(caches[key]) for key in (False, True) if key in caches)

    compute = base.devices[0].compute_bytes
    n_outputs = n_ubatch if settings.binary in ("llama-completion", "llama-cli", "llama-fit-params") else settings.seq_count
    nccl_peers = n if all(d.backend.upper() == "CUDA" for d in devs) else 0  # NCCL joins local GPUs only
    for j, e in enumerate(ests):
        e.compute_bytes = compute
        if backends[j] == "CUDA":
            fa = fattn_pool_high_water(model, devs[j], settings, layout.kv_size, (n_ubatch, settings.seq_count))
            overhead = cuda_overhead(model, devs[j], e.layers, n_ubatch, n_outputs, tensor_peers=nccl_peers, fattn_bytes=fa,
                                     flash=settings.flash_attn != "off")
            e.overhead_bytes, e.overhead_parts = overhead.total_bytes, overhead.parts()
    host = dataclasses.replace(base.host, context_bytes=host_ctx, name=HOST)
    return TensorEstimate(
        devices=tuple(ests), host=host, n_ctx=n_ctx, tensor_split=ts,
        meta_model_bytes=max(e.model_bytes for e in ests), meta_kv_bytes=meta_kv, meta_compute_bytes=compute,
        host_mapped_bytes=base.host_mapped_bytes, layer_on_meta=on_meta, slices=tuple(slices),
        layer_kv_bytes=tuple(layer_kv), warnings=check.warnings,
    )


__all__ = [
    "Axis", "Check", "DENIED_ARCHS", "ROW_MODE_REASON", "Slice", "TensorEstimate", "arch_status", "check_tensor_mode",
    "compat_record", "device_alloc_bytes", "estimate_tensor", "kv_slices", "refuse_row_mode", "weight_slices",
]
