"""Models llama.cpp loads beside the main one: a speculative-decoding draft (``-md``) and LoRA
adapters (``--lora``), and the multimodal projector (``--mmproj``: its rules in ``memory.mmproj``).
Each takes memory on devices llama.cpp chooses; ``with_companions`` adds
their bytes, per device, to an estimate of the main model so the planner's fit check sees them.

The draft (pinned llama.cpp 0.3.36, every rule from its source):

- Its parameters are a copy of the main model's (common/speculative.cpp
  ``common_base_params_to_speculative``): the same ``--device`` list unless ``-devd`` gives one,
  its own ``-ngld`` (default -1: every layer, llama-model.cpp ``n_gpu_layers()``; ``--fit``
  measures the draft as given and changes only the main model's flags, common/fit.cpp
  ``common_params_fit_impl`` ``add_extra_memory``), its own ``-otd`` / ``-cmoed`` / ``-ncmoed``
  overrides, its own ``-ctkd`` / ``-ctvd`` cache types (default f16), and the main model's
  ``-ts``, ``-sm`` (layer when ``-devd`` names one device), ``-fa``, ``-b``/``-ub``, ``-np``,
  ``-kvu``, ``-nkvo``, ``--swa-full`` and load mode.
- Its context holds as many tokens as the main one (``common_speculative_init_result``:
  ``cparams.n_ctx = llama_n_ctx(ctx_tgt)``; this llama.cpp has no ``-cd``/``--ctx-size-draft``) for the same slots, with one output per slot
  (``n_outputs_max = n_parallel``, ``n_outputs_max_per_seq = 1``): llama-server's defaults,
  which ``estimate`` models for the main model too. Nothing is shared with the main context
  (``ctx_other`` is read only by arches that need it, llama-context.cpp).
- ``-ts`` is read for the draft's own device list, the first ``n_devices`` values
  (llama-model.cpp ``load_tensors``: ``all_zero`` over ``tensor_split[0..n_devices)``).
- In this llama.cpp ``-md`` alone loads the draft but drafts nothing ("no implementations
  specified for speculative decoding"): ``--spec-type draft-simple`` uses it
  (common/speculative.cpp ``common_speculative_init``). The vocabularies must then match
  (``common_speculative_are_compatible``): the same vocab type, BOS/EOS, sizes within 128 tokens
  (``SPEC_VOCAB_MAX_SIZE_DIFFERENCE``), and the same token texts from token 5; else llama-server
  keeps the draft loaded and serves without it (tools/server/server-context.cpp ``load_model``:
  "failed to initialize speculative decoding context", measured).

LoRA adapters (src/llama-adapter.cpp ``llama_adapter_lora_init_impl``):

- the file must say ``general.type = adapter``, ``adapter.type = lora`` and the base model's
  ``general.architecture``; tensors are ``<base>.lora_a`` / ``<base>.lora_b`` pairs (``*_norm.weight``
  is skipped, any other suffix refused); each base tensor must exist, with
  ``base.ne[0] == a.ne[0]``, ``base.ne[1] == b.ne[1]``, ``a.ne[1] == b.ne[0]`` (token_embd:
  ``base.ne[0] == b.ne[1]``, ``base.ne[1] == a.ne[1]``);
- each pair is allocated in the buffer type of its base tensor (``ggml_backend_buffer_get_type``
  of the base tensor's buffer: the device of that layer, ``CPU_Mapped`` for mapped host weights),
  except the CPU's extra (repack) types, which fall back to the CPU: one buffer per type, each
  tensor padded to that backend's alignment (``ggml_backend_alloc_ctx_tensors_from_buft``);
- the graph gains two small mat-muls per adapted matrix (``build_lora_mm``) after the context
  re-reserves (``set_adapters_lora``: ``sched_need_reserve``); ``lora_compute_bytes`` sizes it
  [estimate]: the largest ``(rank + n_out) x n_tokens`` f32 intermediate on the device.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llamasplit.devices.device import Device
from llamasplit.errors import ModelReadError, UsageError
from llamasplit.memory import kv, mtp
from llamasplit.memory.estimate import DeviceEstimate, Estimate, estimate
from llamasplit.memory.mmproj import ProjectorEstimate, estimate_projector
from llamasplit.memory.settings import LlamaSettings, with_moe_overrides
from llamasplit.memory.weights import _backend, _override_map, _tables, alloc_bytes
from llamasplit.model.profile import Block, ModelProfile, Role, TensorInfo
from llamasplit.model.projector import ProjectorProfile
from llamasplit.untrusted import printable

SPEC_VOCAB_MAX_SIZE_DIFFERENCE = 128
"""common/speculative.cpp: the most the draft's and the main model's vocabulary sizes may differ."""
DRAFT_SPEC_TYPE = "draft-simple"
"""The ``--spec-type`` (``LlamaSettings.spec_type``) that drafts with a separate model; a plan
with ``-md`` and no type gets it (``-md`` alone only loads the draft)."""


@dataclass(frozen=True)
class DraftSpec:
    """The draft model's flags (common/arg.cpp, ``--spec-draft-*``)."""

    path: str
    """``-md`` / ``--spec-draft-model`` / ``--model-draft``."""
    n_gpu_layers: int | None = None
    """``-ngld``; ``None`` = llama.cpp's default (-1: every layer)."""
    devices: tuple[str, ...] | None = None
    """``-devd``: llama.cpp device names; ``None`` = the main model's devices; ``()`` = none (CPU)."""
    type_k: str = "f16"
    type_v: str = "f16"
    overrides: tuple[tuple[str, str], ...] = ()
    """``-otd`` pattern=BUFFER pairs."""
    cpu_moe: bool = False
    """``-cmoed``."""
    n_cpu_moe: int = 0
    """``-ncmoed``."""
    n_max: int = 3
    """``--spec-draft-n-max`` (llama.cpp's default 3); the planner carries it into
    ``LlamaSettings.spec_draft_n_max``, which emits the flag."""

    def __post_init__(self) -> None:
        for name in ("n_max", "n_cpu_moe"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise UsageError(f"{name} must be a whole number, not {value!r}", remedy="e.g. 3")
        if self.n_max < 0:
            raise UsageError(f"--spec-draft-n-max {self.n_max} is negative", remedy="give a number of tokens from 0")
        if self.n_cpu_moe < 0:
            raise UsageError(f"--spec-draft-n-cpu-moe {self.n_cpu_moe} is negative", remedy="give a number of layers from 0")
        if self.n_gpu_layers is not None and self.n_gpu_layers < 0:
            raise UsageError(f"--spec-draft-ngl {self.n_gpu_layers} is negative", remedy="give a number of layers from 0, or all")

    @property
    def effective_overrides(self) -> tuple[tuple[str, str], ...]:
        """``-otd`` plus what ``-cmoed`` / ``-ncmoed`` append (common/arg.cpp)."""
        return with_moe_overrides(self.overrides, self.cpu_moe, self.n_cpu_moe)

    def to_args(self) -> list[str]:
        """llama.cpp's flags for this draft."""
        args = ["-md", self.path]
        args += ["-ngld", "all" if self.n_gpu_layers is None else str(self.n_gpu_layers)]
        if self.devices is not None:
            args += ["-devd", ",".join(self.devices) if self.devices else "none"]
        if self.type_k != "f16":
            args += ["-ctkd", self.type_k]
        if self.type_v != "f16":
            args += ["-ctvd", self.type_v]
        for pattern, buft in self.overrides:
            args += ["-otd", f"{pattern}={buft}"]
        if self.cpu_moe:
            args += ["-cmoed"]
        if self.n_cpu_moe:
            args += ["-ncmoed", str(self.n_cpu_moe)]
        return args  # --spec-draft-n-max is the main settings' (it sizes the main context's outputs too)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["devices"] = list(self.devices) if self.devices is not None else None
        data["overrides"] = [list(o) for o in self.overrides]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DraftSpec:
        known = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in data.items() if k in known}
        if kw.get("devices") is not None:
            kw["devices"] = tuple(kw["devices"])
        kw["overrides"] = tuple(tuple(o) for o in kw.get("overrides", ()))
        return cls(**kw)


@dataclass(frozen=True)
class LoraTensor:
    """One adapted base matrix: its name and the A/B tensors' ggml types and shapes."""

    name: str
    a_type: int
    a_shape: tuple[int, ...]
    b_type: int
    b_shape: tuple[int, ...]

    def infos(self) -> tuple[TensorInfo, TensorInfo]:
        from llamasplit.model.gguf_reader import ggml_nbytes

        return tuple(TensorInfo(f"{self.name}.lora_{x}", typ, shape, ggml_nbytes(typ, shape), Block.LAYER, None, Role.OTHER)
                     for x, typ, shape in (("a", self.a_type, self.a_shape), ("b", self.b_type, self.b_shape)))  # type: ignore[return-value]

    @property
    def rank(self) -> int:
        return self.a_shape[1] if len(self.a_shape) > 1 else 1


@dataclass(frozen=True)
class LoraAdapter:
    """A LoRA adapter file as llama.cpp reads it (``--lora`` / ``--lora-scaled``)."""

    path: str
    arch: str
    scale: float
    alpha: float
    tensors: tuple[LoraTensor, ...]

    def to_args(self) -> list[str]:
        return ["--lora", self.path] if self.scale == 1.0 else ["--lora-scaled", f"{self.path}:{self.scale:g}"]

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "arch": self.arch, "scale": self.scale, "alpha": self.alpha,
                "tensors": [[t.name, t.a_type, list(t.a_shape), t.b_type, list(t.b_shape)] for t in self.tensors]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoraAdapter:
        return cls(path=data["path"], arch=data["arch"], scale=float(data["scale"]), alpha=float(data["alpha"]),
                   tensors=tuple(LoraTensor(n, int(at), tuple(a), int(bt), tuple(b)) for n, at, a, bt, b in data["tensors"]))


def read_lora(path: str | Path, scale: float = 1.0) -> LoraAdapter:
    """Read a LoRA adapter's header (bounded like a model's) and check what llama.cpp checks of
    the file alone; ``check_lora`` checks it against the base model."""
    from llamasplit.model.gguf_reader import read_header

    header = read_header(path)
    md = header.metadata
    shown = printable(str(path), limit=120)
    general_type = md.get("general.type")
    if general_type != "adapter":
        raise ModelReadError(f"{shown}: not a LoRA adapter (general.type is {printable(str(general_type), limit=40)!r}, "
                             "llama.cpp expects 'adapter')", remedy="give an adapter GGUF (convert_lora_to_gguf.py)")
    adapter_type = md.get("adapter.type")
    if adapter_type != "lora":
        raise ModelReadError(f"{shown}: adapter.type is {printable(str(adapter_type), limit=40)!r}, llama.cpp expects 'lora'",
                             remedy="give a LoRA adapter GGUF")
    arch = md.get("general.architecture")
    if not isinstance(arch, str) or not arch:
        raise ModelReadError(f"{shown}: general.architecture is missing", remedy="re-convert the adapter")
    alpha = md.get("adapter.lora.alpha", 0.0)
    halves: dict[str, dict[str, Any]] = {}
    for t in header.tensors:
        for suffix in (".lora_a", ".lora_b"):
            if t.name.endswith(suffix):
                halves.setdefault(t.name[: -len(suffix)], {})[suffix[-1]] = t
                break
        else:
            if t.name.endswith("_norm.weight"):
                continue  # llama_adapter_lora_init_impl skips norm vectors
            raise ModelReadError(f"{shown}: LoRA tensor {printable(t.name, limit=80)!r} has an unexpected suffix "
                                 "(llama.cpp takes .lora_a and .lora_b)", remedy="re-convert the adapter")
    tensors = []
    for name, pair in sorted(halves.items()):
        if len(pair) != 2:
            raise ModelReadError(f"{shown}: LoRA tensor pair for {printable(name, limit=80)!r} is missing one component",
                                 remedy="re-convert the adapter")
        a, b = pair["a"], pair["b"]
        tensors.append(LoraTensor(name, a.ggml_type, tuple(a.shape), b.ggml_type, tuple(b.shape)))
    return LoraAdapter(path=str(path), arch=arch, scale=float(scale),
                       alpha=float(alpha) if isinstance(alpha, (int, float)) else 0.0, tensors=tuple(tensors))


def check_lora(adapter: LoraAdapter, model: ModelProfile) -> None:
    """llama.cpp's checks of an adapter against its base model, as one UsageError line."""
    shown = printable(adapter.path, limit=120)
    if adapter.arch != model.arch:
        raise UsageError(f"{shown}: a LoRA for {printable(adapter.arch, limit=40)}, the model is {model.arch} "
                         "(llama.cpp: 'model arch and LoRA arch mismatch')", remedy="use an adapter made for this base model")
    base = {t.name: t for t in model.loaded_tensors}
    for lt in adapter.tensors:
        t = base.get(lt.name)
        if t is None:
            raise UsageError(f"{shown}: LoRA tensor {printable(lt.name, limit=80)!r} does not exist in the base model",
                             remedy="use an adapter made for this base model")
        a, b = lt.a_shape, lt.b_shape
        ne0, ne1 = t.shape[0], t.shape[1] if len(t.shape) > 1 else 1
        if lt.name.endswith("token_embd.weight"):
            ok = ne0 == _ne(b, 1) and ne1 == _ne(a, 1)
        else:
            ok = ne0 == _ne(a, 0) and ne1 == _ne(b, 1)
            if ok and _ne(a, 1) != _ne(b, 0):
                raise UsageError(f"{shown}: lora_a of {printable(lt.name, limit=80)!r} is not transposed",
                                 remedy="re-convert the adapter with convert_lora_to_gguf.py")
        if not ok:
            raise UsageError(f"{shown}: LoRA tensor {printable(lt.name, limit=80)!r} has shapes {list(a)} / {list(b)}, "
                             f"the base tensor {list(t.shape)} (wrong base model?)",
                             remedy="use an adapter made for this base model")


def _ne(shape: tuple[int, ...], i: int) -> int:
    return shape[i] if i < len(shape) else 1


# -------------------------------------------------------------------------------------------------
# the draft


def draft_settings(main: LlamaSettings, n_ctx: int, spec: DraftSpec, n_devices: int) -> LlamaSettings:
    """The draft's settings from the main model's (``common_base_params_to_speculative``), for a
    draft over ``n_devices`` devices with the main context's ``n_ctx`` tokens."""
    ts = main.tensor_split
    if ts is not None:
        ts = tuple(ts[:n_devices]) + (0.0,) * max(0, n_devices - len(ts))
        if not any(ts):
            ts = None  # all zero: llama.cpp splits by free memory
    split_mode = "layer" if spec.devices is not None and len(spec.devices) == 1 else main.split_mode
    return main.replace(
        n_gpu_layers=spec.n_gpu_layers, overrides=spec.overrides, cpu_moe=spec.cpu_moe, n_cpu_moe=spec.n_cpu_moe,
        # one device takes every offloaded layer whatever the split (1.0: no free-memory read needed)
        type_k=spec.type_k, type_v=spec.type_v, n_ctx=n_ctx, tensor_split=ts if n_devices > 1 else (1.0,) * n_devices or None,
        split_mode=split_mode, main_gpu=0 if split_mode != "none" else main.main_gpu,
        # one output per slot (result.n_outputs_max = n_parallel, n_outputs_max_per_seq = 1), not the
        # main context's row per drafted token (server_output_limits): as without speculative decoding
        spec_type=None,
    )


def llama_device_names(devices: Sequence[Device]) -> list[str]:
    """The names llama.cpp gives ``devices`` (what ``-devd`` takes), in its order: RPC devices are
    ``RPC<k>``, numbered across all ``--rpc`` workers in order (ggml-rpc.cpp
    ``ggml_backend_rpc_add_server``: ``"RPC" + std::to_string(dev_id)``, a counter over servers;
    ``ggml_backend_dev_by_name`` compares case-insensitively); the others keep their names."""
    out, k = [], 0
    for d in devices:
        if d.backend.upper() == "RPC":
            out.append(f"RPC{k}")
            k += 1
        else:
            out.append(d.name)
    return out


def draft_devices(devices: Sequence[Device], spec: DraftSpec) -> list[int]:
    """Indices into ``devices`` (the main model's, llama.cpp order) of the draft's devices: all of
    them, or the ``-devd`` list in the order it is given (``parse_device_list``), by llama.cpp's
    names or the plan's."""
    if spec.devices is None:
        return list(range(len(devices)))
    by_name = {name: i for i, name in enumerate(llama_device_names(devices))}
    by_name.update({d.name: i for i, d in enumerate(devices)})
    out = []
    for name in spec.devices:
        if name not in by_name:
            raise UsageError(f"--spec-draft-device {printable(name, limit=60)!r}: no such device in the plan",
                             remedy=f"use none or one of {', '.join(by_name) or '(no devices)'}")
        out.append(by_name[name])
    return out


def check_cache_types(model: ModelProfile, settings: LlamaSettings, what: str) -> None:
    """A quantised K/V cache with flash attention needs its block to divide the head size
    (src/llama-context.cpp ``llama_init_from_model``: "K cache type %s with block size %u does not
    divide n_embd_head_k=%u"): one UsageError line instead of llama.cpp's failed load."""
    from gguf import GGML_QUANT_SIZES

    for type_name in (settings.type_k, settings.type_v):
        kv.cache_type(type_name)  # an unknown name is one line, with or without flash attention
    if settings.flash_attn == "off":
        return
    hp = model.hparams
    for kind, type_name, head in (("K", settings.type_k, hp.n_embd_head_k), ("V", settings.type_v, hp.n_embd_head_v)):
        block = GGML_QUANT_SIZES[kv.cache_type(type_name)][0]
        if block > 1 and head and head % block:
            flag = "-ctkd" if kind == "K" else "-ctvd"
            raise UsageError(f"{what}: {kind} cache type {type_name} has blocks of {block}, which do not divide its head "
                             f"size {head} (llama.cpp refuses to create the context)", remedy=f"use {flag} f16 (or q8_0 where 32 divides the head)")


def vocab_mismatch(main: ModelProfile, draft: ModelProfile) -> str | None:
    """Why llama.cpp would refuse ``draft`` for ``main`` (``common_speculative_are_compatible``),
    from what the headers say; ``None`` when they agree. Token texts are compared by llama.cpp
    itself at load time; the header reader keeps only the token lists' lengths."""
    mm, dm = main.metadata, draft.metadata
    for key, what in (("tokenizer.ggml.model", "vocab type"), ("tokenizer.ggml.bos_token_id", "BOS token"),
                      ("tokenizer.ggml.eos_token_id", "EOS token"), ("tokenizer.ggml.add_bos_token", "add-BOS flag"),
                      ("tokenizer.ggml.add_eos_token", "add-EOS flag")):
        if mm.get(key) != dm.get(key):
            return (f"the draft's {what} is {printable(str(dm.get(key)), limit=30)}, the main model's "
                    f"{printable(str(mm.get(key)), limit=30)}")
    diff = abs(main.hparams.n_vocab - draft.hparams.n_vocab)
    if diff > SPEC_VOCAB_MAX_SIZE_DIFFERENCE:
        return (f"the draft has {draft.hparams.n_vocab} tokens, the main model {main.hparams.n_vocab} "
                f"(llama.cpp allows a difference of {SPEC_VOCAB_MAX_SIZE_DIFFERENCE})")
    return None


@dataclass(frozen=True)
class Draft:
    """A draft model to plan with the main one: its header and its flags."""

    model: ModelProfile
    spec: DraftSpec


@dataclass(frozen=True)
class Companions:
    """Everything loaded beside the main model."""

    draft: Draft | None = None
    loras: tuple[LoraAdapter, ...] = ()
    mmproj: ProjectorProfile | None = None
    """The multimodal projector (``--mmproj``, read by ``memory.mmproj``); its flags are the settings'."""

    def __bool__(self) -> bool:
        return self.draft is not None or bool(self.loras) or self.mmproj is not None

    def to_args(self) -> list[str]:
        args: list[str] = []
        for a in self.loras:
            args += a.to_args()
        if self.draft is not None:
            args += self.draft.spec.to_args()
        return args


@dataclass
class CompanionEstimate:
    """The draft's own estimate (over its devices) and the LoRA bytes per device, by name."""

    draft: Estimate | None = None
    draft_device_names: tuple[str, ...] = ()
    draft_mmap: bool = True
    lora_bytes: dict[str, int] = field(default_factory=dict)
    lora_compute_bytes: dict[str, int] = field(default_factory=dict)
    mmproj: ProjectorEstimate | None = None
    mmproj_device_name: str | None = None
    """Where the projector's weights and compute go (a device name, or the host)."""


def estimate_companions(model: ModelProfile, devices: Sequence[Device], settings: LlamaSettings, main: Estimate,
                        companions: Companions, *, fast: bool = False) -> CompanionEstimate:
    """What ``companions`` allocate, given the main model's estimate ``main`` on ``devices``."""
    from llamasplit.memory.weights import HOST

    out = CompanionEstimate()
    if companions.mmproj is not None:
        pe = estimate_projector(companions.mmproj, devices, offload=settings.mmproj_offload,
                                flash_attn=settings.flash_attn)
        out.mmproj = pe
        out.mmproj_device_name = HOST if pe.device_index is None else main.devices[pe.device_index].name
    if companions.draft is not None:
        d = companions.draft
        idx = draft_devices(devices, d.spec)
        ddevs = [devices[i] for i in idx]
        ds = draft_settings(settings, main.n_ctx, d.spec, len(ddevs))
        if mtp.enabled(settings.spec_type):
            # an MTP sidecar: the draft carries the MTP context, no context of its own (memory.mtp)
            out.draft = estimate(d.model, ddevs, ds.replace(spec_type=settings.spec_type), fast=fast, mtp_role="sidecar")
        else:
            out.draft = estimate(d.model, ddevs, ds, fast=fast)
        out.draft_device_names = tuple(x.name for x in ddevs)
        out.draft_mmap = ds.use_mmap
    if companions.loras:
        names = [e.name for e in main.devices]
        backends = [_backend(x) for x in devices]
        where = _base_tensor_devices(model, main, settings)
        layer_of = {t.name: t.layer for t in model.tensors}
        n_tokens = min(main.n_ctx, settings.n_ubatch)
        ranks: dict[tuple[str, int | None], int] = {}
        for adapter in companions.loras:
            if adapter.scale == 0.0:
                continue  # set_adapters_lora leaves a zero-scale adapter out of the graph, not out of memory
            for lt in adapter.tensors:
                dev = where.get(lt.name)
                name = HOST if dev is None else names[dev]
                key = (name, layer_of.get(lt.name))
                ranks[key] = ranks.get(key, 0) + lt.rank
        for adapter in companions.loras:
            for lt in adapter.tensors:
                dev = where.get(lt.name)
                name = HOST if dev is None else names[dev]
                backend = "CPU" if dev is None else backends[dev]
                a, b = lt.infos()
                out.lora_bytes[name] = out.lora_bytes.get(name, 0) + alloc_bytes(a, backend) + alloc_bytes(b, backend)
        # [estimate] build_lora_mm's A x cur products ([rank, n_tokens] f32) of one layer live beside
        # its activations; the B products reuse freed space (measured: SmolLM2, rank 8 on q, v and
        # ffn_down, two RPC workers: +0.06 MiB on one device, +0 on the other and the host)
        for (name, _layer), rank in ranks.items():
            out.lora_compute_bytes[name] = max(out.lora_compute_bytes.get(name, 0), rank * n_tokens * 4)
    return out


def _base_tensor_devices(model: ModelProfile, est: Estimate, settings: LlamaSettings) -> dict[str, int | None]:
    """Device index (``None``: host) of each base tensor's buffer, as ``estimate`` placed it."""
    tables = _tables(model)
    override_of = _override_map(tables.names, settings.effective_overrides)
    names = {e.name: i for i, e in enumerate(est.devices)}
    out: dict[str, int | None] = {}
    for item in tables.items:
        if item.dup:
            continue  # a tied output's second copy: the adapter names token_embd, which stays on the CPU
        target = override_of.get(item.tensor.name)
        if target is not None:
            out[item.tensor.name] = None if target.upper() == "CPU" else names.get(target)
        else:
            out[item.tensor.name] = None if item.slot is None else est.layer_device[item.slot]
    return out


def with_companions(main: Estimate, extra: CompanionEstimate) -> Estimate:
    """``main`` with each device's (and the host's) companion bytes in ``companion_parts``."""
    from llamasplit.memory.weights import HOST

    devs = [dataclasses.replace(e, layers=list(e.layers), companion_parts=dict(e.companion_parts)) for e in main.devices]
    host = dataclasses.replace(main.host, layers=list(main.host.layers), companion_parts=dict(main.host.companion_parts))
    by_name: dict[str, DeviceEstimate] = {e.name: e for e in devs}
    by_name[HOST] = host

    def add(name: str, part: str, n: int) -> None:
        if n:
            target = by_name[name]
            target.companion_parts[part] = target.companion_parts.get(part, 0) + n

    if extra.draft is not None:
        for name, e in zip(extra.draft_device_names, extra.draft.devices):
            add(name, "draft_model", e.model_bytes)
            add(name, "draft_context", e.context_bytes)
            add(name, "draft_compute", e.compute_bytes)
        h = extra.draft.host
        # under mmap the host's CPU_Mapped buffer is the file span of its tensors (what llama.cpp
        # prints and maps), which can cover an offloaded tensor lying between them in the file
        mapped = extra.draft.host_mapped_bytes if extra.draft_mmap else h.model_bytes
        add(HOST, "draft_model", mapped + h.extra_bytes)
        add(HOST, "draft_context", h.context_bytes)
        add(HOST, "draft_compute", h.compute_bytes)
        add(HOST, "draft_output", h.output_bytes)
    for name, n in extra.lora_bytes.items():
        add(name, "lora", n)
    for name, n in extra.lora_compute_bytes.items():
        add(name, "lora_compute", n)
    if extra.mmproj is not None and extra.mmproj_device_name is not None:
        # memory.mmproj: weights and warmup compute on the projector's device, the image input on the CPU
        add(extra.mmproj_device_name, "mmproj_model", extra.mmproj.weights_bytes)
        # a guide for a type not replayed is its own part: run --check does not hold it to a tolerance
        compute_part = "mmproj_compute_estimate" if extra.mmproj.estimated else "mmproj_compute"
        add(extra.mmproj_device_name, compute_part, extra.mmproj.compute_bytes or 0)
        add(HOST, compute_part, extra.mmproj.host_compute_bytes or 0)
        # a type that takes larger images than its warmup's: the buffers grow on the first such image
        add(extra.mmproj_device_name, "mmproj_compute_growth", extra.mmproj.growth_bytes)
        add(HOST, "mmproj_compute_growth", extra.mmproj.host_growth_bytes)
    return dataclasses.replace(main, devices=tuple(devs), host=host)


def companions_from_flags(
    *, md: str | None = None, ngld: str | None = None, devd: str | None = None, ctkd: str = "f16", ctvd: str = "f16",
    otd: list[str] | None = None, cmoed: bool = False, ncmoed: int = 0, draft_n_max: int = 3,
    lora: list[str] | None = None, lora_scaled: list[str] | None = None,
) -> Companions:
    """The draft model and LoRA adapters the flags name (common/arg.cpp's spellings), their
    headers read (bounded, as models): the one door for the CLI and the Python API."""
    from llamasplit.memory.settings import parse_gpu_layers
    from llamasplit.model.profile_cache import read_model

    draft = None
    if md:
        overrides = []
        for item in otd or []:
            for pair in item.split(","):
                pattern, _, buft = pair.rpartition("=")
                overrides.append((pattern, buft))
        devices = None
        if devd is not None:
            devices = () if devd.strip() == "none" else tuple(x.strip() for x in devd.split(",") if x.strip())
        spec = DraftSpec(path=md, n_gpu_layers=parse_gpu_layers(ngld) if ngld is not None else None, devices=devices,
                         type_k=ctkd, type_v=ctvd, overrides=tuple(overrides), cpu_moe=cmoed, n_cpu_moe=ncmoed,
                         n_max=draft_n_max)
        draft = Draft(read_model(md), spec)
    elif ngld is not None or devd is not None:
        raise UsageError("--spec-draft-ngl / --spec-draft-device need a draft model", remedy="give -md DRAFT.gguf")
    adapters = []
    for item in lora or []:
        adapters += [read_lora(p) for p in os.fspath(item).split(",") if p]  # common/arg.cpp: parse_csv_row
    for item in lora_scaled or []:
        for one in item.split(","):
            path, sep, scale = one.rpartition(":")
            try:
                value = float(scale)
            except ValueError:
                value = None
            if not sep or not path or value is None:
                raise UsageError(f"--lora-scaled {one!r} is not FILE:SCALE", remedy="e.g. --lora-scaled adapter.gguf:0.5")
            adapters.append(read_lora(path, value))
    return Companions(draft=draft, loras=tuple(adapters))


def estimate_with_companions(model: ModelProfile, devices: Sequence[Device], settings: LlamaSettings,
                             companions: Companions | None, *, fast: bool = False, **kw: Any) -> Estimate:
    """``estimate`` of the main model plus what ``companions`` add on each device."""
    if companions and companions.draft is not None and mtp.enabled(settings.spec_type):
        kw.setdefault("mtp_role", "beside-draft")  # the sidecar (-md) holds the MTP context
    est = estimate(model, devices, settings, fast=fast, **kw)
    if not companions:
        return est
    return with_companions(est, estimate_companions(model, devices, settings, est, companions, fast=fast))
