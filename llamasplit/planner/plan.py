"""The split planner: a pure function from (model, fleet, options) to a Plan.

Objective, in order: fit every device within its budget (free memory minus a margin); then the
highest predicted decode speed; then fewer devices. Layer split decodes one device after the
other, so a token costs the sum over devices of (bytes read there / its bandwidth): moving layers
to a faster device always helps while they fit. The planner therefore orders devices fastest
first, fills each with as many layers as fit (checked with the full estimator, compute and KV
included), leaves the rest on the CPU (``-ngl``), and emits the counts as an integer ``-ts``,
which llama.cpp's float32 rule turns back into exactly those counts.

Flags the user fixed (``-ngl``, ``-ts``, ``-c``, ...) are kept; with both ``-ngl`` and ``-ts``
fixed the plan is simply the estimate of that configuration, checked against the budgets.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from llamasplit.devices.device import Device, Fleet
from llamasplit.errors import ModelReadError, NoFeasiblePlan, UsageError
from llamasplit.model.profile import ModelProfile
from llamasplit.memory import kv, mtp
from llamasplit.memory.companions import Companions, DraftSpec, LoraAdapter, draft_devices, estimate_with_companions
from llamasplit.memory.estimate import Estimate, estimate, with_host_extras
from llamasplit.memory.weights import HOST
from llamasplit.memory.graph import replayable
from llamasplit.memory.settings import LlamaSettings
from llamasplit.speed.model import HOST_NAME, IDLE, SpeedEstimate, device_speed, host_cpu, layer_split_speed
from llamasplit.units import GiB, format_size

PLAN_SCHEMA = "llamasplit.plan/1"
DEFAULT_MARGIN_BYTES = 1 * GiB
"""Kept free on every device, like llama.cpp's --fit target (1024 MiB)."""
MIN_AUTO_CTX = 4096
"""The shortest context the planner picks by itself (llama.cpp --fit's default floor)."""
PREFILL_TOKENS = 512
"""The prompt length the plan's prefill figure is for (llama-bench's pp512)."""


@dataclass(frozen=True)
class PlanOptions:
    """What the user asked for. ``settings`` holds the llama.cpp flags; ``fixed`` names the ones they set."""

    settings: LlamaSettings = field(default_factory=LlamaSettings)
    fixed: frozenset[str] = frozenset()
    """Fields of ``settings`` the user set explicitly: the planner never changes them."""
    margin_bytes: int = DEFAULT_MARGIN_BYTES
    margin_overrides: tuple[tuple[str, int], ...] = ()
    """Per-device margins by device name."""
    companions: Companions = field(default_factory=Companions)
    """A draft model (``-md``) and LoRA adapters (``--lora``) loaded beside the model, planned with it."""


@dataclass(frozen=True)
class DevicePlan:
    """One device's share: what it holds, what it has, how fast it reads."""

    name: str
    description: str
    model_bytes: int
    context_bytes: int
    compute_bytes: int
    overhead_bytes: int
    output_bytes: int
    total_bytes: int
    free_bytes: int | None
    budget_bytes: int | None
    layers: tuple[int, ...]
    bandwidth_gb_s: float | None
    device_id: str | None = None
    serves: str | None = None
    """RPC devices: the backend behind the worker, whose allocation rules sized this share."""
    serves_source: str | None = None
    """Where ``serves`` came from: ``published``, ``described`` or ``assumed-cpu``."""
    overhead_parts: dict[str, int] | None = None
    """``overhead_bytes`` by part: ``cuda_context``, ``cublas_workspace``, ``pool``, ``nccl`` (memory/cuda_rules.py)."""
    speed_basis: str | None = None
    """Where this device's speed comes from: ``measured``, ``calibrated``, ``datasheet`` or ``assumed``
    (``None``: it holds no layers, or its speed is unknown)."""
    companion_parts: dict[str, int] | None = None
    """What the draft model and LoRA adapters hold here, by part (``memory.companions``:
    ``draft_model``, ``draft_context``, ``draft_compute``, ``draft_output``, ``lora``,
    ``lora_compute``); in ``total_bytes``."""

    @property
    def companion_bytes(self) -> int:
        return sum((self.companion_parts or {}).values())

    @property
    def headroom_bytes(self) -> int | None:
        return None if self.budget_bytes is None else self.budget_bytes - self.total_bytes


@dataclass(frozen=True)
class Plan:
    """A complete, reproducible answer: where everything goes, the flags, memory and speed."""

    model_path: str
    model_name: str | None
    arch: str
    settings: LlamaSettings
    devices: tuple[DevicePlan, ...]
    host: DevicePlan
    n_ctx: int
    decode_tok_s: float | None
    default_split_decode_tok_s: float | None
    fleet: Fleet
    notes: tuple[str, ...] = ()
    prefill_tok_s: float | None = None
    """Predicted prompt processing speed for a ``PREFILL_TOKENS``-token prompt."""
    speed_basis: str | None = None
    """The weakest basis among the devices that hold layers (``None``: speed unknown)."""
    draft: DraftSpec | None = None
    """The draft model's flags (``-md ...``), planned with the model."""
    loras: tuple[LoraAdapter, ...] = ()
    """LoRA adapters (``--lora``), planned with the model."""

    def to_llama_args(self) -> list[str]:
        """llama.cpp flags for this plan (after ``-m MODEL``)."""
        args = self.settings.to_args()
        rpc = [d.device_id.split(":", 1)[1] for d in self.devices if d.device_id and d.device_id.startswith("rpc:")]
        if rpc:
            args += ["--rpc", ",".join(dict.fromkeys(ep.split("#")[0] for ep in rpc))]
        for adapter in self.loras:
            args += adapter.to_args()
        if self.draft is not None:
            args += self.draft.to_args()
        return args

    def env_leftover_args(self) -> list[str]:
        """The plan's flags that have no ``LLAMA_ARG_*`` variable (``--lora``, ``-devd``, ``-otd``):
        the environment form passes them as flags."""
        args, out, i = self.to_llama_args(), [], 0
        while i < len(args):
            n = _NO_ENV_FLAGS.get(args[i])
            if n is not None:
                out += args[i : i + 1 + n]
                i += 1 + n
                continue
            i += 1 if _ENV_OF_FLAG.get(args[i], ("", None))[1] is not None else 2
        return out

    def cuda_env(self) -> dict[str, str]:
        """The variables that make llama.cpp's CUDA0..n exactly this plan's CUDA devices, in order:
        ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` and ``CUDA_VISIBLE_DEVICES`` by GPU UUID, or by PCI-order
        index for devices read without one (simulated fleets, inventories)."""
        from llamasplit.devices.cuda_env import launch_env

        cuda = [d for d in self.fleet.devices if d.backend.upper() == "CUDA" and d.host == "localhost"]
        if not cuda:
            return {}
        if all(d.id.startswith(("GPU-", "MIG-")) for d in cuda):
            return launch_env(cuda, {})
        if all(d.nvml_index is not None for d in cuda):
            return {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": ",".join(str(d.nvml_index) for d in cuda)}
        return {}

    def to_llama_env(self) -> dict[str, str]:
        """The same flags as llama.cpp's ``LLAMA_ARG_*`` environment variables (common/arg.cpp)."""
        args = self.to_llama_args()
        model_flag, where = self.model_args()
        env: dict[str, str] = {"LLAMA_ARG_MODEL_URL" if model_flag == "-mu" else "LLAMA_ARG_MODEL": where}
        i = 0
        while i < len(args):
            flag = args[i]
            if flag in _NO_ENV_FLAGS:
                i += 1 + _NO_ENV_FLAGS[flag]  # env_leftover_args passes it as a flag
                continue
            name, value = _ENV_OF_FLAG[flag]
            if value is None:
                value, i = args[i + 1], i + 2
            else:
                i += 1
            if name in env and name == "LLAMA_ARG_OVERRIDE_TENSOR":
                value = env[name] + "," + value
            env[name] = value
        return env

    def model_args(self) -> list[str]:
        """``-m PATH``, or ``-mu URL`` for a model planned from its remote header (llama.cpp downloads it)."""
        from llamasplit.model.locate import llama_model_args

        return llama_model_args(self.model_path)

    def argv(self, binary: str | None = None) -> list[str]:
        return [binary or self.settings.binary, *self.model_args(), *self.to_llama_args()]

    def to_llama_cpp_python_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``llama_cpp.Llama`` applying this plan."""
        s = self.settings
        n_dev = len(self.devices)
        kwargs: dict[str, Any] = {
            "model_path": self.model_path,
            "n_gpu_layers": -1 if s.n_gpu_layers is None else s.n_gpu_layers,
            "split_mode": {"none": 0, "layer": 1, "row": 2, "tensor": 3}[s.split_mode],
            "main_gpu": s.main_gpu,
            "n_ctx": self.n_ctx,
            "n_batch": s.n_batch,
            "n_ubatch": s.n_ubatch,
            "flash_attn": s.flash_attn != "off",
            "swa_full": s.swa_full,
            "offload_kqv": s.offload_kqv,
            "use_mmap": s.use_mmap,
        }
        if s.tensor_split is not None and n_dev:
            kwargs["tensor_split"] = list(s.tensor_split)
        from llamasplit.memory.kv import cache_type

        if s.type_k != "f16":
            kwargs["type_k"] = int(cache_type(s.type_k))
        if s.type_v != "f16":
            kwargs["type_v"] = int(cache_type(s.type_v))
        if self.draft is not None:
            raise UsageError("llama-cpp-python 0.3.36 loads no draft model (its draft_model is prompt lookup)",
                             remedy="serve the plan with llama-server (llamasplit.serve / llamasplit run)")
        if len(self.loras) > 1:
            raise UsageError("llama-cpp-python 0.3.36 takes one LoRA adapter (lora_path)",
                             remedy="serve the plan with llama-server, or give one adapter")
        if self.loras:
            kwargs["lora_path"] = self.loras[0].path
            kwargs["lora_scale"] = self.loras[0].scale
        return kwargs

    def to_dict(self) -> dict[str, Any]:
        def dev(d: DevicePlan) -> dict[str, Any]:
            out = dataclasses.asdict(d)
            out["layers"] = list(d.layers)
            return out

        return {
            "schema": PLAN_SCHEMA,
            "model": {"path": self.model_path, "name": self.model_name, "arch": self.arch},
            "n_ctx": self.n_ctx,
            "settings": self.settings.to_dict(),
            "devices": [dev(d) for d in self.devices],
            "host": dev(self.host),
            "decode_tok_s": self.decode_tok_s,
            "prefill_tok_s": self.prefill_tok_s,
            "prefill_prompt_tokens": PREFILL_TOKENS,
            "speed_basis": self.speed_basis,
            "device_speed_basis": {d.name: d.speed_basis for d in (*self.devices, self.host) if d.speed_basis},
            "default_split_decode_tok_s": self.default_split_decode_tok_s,
            "argv": self.to_llama_args(),
            "command": self.argv(),
            "env": self.cuda_env(),
            "llama_env": self.to_llama_env(),
            "fleet": self.fleet.to_dict(),
            "notes": list(self.notes),
            "draft": self.draft.to_dict() if self.draft is not None else None,
            "loras": [a.to_dict() for a in self.loras],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        if data.get("schema") != PLAN_SCHEMA:
            raise UsageError(f"not a llamasplit plan (schema {data.get('schema')!r}, expected {PLAN_SCHEMA})")

        def dev(d: dict[str, Any]) -> DevicePlan:
            known = {f.name for f in dataclasses.fields(DevicePlan)}
            kw = {k: v for k, v in d.items() if k in known}
            kw["layers"] = tuple(kw.get("layers", ()))
            return DevicePlan(**kw)

        return cls(
            model_path=data["model"]["path"],
            model_name=data["model"].get("name"),
            arch=data["model"]["arch"],
            settings=LlamaSettings.from_dict(data["settings"]),
            devices=tuple(dev(d) for d in data["devices"]),
            host=dev(data["host"]),
            n_ctx=int(data["n_ctx"]),
            decode_tok_s=data.get("decode_tok_s"),
            default_split_decode_tok_s=data.get("default_split_decode_tok_s"),
            fleet=Fleet.from_dict(data["fleet"]),
            notes=tuple(data.get("notes", ())),
            prefill_tok_s=data.get("prefill_tok_s"),
            speed_basis=data.get("speed_basis"),
            draft=DraftSpec.from_dict(data["draft"]) if data.get("draft") else None,
            loras=tuple(LoraAdapter.from_dict(a) for a in data.get("loras") or ()),
        )

    @classmethod
    def from_json(cls, text: str) -> Plan:
        try:
            return cls.from_dict(json.loads(text))
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise UsageError(f"cannot read the plan: {exc}", remedy="make one with `llamasplit plan MODEL --json`") from exc

    def summary(self) -> str:
        """A human-readable table: devices, memory, layers, speed, and the command."""
        lines = [f"{self.model_name or self.model_path} ({self.arch}), context {self.n_ctx}"]
        side_label = "+".join(w for w, on in (("draft", self.draft is not None), ("lora", bool(self.loras)),
                                                 ("mmproj", self.settings.mmproj is not None)) if on)
        side = bool(side_label)
        header = (f"{'device':<22} {'layers':>9} {'model':>11} {'context':>11} {'compute':>11} {'overhead':>11} "
                  + (f"{side_label:>11} " if side else "") + f"{'total':>11} {'free':>11} {'left':>11}")
        lines.append(header)
        for d in (*self.devices, self.host):
            if d.layers:
                lo, hi = d.layers[0], d.layers[-1]
                layer_txt = f"{lo}-{hi}" if lo != hi else f"{lo}"
            else:
                layer_txt = "-"
            left = d.headroom_bytes
            lines.append(
                f"{d.name:<22} {layer_txt:>9} {format_size(d.model_bytes):>11} {format_size(d.context_bytes):>11} "
                f"{format_size(d.compute_bytes):>11} {format_size(d.overhead_bytes + d.output_bytes):>11} "
                + (f"{format_size(d.companion_bytes):>11} " if side else "")
                + f"{format_size(d.total_bytes):>11} {format_size(d.free_bytes):>11} "
                f"{format_size(left) if left is not None else '?':>11}"
            )
        if self.decode_tok_s:
            speed = f"predicted decode: {self.decode_tok_s:.1f} tok/s"
            if self.prefill_tok_s:
                speed += f", prefill: {self.prefill_tok_s:.0f} tok/s ({PREFILL_TOKENS}-token prompt)"
            bases = ", ".join(f"{d.name} {d.speed_basis}" for d in (*self.devices, self.host) if d.speed_basis)
            speed += f" [{self.speed_basis}: {bases}]"
            if self.default_split_decode_tok_s:
                speed += f"; llama.cpp's default split by free memory: {self.default_split_decode_tok_s:.1f} tok/s"
            lines.append(speed)
        else:
            lines.append("predicted speed: unknown (a device holding layers has no measured or stated speed)")
        for d in self.devices:
            if d.serves_source is not None:
                lines.append(f"{d.name}: {d.description}, sized as {d.serves} ({d.serves_source})")
        if any(d.overhead_bytes for d in self.devices):
            lines.append("overhead: memory outside llama.cpp's breakdown (CUDA context, cuBLAS workspace, pool; "
                         "the host's logits buffer); llamasplit/memory/cuda_rules.py cites each figure")
        lines.extend(self._companion_lines())
        lines.extend(f"note: {n}" for n in self.notes)
        env = " ".join(f"{k}={v}" for k, v in self.cuda_env().items())
        lines.append("command: " + (env + " " if env else "") + " ".join(_quote(a) for a in self.argv()))
        env_form = {**self.cuda_env(), **self.to_llama_env()}
        leftover = "".join(" " + _quote(a) for a in self.env_leftover_args())
        lines.append("as environment: " + " ".join(f"{k}={_quote(v)}" for k, v in env_form.items())
                     + f" {self.settings.binary}{leftover}")
        return "\n".join(lines)

    def _companion_lines(self) -> list[str]:
        """What the draft model and the LoRA adapters cost, device by device."""
        out = []
        for what, parts in (("draft model", ("draft_model", "draft_context", "draft_compute", "draft_output")),
                            ("LoRA", ("lora", "lora_compute")),
                            ("projector", ("mmproj_model", "mmproj_compute", "mmproj_compute_estimate",
                                           "mmproj_compute_growth")),
                            ("MTP context", ("mtp_context", "mtp_compute", "mtp_output"))):
            cells = []
            for d in (*self.devices, self.host):
                got = {k: v for k, v in (d.companion_parts or {}).items() if k in parts and v}
                if got:
                    cells.append(f"{d.name} " + " + ".join(f"{format_size(v)} {k.split('_', 1)[-1] if '_' in k else 'weights'}"
                                                          for k, v in got.items()))
            if cells:
                out.append(f"{what}: " + "; ".join(cells))
        return out


_ENV_OF_FLAG: dict[str, tuple[str, str | None]] = {
    # flag -> (env var, fixed value for a switch, or None when the flag takes the next argument)
    "-ngl": ("LLAMA_ARG_N_GPU_LAYERS", None), "-sm": ("LLAMA_ARG_SPLIT_MODE", None),
    "-ts": ("LLAMA_ARG_TENSOR_SPLIT", None), "-mg": ("LLAMA_ARG_MAIN_GPU", None),
    "-ot": ("LLAMA_ARG_OVERRIDE_TENSOR", None), "--cpu-moe": ("LLAMA_ARG_CPU_MOE", "1"),
    "--n-cpu-moe": ("LLAMA_ARG_N_CPU_MOE", None), "-c": ("LLAMA_ARG_CTX_SIZE", None),
    "-b": ("LLAMA_ARG_BATCH", None), "-ub": ("LLAMA_ARG_UBATCH", None), "-np": ("LLAMA_ARG_N_PARALLEL", None),
    "-kvu": ("LLAMA_ARG_KV_UNIFIED", "1"), "--no-kv-unified": ("LLAMA_ARG_KV_UNIFIED", "0"),
    "-ctk": ("LLAMA_ARG_CACHE_TYPE_K", None), "-ctv": ("LLAMA_ARG_CACHE_TYPE_V", None),
    "-fa": ("LLAMA_ARG_FLASH_ATTN", None), "--swa-full": ("LLAMA_ARG_SWA_FULL", "1"),
    "-nkvo": ("LLAMA_ARG_KV_OFFLOAD", "0"), "-lm": ("LLAMA_ARG_LOAD_MODE", None), "--rpc": ("LLAMA_ARG_RPC", None),
    "--mmproj": ("LLAMA_ARG_MMPROJ", None), "-mmu": ("LLAMA_ARG_MMPROJ_URL", None), "--no-mmproj-offload": ("LLAMA_ARG_MMPROJ_OFFLOAD", "0"),
    # the draft model's (common/arg.cpp set_env of each --spec-draft-* option)
    "-md": ("LLAMA_ARG_SPEC_DRAFT_MODEL", None), "-ngld": ("LLAMA_ARG_N_GPU_LAYERS_DRAFT", None),
    "-ctkd": ("LLAMA_ARG_SPEC_DRAFT_CACHE_TYPE_K", None), "-ctvd": ("LLAMA_ARG_SPEC_DRAFT_CACHE_TYPE_V", None),
    "-cmoed": ("LLAMA_ARG_SPEC_DRAFT_CPU_MOE", "1"), "-ncmoed": ("LLAMA_ARG_SPEC_DRAFT_N_CPU_MOE", None),
    "--spec-draft-n-max": ("LLAMA_ARG_SPEC_DRAFT_N_MAX", None), "--spec-type": ("LLAMA_ARG_SPEC_TYPE", None),
}
_NO_ENV_FLAGS: dict[str, int] = {"--lora": 1, "--lora-scaled": 1, "-devd": 1, "-otd": 1}
"""Flags without an environment variable (common/arg.cpp: no ``set_env``), by the values they take."""


def _quote(arg: str) -> str:
    import shlex

    return shlex.quote(arg)


# ---------------------------------------------------------------------------------------------
# speed model


def decode_seconds_per_token(model: ModelProfile, fleet: Fleet, devices: Sequence[Device], est: Estimate) -> float | None:
    """Decode time per token of the layer split ``est`` over ``devices`` by the one speed model
    (``llamasplit.speed``), the KV cache read at half the context; ``None`` when a device that
    holds layers has an unknown speed."""
    sp = plan_speed(model, fleet, devices, est)
    return 1.0 / sp.decode_tok_s if sp.decode_tok_s else None


def plan_speed(model: ModelProfile, fleet: Fleet, devices: Sequence[Device], est: Estimate, *,
               prompt_tokens: int = PREFILL_TOKENS, n_ubatch: int = 512) -> SpeedEstimate:
    """Decode and prefill speed of a layer split, with each device's basis."""
    return layer_split_speed(model, fleet, devices, est, prompt_tokens=prompt_tokens, n_ubatch=n_ubatch)


def _fleet_and_model_notes(model: ModelProfile, fleet: Fleet) -> list[str]:
    """What every plan says about simulated hardware and an arch whose graph is not replayed."""
    notes = []
    if fleet.simulated:
        notes.append(f"simulated fleet ({fleet.source}): numbers are for that hardware, not this machine")
    if not replayable(model):
        notes.append(f"compute estimated, not replayed: llamasplit does not follow {model.arch}'s graph "
                     "(compute buffers from a closed-form guide, mostly a little above llama.cpp's)")
    return notes


# ---------------------------------------------------------------------------------------------
# the search


def _budget(d: Device, options: PlanOptions) -> int | None:
    margin = dict(options.margin_overrides).get(d.name, options.margin_bytes)
    base = d.free_bytes if d.free_bytes is not None else d.total_bytes
    return None if base is None else base - margin


def _fits(est: Estimate, budgets: Sequence[int | None], upto: int | None = None) -> list[int]:
    """Shortfall in bytes per device (0 = fits), for devices ``[0, upto)``."""
    out = []
    for d, b in zip(est.devices[: upto if upto is not None else len(est.devices)], budgets):
        out.append(0 if b is None else max(0, d.total_bytes - b))
    return out


def _host_short(est: Estimate, fleet: Fleet) -> int:
    avail = fleet.host.ram_available_bytes
    if avail is None:
        return 0
    need = (est.host.model_bytes + est.host.extra_bytes + est.host.context_bytes + est.host.compute_bytes
            + est.host.output_bytes + est.host.companion_bytes)
    return max(0, need - avail)


def plan(model: ModelProfile, fleet: Fleet, options: PlanOptions | None = None) -> Plan:
    """Choose devices, layers per device, -ngl and context; return the Plan (pure)."""
    options = options or PlanOptions()
    s = options.settings
    hp = model.hparams
    notes: list[str] = []
    if s.split_mode == "row":
        from llamasplit.memory.tensor_split import refuse_row_mode

        refuse_row_mode(fleet.devices)
    if options.companions:
        options, side_notes = _check_companions(model, options)
        s = options.settings
        notes += side_notes
    if mtp.enabled(s.spec_type):
        # draft-mtp on the model's own NextN blocks, or on the MTP sidecar given as -md (memory.mtp)
        mtp.check(options.companions.draft.model if options.companions.draft is not None else model)
        if s.split_mode == "tensor":
            raise UsageError("--spec-type draft-mtp is not planned under -sm tensor", remedy="use -sm layer")
        notes.append("speed: predicted without speculative decoding (its gain depends on how often the MTP head's "
                     "drafts are accepted)")
        from llamasplit.memory.graph.mtp import MTP_BUILDERS

        mtp_arch = (options.companions.draft.model if options.companions.draft is not None else model).arch
        if mtp_arch not in MTP_BUILDERS:
            notes.append(f"MTP context's compute estimated (as the main context's), not replayed for {mtp_arch}")
    if s.split_mode == "tensor":
        return _tensor_plan(model, fleet, options)

    # device order: llama.cpp lists RPC devices first; among local GPUs we choose the order
    # (CUDA_VISIBLE_DEVICES) fastest LAST: llama.cpp gives the last device the output layer and
    # the last blocks, and the planner fills devices from the back, fastest first
    devices = list(fleet.devices)
    if s.split_mode == "none" and devices:
        # -sm none: one device, the main GPU; the plan pins it as CUDA0, so -mg becomes 0
        if not 0 <= s.main_gpu < len(devices):
            raise UsageError(f"--main-gpu {s.main_gpu} is not a device index (0..{len(devices) - 1})")
        devices = [devices[s.main_gpu]]
        s = s.replace(main_gpu=0)
        options = dataclasses.replace(options, settings=s)
    if "tensor_split" not in options.fixed:
        # slowest first (filled last), by the speed model's effective bandwidth; RPC workers keep
        # their place before the local GPUs, but the plan orders the --rpc endpoints by speed too
        devices = _by_speed([d for d in devices if d.backend.upper() == "RPC"]) + _by_speed(
            [d for d in devices if d.backend.upper() != "RPC"])
    budgets = [_budget(d, options) for d in devices]

    n_ctx_train = hp.n_ctx_train or 4096
    if "n_ctx" in options.fixed and s.n_ctx:
        ctx_candidates = [s.n_ctx]
        if hp.n_ctx_train and s.n_ctx > hp.n_ctx_train:
            # llama.cpp warns too (llama-context.cpp: "n_ctx_seq > n_ctx_train -- possible training context overflow")
            notes.append(f"context {s.n_ctx} is longer than the {hp.n_ctx_train} tokens the model was trained on; "
                         "answers past that usually degrade")
    else:
        ctx_candidates = []
        c = kv.pad(n_ctx_train, kv.KV_PAD)
        while c >= MIN_AUTO_CTX:
            ctx_candidates.append(c)
            c = kv.pad(c // 2, kv.KV_PAD)
        if not ctx_candidates:
            ctx_candidates = [kv.pad(n_ctx_train, kv.KV_PAD)]
        if n_ctx_train < MIN_AUTO_CTX:
            ctx_candidates = [kv.pad(n_ctx_train, kv.KV_PAD)]

    best: _Placement | None = None
    last_failure: _Placement | None = None
    for n_ctx in ctx_candidates:
        trial = s.replace(n_ctx=n_ctx)
        result = _place(model, fleet, devices, budgets, trial, options)
        if result is not None:
            if _host_short(result.est, fleet) == 0:
                best = result
                break
            last_failure = result
        else:
            every = tuple(range(len(devices)))
            last_failure = _Placement(
                estimate_with_companions(model, devices, trial.replace(tensor_split=trial.tensor_split or _even(devices)),
                                         options.companions), trial, every
            )
    if best is None:
        assert last_failure is not None
        est = last_failure.est
        failed_budgets = [budgets[i] for i in last_failure.kept]
        short = {d.name: max(0, d.total_bytes - b) for d, b in zip(est.devices, failed_budgets) if b is not None}
        host_short = _host_short(est, fleet)
        if host_short:
            short[HOST] = host_short
        suggestions = _suggestions(model, s)
        raise NoFeasiblePlan(
            f"{model.name or model.arch} does not fit: short by "
            + ", ".join(f"{k} {format_size(v)}" for k, v in short.items() if v)
            + f" at context {est.n_ctx}",
            shortfall_bytes=short,
            suggestions=suggestions,
            remedy="; ".join(suggestions[:2]),
        )
    est, settings = best.est, best.settings
    devices = [devices[i] for i in best.kept]
    budgets = [budgets[i] for i in best.kept]
    cpu = host_cpu(fleet.host)
    if cpu is not None:
        # the host's weights llama.cpp repacks for this CPU (AMX / CPU_REPACK buffers, memory.repack)
        est = with_host_extras(model, devices, settings, est, cpu)
    if settings.tensor_split is not None and len(devices) == 1 and "tensor_split" not in options.fixed:
        settings = settings.replace(tensor_split=None)  # one device: nothing to split
    speed = plan_speed(model, fleet, devices, est, n_ubatch=settings.n_ubatch)
    if speed.unknown:
        notes.append("speed not predicted: " + ", ".join(speed.unknown) + " has no measured or stated speed "
                     "(measure it with `llamasplit bench --rpc ... --save inventory.json`, then plan --inventory)")
    default = None
    if ("tensor_split" not in options.fixed and settings.split_mode == "layer" and len(fleet.devices) > 1
            and all(d.free_bytes is not None for d in fleet.devices)):
        # what llama.cpp would do unguided: every device, layers in proportion to free memory
        default_settings = settings.replace(tensor_split=None)
        # speed only: weights read per token do not depend on compute buffers, so the quick estimate does
        default_est = estimate(model, list(fleet.devices), default_settings, fast=True)
        default = plan_speed(model, fleet, list(fleet.devices), default_est, n_ubatch=settings.n_ubatch).decode_tok_s
        default_budgets = [_budget(d, options) for d in fleet.devices]
        if any(_fits(default_est, default_budgets)):
            notes.append("llama.cpp's default split (by free memory) would likely overflow these budgets")
    if model.quantized_from and model.source_path:
        notes.append(
            f"what-if: {model.file_type_name} weights computed from the {model.quantized_from} file; make it with "
            f"llama-quantize --allow-requantize {model.source_path} {model.path} {model.file_type_name}"
        )
    notes += _fleet_and_model_notes(model, fleet)
    bases = {n: b for n, b in zip(speed.devices, speed.basis) if b != IDLE}
    speed_order = [d.name for d in devices]  # the names the speed model saw, before renaming
    fleet_order = list(devices)
    devices = _renamed(devices)
    draft = options.companions.draft.spec if options.companions.draft is not None else None
    if draft is not None and draft.devices:
        # -devd in the launched process's names: CUDA devices as CUDA_VISIBLE_DEVICES renumbers them
        from llamasplit.memory.companions import llama_device_names

        renamed: dict[str, str] = {}
        for old_name, old_llama, new_llama in zip(speed_order, llama_device_names(fleet_order), llama_device_names(devices)):
            renamed[old_name] = renamed[old_llama] = new_llama
        draft = dataclasses.replace(draft, devices=tuple(renamed.get(n, n) for n in draft.devices))
    return Plan(
        model_path=model.path,
        model_name=model.name,
        arch=model.arch,
        settings=settings,
        devices=tuple(_device_plan(d, e, b, bases.get(o)) for d, o, e, b in zip(devices, speed_order, est.devices, budgets)),
        host=_host_plan(est, fleet, bases.get(HOST_NAME)),
        n_ctx=est.n_ctx,
        decode_tok_s=speed.decode_tok_s,
        default_split_decode_tok_s=default,
        fleet=dataclasses.replace(fleet, devices=tuple(devices)),
        notes=tuple(notes),
        prefill_tok_s=speed.prefill_tok_s,
        speed_basis=speed.speed_basis if speed.known else None,
        draft=draft,
        loras=options.companions.loras,
    )


def _check_companions(model: ModelProfile, options: PlanOptions) -> tuple[PlanOptions, list[str]]:
    """llama.cpp's checks of a draft model and LoRA adapters against the model, and the
    ``--spec-type`` a draft needs to be used; one UsageError line for what llama.cpp refuses."""
    from llamasplit.memory.companions import DRAFT_SPEC_TYPE, check_cache_types, check_lora, vocab_mismatch
    from llamasplit.untrusted import printable

    notes: list[str] = []
    s = options.settings
    for adapter in options.companions.loras:
        check_lora(adapter, model)
    if options.companions.mmproj is not None:
        from llamasplit.memory.mmproj import check_projector

        notes += check_projector(options.companions.mmproj, model)
    d = options.companions.draft
    if d is None:
        return options, notes
    if s.split_mode == "tensor":
        raise UsageError("a draft model is not planned under -sm tensor", remedy="use -sm layer with -md")
    if s.spec_type is None:
        # -md alone loads the draft and drafts nothing ("no implementations specified for
        # speculative decoding", common/speculative.cpp common_speculative_init)
        s = s.replace(spec_type=DRAFT_SPEC_TYPE)
    if d.spec.n_max != 3:
        s = s.replace(spec_draft_n_max=d.spec.n_max)  # sizes the main context's outputs (server_output_limits)
    options = dataclasses.replace(options, settings=s)
    check_cache_types(d.model, s.replace(type_k=d.spec.type_k, type_v=d.spec.type_v), f"draft model {printable(d.model.path, limit=120)}")
    why = vocab_mismatch(model, d.model)
    if why is not None:
        shown = printable(d.model.path, limit=120)
        if DRAFT_SPEC_TYPE in s.spec_type.split(","):
            raise UsageError(f"draft model {shown} cannot draft for {model.name or model.arch}: {why} (llama-server "
                             "would load it and draft nothing: common/speculative.cpp common_speculative_are_compatible)",
                             remedy="use a draft from the same model family (same tokenizer)")
        notes.append(f"draft model {shown}: {why}; llama.cpp loads it but cannot draft with it")
    notes.append("speed: predicted without speculative decoding (its gain depends on how often the draft is accepted)")
    return options, notes


def _effective_bandwidth(d: Device) -> float:
    sp = device_speed(d)
    return sp.bandwidth_bytes_s if sp is not None else 0.0


def _by_speed(devices: Sequence[Device]) -> list[Device]:
    """Devices slowest first (unknown speed first, in the given order). RPC devices move with
    their endpoint: one worker's devices keep the order the worker lists them in."""
    groups: dict[str, list[Device]] = {}
    for d in devices:
        key = d.id.split("#")[0] if d.backend.upper() == "RPC" else d.id
        groups.setdefault(key, []).append(d)
    ordered = sorted(groups.values(), key=lambda g: max(_effective_bandwidth(d) for d in g))
    return [d for g in ordered for d in g]


def auto_plan(model: ModelProfile, fleet: Fleet, options: PlanOptions) -> Plan:
    """``-sm auto``: the layer plan and, where llama.cpp runs it, the tensor plan; the faster by the
    speed model, the layer plan when either speed is unknown or tensor split does not apply."""
    layer = plan(model, fleet, dataclasses.replace(options, settings=options.settings.replace(split_mode="layer")))
    if len(fleet.devices) < 2:
        return layer
    try:
        tensor = plan(model, fleet, dataclasses.replace(options, settings=options.settings.replace(split_mode="tensor")))
    except (NoFeasiblePlan, UsageError) as err:
        return dataclasses.replace(layer, notes=(*layer.notes, f"-sm auto: layer split; no tensor split: {err.message}"))
    if tensor.decode_tok_s and layer.decode_tok_s and tensor.decode_tok_s > layer.decode_tok_s:
        why = f"tensor split predicted {tensor.decode_tok_s:.1f} tok/s against layer split's {layer.decode_tok_s:.1f}"
        return dataclasses.replace(tensor, notes=(*tensor.notes, f"-sm auto: {why}"))
    if tensor.decode_tok_s and layer.decode_tok_s:
        why = f"layer split predicted {layer.decode_tok_s:.1f} tok/s against tensor split's {tensor.decode_tok_s:.1f}"
    else:
        why = "layer split (the speeds cannot be compared without measured or stated device speeds)"
    return dataclasses.replace(layer, notes=(*layer.notes, f"-sm auto: {why}"))


def _tensor_plan(model: ModelProfile, fleet: Fleet, options: PlanOptions) -> Plan:
    """``-sm tensor``: every tensor split over all the fleet's devices (llama.cpp's Meta device),
    the longest context that fits (or the one fixed), and its speed when it can be predicted."""
    from llamasplit.speed.comm import allreduce_algorithm
    from llamasplit.memory.tensor_split import check_tensor_mode, estimate_tensor
    from llamasplit.speed.links import group_link
    from llamasplit.speed.model import tensor_split_speed

    s = options.settings
    if s.flash_attn == "auto":
        s = s.replace(flash_attn="on")  # what llama.cpp's auto resolves to under -sm tensor
    devices = list(fleet.devices)
    check = check_tensor_mode(model, devices, s)
    if not check.ok:
        raise UsageError("-sm tensor: " + "; ".join(check.reasons), remedy="use -sm layer, or -sm auto to compare")
    budgets = [_budget(d, options) for d in devices]
    if "n_ctx" in options.fixed and s.n_ctx:
        ctxs = [s.n_ctx]
    else:
        n_ctx_train = model.hparams.n_ctx_train or 4096
        ctxs, c = [], kv.pad(n_ctx_train, kv.KV_PAD)
        while c >= MIN_AUTO_CTX:
            ctxs.append(c)
            c = kv.pad(c // 2, kv.KV_PAD)
        ctxs = ctxs or [kv.pad(n_ctx_train, kv.KV_PAD)]
    test = None
    for n_ctx in ctxs:
        trial = s.replace(n_ctx=n_ctx)
        test = _with_projector(estimate_tensor(model, devices, trial), devices, trial, options)
        short = {e.name: max(0, e.total_bytes - b) for e, b in zip(test.devices, budgets) if b is not None}
        if not any(short.values()):
            s = trial
            break
    else:
        assert test is not None
        raise NoFeasiblePlan(
            f"{model.name or model.arch} does not fit under -sm tensor: short by "
            + ", ".join(f"{k} {format_size(v)}" for k, v in short.items() if v) + f" at context {test.n_ctx}",
            shortfall_bytes=short, suggestions=_suggestions(model, s), remedy="try -sm layer, or a shorter context",
        )
    algo, _ = allreduce_algorithm(devices)
    speed = tensor_split_speed(model, fleet, devices, test, algo, group_link(fleet, devices), prompt_tokens=PREFILL_TOKENS,
                               n_ubatch=s.n_ubatch)
    notes = list(check.warnings)
    if speed.unknown:
        notes.append("speed not predicted: " + ", ".join(speed.unknown) + " has no measured or stated speed "
                     "(measure it with `llamasplit bench --rpc ... --save inventory.json`, then plan --inventory)")
    notes += _fleet_and_model_notes(model, fleet)
    bases = {n: b for n, b in zip(speed.devices, speed.basis) if b != IDLE}
    renamed = _renamed(devices)
    return Plan(
        model_path=model.path, model_name=model.name, arch=model.arch, settings=s,
        devices=tuple(_device_plan(d, e, b, bases.get(o.name)) for d, o, e, b in zip(renamed, devices, test.devices, budgets)),
        host=_host_plan(Estimate(devices=test.devices, host=test.host, n_ctx=test.n_ctx, layer_device=(), flash_attn=True),
                        fleet),
        n_ctx=test.n_ctx, decode_tok_s=speed.decode_tok_s, default_split_decode_tok_s=None,
        fleet=dataclasses.replace(fleet, devices=tuple(renamed)), notes=tuple(notes),
        prefill_tok_s=speed.prefill_tok_s, speed_basis=speed.speed_basis if speed.known else None,
    )


def _with_projector(est, devices: Sequence[Device], s: LlamaSettings, options: PlanOptions):
    """``est`` (a tensor-mode estimate) with the projector's bytes on its device: the projector is
    no part of the Meta device (clip_ctx picks the first GPU-type device, memory.mmproj)."""
    if options.companions.mmproj is None:
        return est
    from llamasplit.memory.companions import CompanionEstimate, with_companions
    from llamasplit.memory.mmproj import estimate_projector

    pe = estimate_projector(options.companions.mmproj, devices, offload=s.mmproj_offload, flash_attn=s.flash_attn)
    name = HOST if pe.device_index is None else est.devices[pe.device_index].name
    return with_companions(est, CompanionEstimate(mmproj=pe, mmproj_device_name=name))


def _renamed(devices: Sequence[Device]) -> list[Device]:
    """Name CUDA devices as llama.cpp will under the plan's CUDA_VISIBLE_DEVICES: CUDA0.. in plan order."""
    out, k = [], 0
    for d in devices:
        if d.backend.upper() == "CUDA":
            d = dataclasses.replace(d, name=f"CUDA{k}")
            k += 1
        out.append(d)
    return out


def _even(devices: Sequence[Device]) -> tuple[float, ...]:
    return tuple(1.0 for _ in devices)


@dataclass(frozen=True)
class _Placement:
    """A candidate: its exact estimate and settings, over ``devices[i] for i in kept``."""

    est: Estimate
    settings: LlamaSettings
    kept: tuple[int, ...]


def _place(
    model: ModelProfile, fleet: Fleet, devices: Sequence[Device], budgets: Sequence[int | None], s: LlamaSettings,
    options: PlanOptions,
) -> _Placement | None:
    """Layers per device for one context; ``None`` when even the CPU fallback does not fit the GPUs."""
    hp = model.hparams
    n_slots = hp.n_layer + 1  # repeating layers + the output layer
    if not devices:
        return _Placement(estimate_with_companions(model, devices, s.replace(n_gpu_layers=0), options.companions),
                          s.replace(n_gpu_layers=0), ())
    every = tuple(range(len(devices)))
    if "tensor_split" in options.fixed or ("n_gpu_layers" in options.fixed and s.tensor_split is not None):
        est = estimate_with_companions(model, devices, s, options.companions)
        return _Placement(est, s, every) if not any(_fits(est, budgets)) else None

    max_ngl = s.n_gpu_layers if "n_gpu_layers" in options.fixed and s.n_gpu_layers is not None else n_slots
    max_ngl = min(max_ngl, n_slots)
    side = options.companions
    layered = _fill(model, devices, budgets, s, max_ngl, companions=side)
    if (
        layered is not None and layered.settings.n_gpu_layers is None
        or not hp.n_expert
        or options.fixed & {"n_gpu_layers", "overrides", "n_cpu_moe", "cpu_moe"}
        or s.overrides
    ):
        return layered
    # MoE that does not fit whole: keep every layer's attention, norms, router and shared experts on
    # the GPUs and send the routed experts of the first k layers to the CPU (--n-cpu-moe k), with
    # the smallest k that fits; take it when it decodes faster than offloading whole layers
    lo, hi, moe = 1, hp.n_layer, None
    while lo <= hi:
        k = (lo + hi) // 2
        trial = _fill(model, devices, budgets, s.replace(n_cpu_moe=k), n_slots, verify=False, companions=side)
        if trial is not None and trial.settings.n_gpu_layers is None:
            moe, hi = trial, k - 1
        else:
            lo = k + 1
    if moe is not None:
        # the search sized compute buffers quickly; confirm exactly, sending one more layer's
        # experts to the CPU while the exact check still has to take whole layers off the GPUs
        k = moe.settings.n_cpu_moe
        while k <= hp.n_layer:
            moe = _fill(model, devices, budgets, s.replace(n_cpu_moe=k), n_slots, companions=side)
            if moe is None or moe.settings.n_gpu_layers is None:
                break
            k += 1
    if moe is None:
        return layered
    if layered is None or _speed(model, fleet, devices, moe) >= _speed(model, fleet, devices, layered):
        return moe
    return layered


def _speed(model: ModelProfile, fleet: Fleet, devices: Sequence[Device], p: _Placement) -> float:
    sec = decode_seconds_per_token(model, fleet, [devices[i] for i in p.kept], p.est)
    return 0.0 if not sec else 1.0 / sec


def _fill(
    model: ModelProfile, devices: Sequence[Device], budgets: Sequence[int | None], s: LlamaSettings, max_ngl: int,
    *, verify: bool = True, companions: Companions | None = None,
) -> _Placement | None:
    """Slots per device for fixed settings, back to front; ``None`` when no slot fits anywhere.

    With ``verify`` the answer is checked with the exact estimator on the devices it keeps;
    without, everything is the quick estimate on all ``devices``."""
    # Fill from the back. With -ngl N llama.cpp offloads the LAST N slots and gives each device a
    # contiguous window ending where the next device's starts, so the last device's window (the
    # output layer and the last blocks) does not move when earlier devices are added: every
    # choice made back to front is final. Each device takes the most slots that keep it in budget.
    counts = [0] * len(devices)
    remaining = max_ngl
    for i in reversed(range(len(devices))):
        lo, hi = 0, remaining
        while lo < hi:
            mid = (lo + hi + 1) // 2
            trial = counts[:i] + [mid] + counts[i + 1 :]
            est = _estimate_counts(model, devices, s, trial, fast=True, companions=companions)
            if _fits(est, budgets)[i] == 0:
                lo = mid
            else:
                hi = mid - 1
        counts[i] = lo
        remaining -= lo
        if remaining == 0:
            break
    ngl = sum(counts)
    if ngl == 0 and max_ngl > 0:
        return None
    # everything offloaded switches llama.cpp to pipeline parallelism, whose compute buffers are
    # larger: take a slot from whichever device then overflows until all fit. The search above
    # sized compute buffers with the fast heuristic; the answer is then checked with the exact
    # replay of llama.cpp's reservation, and trimmed the same way if it is still over.
    # A device left without a slot is dropped from the plan (fewer devices, and not in
    # CUDA_VISIBLE_DEVICES), so the exact check runs on the devices that stay.
    kept = list(range(len(devices)))
    # a device the draft model is pinned to (-devd) stays in the plan without layers of the model
    draft = companions.draft if companions else None
    pinned = set(draft_devices(devices, draft.spec)) if draft is not None and draft.spec.devices else set()
    for fast in (True, False) if verify else (True,):
        if not fast:
            kept = [i for i in kept if counts[i] > 0 or i in pinned]
            counts = [counts[i] for i in kept]
        devs, buds = [devices[i] for i in kept], [budgets[i] for i in kept]
        est = _estimate_counts(model, devs, s, counts, fast=fast, companions=companions)
        while ngl > 0 and any(short := _fits(est, buds)):
            j = max(range(len(devs)), key=lambda k: short[k])
            counts[j] -= 1
            ngl -= 1
            est = _estimate_counts(model, devs, s, counts, fast=fast, companions=companions)
    if ngl == 0:
        return None
    return _Placement(est, _counts_settings(model, s, counts), tuple(kept))


def _counts_settings(model: ModelProfile, s: LlamaSettings, counts: list[int]) -> LlamaSettings:
    """-ngl and an integer -ts that llama.cpp turns back into exactly these per-device slot counts."""
    ngl = sum(counts)
    n_slots = model.hparams.n_layer + 1
    if ngl == 0:
        return s.replace(n_gpu_layers=0, tensor_split=tuple(1.0 for _ in counts))
    split = tuple(float(c) for c in counts) if sum(1 for c in counts if c) > 1 or len(counts) > 1 else None
    return s.replace(n_gpu_layers=ngl if ngl < n_slots else None, tensor_split=split)


def _estimate_counts(
    model: ModelProfile, devices: Sequence[Device], s: LlamaSettings, counts: list[int], *, fast: bool = False,
    companions: Companions | None = None,
) -> Estimate:
    """The estimate of these per-device slot counts, with what a draft model and LoRA adapters add
    on each device (``memory.companions``): the fit check sees both models."""
    return estimate_with_companions(model, devices, _counts_settings(model, s, counts), companions, fast=fast)


def _device_plan(d: Device, e, budget: int | None, basis: str | None = None) -> DevicePlan:
    return DevicePlan(
        name=d.name, description=d.description, model_bytes=e.model_bytes, context_bytes=e.context_bytes,
        compute_bytes=e.compute_bytes, overhead_bytes=e.overhead_bytes, output_bytes=e.output_bytes,
        total_bytes=e.total_bytes, free_bytes=d.free_bytes, budget_bytes=budget, layers=tuple(e.layers),
        bandwidth_gb_s=d.bandwidth_gb_s, device_id=d.id, serves=d.serves, serves_source=d.serves_source,
        overhead_parts=dict(e.overhead_parts) or None, speed_basis=basis if e.read_bytes else None,
        companion_parts=dict(e.companion_parts) or None,
    )


def _host_plan(est: Estimate, fleet: Fleet, basis: str | None = None) -> DevicePlan:
    h = est.host
    return DevicePlan(
        # model: the mapped weights plus the repacked ones (AMX / CPU_REPACK), as llama.cpp allocates them
        name=HOST, description=fleet.host.name, model_bytes=h.model_bytes + h.extra_bytes, context_bytes=h.context_bytes,
        compute_bytes=h.compute_bytes, overhead_bytes=0, output_bytes=h.output_bytes, total_bytes=h.total_bytes,
        free_bytes=fleet.host.ram_available_bytes, budget_bytes=fleet.host.ram_available_bytes, layers=tuple(h.layers),
        bandwidth_gb_s=fleet.host.ram_bandwidth_gb_s, speed_basis=basis if h.read_bytes else None,
        companion_parts=dict(h.companion_parts) or None,
    )


@dataclass(frozen=True)
class Alternative:
    """One way to make a model fit, with what it costs."""

    what: str
    plan: Plan

    def line(self) -> str:
        speed = f", {self.plan.decode_tok_s:.1f} tok/s" if self.plan.decode_tok_s else ""
        env = " ".join(f"{k}={v}" for k, v in self.plan.cuda_env().items())
        cmd = (env + " " if env else "") + " ".join(_quote(a) for a in self.plan.argv())
        return f"{self.what}: fits at context {self.plan.n_ctx}{speed}: {cmd}"


ALTERNATIVE_QUANTS = ("Q4_K_M", "Q3_K_M", "IQ3_XS", "Q2_K")


def alternatives(model: ModelProfile, fleet: Fleet, options: PlanOptions) -> list[Alternative]:
    """What would fit instead: a q8_0 cache, a shorter context, a smaller quantization (computed
    from this file's header by llama.cpp's recipe, nothing downloaded). Each is a full plan."""
    out: list[Alternative] = []
    s = options.settings

    def attempt(what: str, m: ModelProfile, opts: PlanOptions) -> bool:
        try:
            out.append(Alternative(what, plan(m, fleet, opts)))
            return True
        except (NoFeasiblePlan, UsageError):
            return False

    if s.type_k == "f16" and s.type_v == "f16":
        attempt("q8_0 KV cache", model, dataclasses.replace(
            options, settings=s.replace(type_k="q8_0", type_v="q8_0", flash_attn="on")))
    if "n_ctx" in options.fixed and s.n_ctx:
        ctx = kv.pad(s.n_ctx // 2, kv.KV_PAD)
        if model.hparams.n_ctx_train and s.n_ctx > model.hparams.n_ctx_train:
            ctx = kv.pad(model.hparams.n_ctx_train, kv.KV_PAD)  # never suggest more than the model was trained on
        while ctx >= 512:
            if attempt(f"context {ctx}", model, dataclasses.replace(options, settings=s.replace(n_ctx=ctx))):
                break
            ctx = kv.pad(ctx // 2, kv.KV_PAD)
    current = model.file_type_name
    sizes = {}
    for q in ALTERNATIVE_QUANTS:
        try:
            smaller = model.requantized(q)
        except (UsageError, ModelReadError):
            continue
        sizes[q] = smaller.tensor_bytes
        if q == current or smaller.tensor_bytes >= model.tensor_bytes:
            continue
        if attempt(f"{q} ({format_size(smaller.tensor_bytes)}, llama-quantize --allow-requantize)", smaller, options):
            break
    return out


def _suggestions(model: ModelProfile, s: LlamaSettings) -> list[str]:
    out = []
    if s.type_k == "f16":
        out.append("try a q8_0 KV cache (-ctk q8_0 -ctv q8_0 -fa on)")
    out.append("try a shorter context (-c 8192)")
    out.append("keep some layers on the CPU (lower -ngl) if the host has RAM to spare")
    out.append("try a smaller quantization (see `llamasplit inspect MODEL` for the what-if sizes)")
    return out
