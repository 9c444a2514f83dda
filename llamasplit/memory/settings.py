"""The llama.cpp settings an estimate or a plan is for: one frozen value, mapped to and from flags."""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any

from llamasplit.errors import UsageError

BINARIES = ("llama-server", "llama-completion", "llama-cli", "llama-cpp-python", "llama-fit-params")

SPEC_TYPES = ("none", "draft-simple", "draft-mtp", "draft-eagle3", "draft-dflash", "draft-dspark", "ngram-simple",
              "ngram-map-k", "ngram-map-k4v", "ngram-mod", "ngram-cache")
"""The names common/speculative.cpp's ``common_speculative_type_from_name`` accepts for --spec-type."""

SPEC_BINARIES = ("llama-server", "llama-cli")
"""The binaries that take --spec-type (common/arg.cpp: ``set_examples({LLAMA_EXAMPLE_SPECULATIVE,
LLAMA_EXAMPLE_SERVER, LLAMA_EXAMPLE_CLI})``; llama-completion and llama-fit-params reject it)."""

MMPROJ_BINARIES = ("llama-server", "llama-cli")
"""The binaries that take --mmproj (common/arg.cpp ``mmproj_examples``: server, cli, mtmd, tts)."""

EXPERT_PATTERN = r"\.ffn_(up|down|gate|gate_up)_(ch|)exps"
"""The tensors --cpu-moe sends to the CPU (common/common.h LLM_FFN_EXPS_REGEX)."""


def with_moe_overrides(overrides: tuple[tuple[str, str], ...], cpu_moe: bool, n_cpu_moe: int) -> tuple[tuple[str, str], ...]:
    r"""``-ot`` pairs plus what ``--cpu-moe`` / ``--n-cpu-moe`` append after them (common/arg.cpp; the
    draft's ``-cmoed`` / ``-ncmoed`` the same way).

    >>> [(p[:8], b) for p, b in with_moe_overrides((("a", "CUDA0"),), True, 2)]
    [('a', 'CUDA0'), ('\\.ffn_(u', 'CPU'), ('blk\\.0\\.', 'CPU'), ('blk\\.1\\.', 'CPU')]
    """
    extra: list[tuple[str, str]] = []
    if cpu_moe:
        extra.append((EXPERT_PATTERN, "CPU"))
    for il in range(n_cpu_moe):
        extra.append((rf"blk\.{il}{EXPERT_PATTERN}", "CPU"))
    return overrides + tuple(extra)


@dataclass(frozen=True)
class LlamaSettings:
    """llama.cpp's memory-relevant flags. ``None`` means llama.cpp's default for the binary."""

    n_gpu_layers: int | None = None
    """-ngl; ``None`` = all layers (llama.cpp's default is -1, everything)."""
    split_mode: str = "layer"
    """-sm none|layer|row|tensor."""
    tensor_split: tuple[float, ...] | None = None
    """-ts; ``None`` = by each device's free memory."""
    main_gpu: int = 0
    overrides: tuple[tuple[str, str], ...] = ()
    """-ot pattern=BUFFER pairs, in order (first match wins); BUFFER is CPU or a device name."""
    cpu_moe: bool = False
    n_cpu_moe: int = 0
    n_ctx: int | None = None
    """-c; ``None``/0 = the model's training context."""
    n_batch: int = 2048
    n_ubatch: int = 512
    n_parallel: int | None = None
    """-np; ``None`` = the binary's default (llama-server: 4 slots, unified cache)."""
    kv_unified: bool | None = None
    type_k: str = "f16"
    type_v: str = "f16"
    flash_attn: str = "auto"
    """-fa on|off|auto."""
    swa_full: bool = False
    offload_kqv: bool = True
    use_mmap: bool = True
    repack: bool = True
    """``-nr/--no-repack`` turns it off: no extra CPU buffer types (AMX, CPU_REPACK) for the CPU's weights."""
    mmproj: str | None = None
    """--mmproj FILE: the multimodal projector loaded beside the model (``memory.mmproj``)."""
    mmproj_offload: bool = True
    """--no-mmproj-offload turns it off: the projector stays on the CPU (common/arg.cpp ``mmproj_use_gpu``)."""
    binary: str = "llama-server"
    spec_type: str | None = None
    """--spec-type; the one with a memory cost of its own here is ``draft-mtp`` (multi-token
    prediction with the model's NextN blocks: ``memory.mtp``). ``None``: no speculative decoding."""
    spec_draft_n_max: int = 3
    """--spec-draft-n-max (common/common.h default 3): with speculative decoding llama-server's main
    context keeps ``n_parallel x (1 + n_max)`` output rows (server_output_limits), which the output
    device's compute buffer holds (measured, SmolLM2 over two RPC workers: 32.91 MiB at 3, 69.86 at 64)."""

    def __post_init__(self) -> None:
        if self.split_mode not in ("none", "layer", "row", "tensor"):
            raise UsageError(f"split mode {self.split_mode!r} is not one of none, layer, row, tensor")
        if self.flash_attn not in ("on", "off", "auto"):
            raise UsageError(f"flash attention {self.flash_attn!r} is not one of on, off, auto")
        if self.binary not in BINARIES:
            raise UsageError(f"binary {self.binary!r} is not one of {', '.join(BINARIES)}")
        if self.spec_type is not None and any(t not in SPEC_TYPES for t in self.spec_type.split(",")):
            raise UsageError(f"--spec-type {self.spec_type!r} is not a comma-separated list of types llama.cpp knows",
                             remedy=f"use {', '.join(SPEC_TYPES)}")
        if self.spec_type is not None and self.binary not in SPEC_BINARIES:
            raise UsageError(f"--spec-type is not a flag of {self.binary}", remedy=f"plan for {' or '.join(SPEC_BINARIES)}")
        if self.mmproj is not None and self.binary not in MMPROJ_BINARIES:
            raise UsageError(f"--mmproj is not a flag of {self.binary}", remedy=f"plan for {' or '.join(MMPROJ_BINARIES)}")
        if self.n_ubatch <= 0 or self.n_batch <= 0:
            raise UsageError("batch sizes must be positive")
        _count("--ctx", self.n_ctx, remedy="give a context length in tokens (0: the model's training context)")
        _count("--n-gpu-layers", self.n_gpu_layers, remedy="give a number of layers from 0, or all")
        _count("--parallel", self.n_parallel, low=1, remedy="give a number of slots from 1 (or -1: llama.cpp's default)")
        _count("--n-cpu-moe", self.n_cpu_moe, remedy="give a number of layers from 0")
        _count("--spec-draft-n-max", self.spec_draft_n_max, remedy="give a number of tokens from 0")
        _count("--main-gpu", self.main_gpu, remedy="give a device index from 0")
        if self.tensor_split is not None and (
            any(not isinstance(x, (int, float)) or not math.isfinite(x) or x < 0 for x in self.tensor_split)
            or not any(self.tensor_split)
        ):
            shown = ",".join(str(x) for x in self.tensor_split)
            raise UsageError(f"--tensor-split {shown}: needs finite, non-negative proportions, not all zero",
                             remedy="e.g. -ts 3,1")

    @property
    def seq_count(self) -> int:
        """Sequences (slots) the context holds."""
        if self.n_parallel is not None:
            return self.n_parallel
        return 4 if self.binary == "llama-server" else 1

    @property
    def unified(self) -> bool:
        if self.kv_unified is not None:
            return self.kv_unified
        # llama-server turns the unified cache on when it picks the slot count itself
        return self.binary == "llama-server" and self.n_parallel is None

    @property
    def effective_overrides(self) -> tuple[tuple[str, str], ...]:
        """-ot pairs plus the ones --cpu-moe / --n-cpu-moe add (common/arg.cpp appends them last)."""
        return with_moe_overrides(self.overrides, self.cpu_moe, self.n_cpu_moe)

    def replace(self, **changes: Any) -> LlamaSettings:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["tensor_split"] = list(self.tensor_split) if self.tensor_split is not None else None
        data["overrides"] = [list(o) for o in self.overrides]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LlamaSettings:
        known = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in data.items() if k in known}
        if kw.get("tensor_split") is not None:
            kw["tensor_split"] = tuple(kw["tensor_split"])
        kw["overrides"] = tuple(tuple(o) for o in kw.get("overrides", ()))
        return cls(**kw)

    def to_args(self, device_names: list[str] | None = None) -> list[str]:
        """The llama.cpp flags for these settings (model, host and port not included)."""
        args: list[str] = []
        args += ["-ngl", "all" if self.n_gpu_layers is None else str(self.n_gpu_layers)]
        if self.split_mode != "layer":
            args += ["-sm", self.split_mode]
        if self.tensor_split is not None:
            args += ["-ts", ",".join(_num(x) for x in self.tensor_split)]
        if self.main_gpu:
            args += ["-mg", str(self.main_gpu)]
        for pattern, buft in self.overrides:
            args += ["-ot", f"{pattern}={buft}"]
        if self.cpu_moe:
            args += ["--cpu-moe"]
        if self.n_cpu_moe:
            args += ["--n-cpu-moe", str(self.n_cpu_moe)]
        if self.n_ctx is not None:
            args += ["-c", str(self.n_ctx)]
        if self.n_batch != 2048:
            args += ["-b", str(self.n_batch)]
        if self.n_ubatch != 512:
            args += ["-ub", str(self.n_ubatch)]
        if self.n_parallel is not None:
            args += ["-np", str(self.n_parallel)]
        if self.kv_unified is True and self.binary == "llama-server":
            args += ["-kvu"]  # only llama-server takes the flag; llama-completion and llama-fit-params reject it
        elif self.kv_unified is False and self.binary == "llama-server":
            args += ["--no-kv-unified"]
        if self.type_k != "f16":
            args += ["-ctk", self.type_k]
        if self.type_v != "f16":
            args += ["-ctv", self.type_v]
        if self.flash_attn != "auto":
            args += ["-fa", self.flash_attn]
        if self.swa_full:
            args += ["--swa-full"]
        if not self.offload_kqv:
            args += ["-nkvo"]
        if not self.repack:
            args += ["-nr"]
        if not self.use_mmap:
            args += ["-lm", "none"]  # this llama.cpp replaced --no-mmap with --load-mode
        if self.mmproj is not None:
            # a projector planned from its remote header: llama.cpp downloads it (common/arg.cpp --mmproj-url)
            args += ["-mmu" if self.mmproj.lower().startswith(("http://", "https://")) else "--mmproj", self.mmproj]
            if not self.mmproj_offload:
                args += ["--no-mmproj-offload"]
        if self.spec_type is not None:
            args += ["--spec-type", self.spec_type]
        if self.spec_draft_n_max != 3 and self.binary in SPEC_BINARIES:
            args += ["--spec-draft-n-max", str(self.spec_draft_n_max)]
        return args


def _count(flag: str, value: object, *, low: int = 0, remedy: str) -> None:
    """``None`` (llama.cpp's default) or an integer of at least ``low``; else a UsageError naming the flag."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise UsageError(f"{flag} {value!r} is not a whole number", remedy=remedy)
    if value < low:
        raise UsageError(f"{flag} {value} is {'negative' if value < 0 else 'too small'}", remedy=remedy)


def parse_tensor_split(value: object) -> tuple[float, ...]:
    """``-ts`` as llama.cpp reads it (common/arg.cpp: proportions split on ``,`` or ``/``), or a
    sequence of numbers; a word that is not a finite number is a UsageError.

    >>> parse_tensor_split("3,1")
    (3.0, 1.0)
    >>> parse_tensor_split([1, 2.5])
    (1.0, 2.5)
    """
    items = [p for p in re.split(r"[,/]+", value.strip())] if isinstance(value, str) else list(value)  # type: ignore[arg-type]
    out = []
    for item in items:
        try:
            x = float(item)
        except (TypeError, ValueError):
            raise UsageError(f"--tensor-split {value!r}: {item!r} is not a number",
                             remedy="give one proportion per device, e.g. -ts 3,1") from None
        if not math.isfinite(x) or x < 0:
            raise UsageError(f"--tensor-split {value!r}: {item!r} is not a finite, non-negative proportion",
                             remedy="give one proportion per device, e.g. -ts 3,1")
        out.append(x)
    return tuple(out)


def parse_gpu_layers(value: object) -> int | None:
    """``-ngl``: a number of layers, or ``all``/``auto``/``-1`` (every layer: ``None``).

    >>> parse_gpu_layers("12"), parse_gpu_layers("all"), parse_gpu_layers(-1)
    (12, None, None)
    """
    if value in ("all", "auto", "-1", -1, None):
        return None
    try:
        n = int(value) if not isinstance(value, (bool, float)) else None  # type: ignore[arg-type]
    except (TypeError, ValueError):
        n = None
    if n is None:
        raise UsageError(f"--n-gpu-layers {value!r} is not a number of layers", remedy="give a number from 0, or all")
    if n < 0:
        raise UsageError(f"--n-gpu-layers {n} is negative", remedy="give a number of layers from 0, or all")
    return n


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"
