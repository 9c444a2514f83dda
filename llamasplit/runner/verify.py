"""Predicted against actual: read the buffers llama.cpp allocated from its log, compare with the plan.

With ``-lv 4`` llama.cpp prints one line per buffer it allocates (LLAMACPP.md §6)::

    load_tensors:   CPU_Mapped model buffer size =    28.69 MiB
    load_tensors: RPC0[127.0.0.1:50161] model buffer size =    16.91 MiB
    llama_kv_cache: RPC0[127.0.0.1:50162] KV buffer size =    16.50 MiB
    sched_reserve: RPC0[127.0.0.1:50161] compute buffer size =    20.91 MiB

RPC buffers are named ``RPC<n>[endpoint]`` where ``n`` is the device's index on *that* worker, so
two workers both say ``RPC0[...]``: they are told apart by endpoint and matched to the plan's
device ids (``rpc:endpoint#n``). Local CUDA devices pinned by UUID are ``CUDA0..k`` in plan order
(``launch_env``); ``CPU*`` and ``*_Host`` buffers are the host. Model, KV and recurrent-state
lines add up (split files, the two caches of a sliding-window model); a compute buffer reserved
again replaces the earlier one.

``verify(plan, log_text)`` is pure. The tolerance is the estimator's current accuracy: model and
KV within 1 MiB, compute within max(15 %, 20 MiB) of the prediction.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from llamasplit.memory.weights import HOST
from llamasplit.planner.plan import Plan
from llamasplit.units import MiB

KINDS = ("model", "context", "compute")
"""What is compared, in llama.cpp's breakdown categories (context = KV cache + recurrent state)."""

EXACT_TOLERANCE_BYTES = 1 * MiB
COMPUTE_TOLERANCE_FRACTION = 0.15
COMPUTE_TOLERANCE_FLOOR_BYTES = 20 * MiB
TOLERANCE_TEXT = "model and KV within 1 MiB, compute within max(15 %, 20 MiB)"

_BUFFER_RE = re.compile(
    r"\b(?P<func>\w+):\s+(?P<buffer>\S+)\s+(?P<what>model|KV|RS|output|compute) buffer size\s*=\s*(?P<mib>[0-9]+(?:\.[0-9]+)?) MiB"
)
_CATEGORY = {"model": "model", "KV": "context", "RS": "context", "compute": "compute", "output": "output"}
_LORA_RE = re.compile(r"\bllama_adapter_lora_init_impl:\s+(?P<buffer>\S+) LoRA buffer size\s*=\s*(?P<mib>[0-9]+(?:\.[0-9]+)?) MiB")
DRAFT_MARK = "loading draft model"
"""common/speculative.cpp ``common_speculative_init_result`` logs it before loading ``-md``: the
buffer lines after it are the draft model's and its context's."""
_CLIP_BACKEND_RE = re.compile(r"\bclip_ctx: CLIP using (?P<buffer>\S+) backend")
_CLIP_MODEL_RE = re.compile(r"\bload_hparams: model size:\s+(?P<mib>[0-9]+(?:\.[0-9]+)?) MiB")
CLIP_COMPUTE_FUNC = "reserve_compute_meta"
"""tools/mtmd/clip.cpp: the projector's warmup reservation logs ``reserve_compute_meta: %10s compute
buffer size``; its weights only ``load_hparams: model size`` (unpadded), after ``clip_ctx: CLIP using
%s backend``. These are the projector's, not the model's."""
MTP_MARK = "creating MTP draft context"
"""common/speculative.cpp ``common_speculative_init_result`` logs it before creating the MTP context
on the target model (``--spec-type draft-mtp`` without ``-md``): the buffer lines after it are
that context's (``memory.mtp``), a second reservation's compute replacing the first."""
SIDE_KINDS = ("draft_model", "draft_context", "draft_compute", "lora", "mmproj_model", "mmproj_compute",
              "mtp_context", "mtp_compute")
"""What is compared of a draft model, LoRA adapters and the projector (``DevicePlan.companion_parts``)."""


@dataclass(frozen=True)
class BufferLine:
    """One buffer llama.cpp reported: its name as printed, the category, and its size."""

    buffer: str
    kind: str
    """``model``, ``context``, ``compute`` or ``output``."""
    size_bytes: int


def parse_buffers(log_text: str) -> list[BufferLine]:
    """Every buffer-size line of a llama.cpp log, in order.

    >>> parse_buffers("load_tensors: RPC0[127.0.0.1:5] model buffer size =    23.25 MiB")
    [BufferLine(buffer='RPC0[127.0.0.1:5]', kind='model', size_bytes=24379392)]
    """
    out = []
    for match in _BUFFER_RE.finditer(log_text):
        if match.group("func") == CLIP_COMPUTE_FUNC:
            continue  # the multimodal projector's (see _side_rows)
        out.append(BufferLine(match.group("buffer"), _CATEGORY[match.group("what")], round(float(match.group("mib")) * MiB)))
    return out


def llama_buffer_names(plan: Plan) -> dict[str, str]:
    """How the launched llama.cpp names each planned device's buffers -> the plan's device name."""
    names: dict[str, str] = {}
    cuda_pinned = 0
    fleet_by_id = {d.id: d for d in plan.fleet.devices}
    for d in plan.devices:
        dev_id = d.device_id or ""
        if dev_id.startswith("rpc:"):
            endpoint, _, n = dev_id[len("rpc:"):].rpartition("#")
            names[f"RPC{n or 0}[{endpoint}]"] = d.name
            continue
        fleet_dev = fleet_by_id.get(dev_id)
        if fleet_dev is not None and fleet_dev.backend == "CUDA" and dev_id.startswith(("GPU-", "MIG-")):
            names[f"CUDA{cuda_pinned}"] = d.name  # CUDA_VISIBLE_DEVICES lists them in plan order
            cuda_pinned += 1
            continue
        names[d.name] = d.name
    return names


def _owner(buffer: str, names: dict[str, str]) -> str:
    if buffer in names:
        return names[buffer]
    if buffer.startswith("CPU") or buffer.endswith("_Host"):
        return HOST
    return buffer  # a device the plan did not count (another GPU, a second device of a worker)


@dataclass(frozen=True)
class Actual:
    """What llama.cpp allocated on one device, bytes by category."""

    model_bytes: int = 0
    context_bytes: int = 0
    compute_bytes: int = 0
    output_bytes: int = 0

    def get(self, kind: str) -> int:
        return getattr(self, f"{kind}_bytes")


def actual_by_device(plan: Plan, buffers: Iterable[BufferLine]) -> dict[str, Actual]:
    """Allocations per plan device name (``Host`` for the CPU), plus any device the plan did not have."""
    names = llama_buffer_names(plan)
    sums: dict[str, dict[str, int]] = {}
    compute: dict[str, dict[str, int]] = {}
    for b in buffers:
        owner = _owner(b.buffer, names)
        if b.kind == "compute":
            compute.setdefault(owner, {})[b.buffer] = b.size_bytes  # a later reserve replaces it
        else:
            per = sums.setdefault(owner, {})
            per[b.kind] = per.get(b.kind, 0) + b.size_bytes
    out: dict[str, Actual] = {}
    for owner in [*sums, *(o for o in compute if o not in sums)]:
        per = sums.get(owner, {})
        out[owner] = Actual(
            model_bytes=per.get("model", 0), context_bytes=per.get("context", 0),
            compute_bytes=sum(compute.get(owner, {}).values()), output_bytes=per.get("output", 0),
        )
    return out


def tolerance_bytes(kind: str, predicted_bytes: int) -> int:
    """How far actual may be from predicted and still pass ``--check``.

    >>> tolerance_bytes("model", 10 * MiB) // MiB
    1
    >>> tolerance_bytes("compute", 100 * MiB) // MiB, tolerance_bytes("compute", 1000 * MiB) // MiB
    (20, 150)
    """
    if kind == "compute":
        return max(int(COMPUTE_TOLERANCE_FRACTION * predicted_bytes), COMPUTE_TOLERANCE_FLOOR_BYTES)
    return EXACT_TOLERANCE_BYTES


@dataclass(frozen=True)
class Comparison:
    """One device, one category: predicted, actual (``None`` = not in the log) and the verdict."""

    device: str
    kind: str
    predicted_bytes: int
    actual_bytes: int | None
    tolerance_bytes: int

    @property
    def ok(self) -> bool:
        return self.actual_bytes is not None and abs(self.actual_bytes - self.predicted_bytes) <= self.tolerance_bytes

    def describe(self) -> str:
        label = "KV" if self.kind == "context" else self.kind
        if self.actual_bytes is None:
            return f"{self.device} {label}: predicted {_mib(self.predicted_bytes)} MiB, nothing in the log"
        diff = self.actual_bytes - self.predicted_bytes
        pct = f" ({diff / self.predicted_bytes:+.0%})" if self.predicted_bytes else ""
        return (
            f"{self.device} {label}: predicted {_mib(self.predicted_bytes)} MiB, actual {_mib(self.actual_bytes)} MiB"
            f"{pct}, allowed ±{_mib(self.tolerance_bytes)} MiB"
        )


@dataclass(frozen=True)
class Verification:
    """The plan's prediction next to llama.cpp's allocation, per device (the plan's order, then Host)."""

    rows: tuple[Comparison, ...]
    descriptions: dict[str, str] = field(default_factory=dict)
    found_buffers: int = 0
    """How many buffer lines the log had (0: llama.cpp ran with a lower ``-lv``, or died first)."""

    @property
    def ok(self) -> bool:
        return self.found_buffers > 0 and all(r.ok for r in self.rows)

    def failures(self) -> list[str]:
        if not self.found_buffers:
            return ["llama.cpp reported no buffer sizes (it needs -lv 4; did an extra argument lower it?)"]
        return [r.describe() for r in self.rows if not r.ok]

    def devices(self) -> list[str]:
        return list(dict.fromkeys(r.device for r in self.rows))

    def row(self, device: str, kind: str) -> Comparison:
        return next(r for r in self.rows if r.device == device and r.kind == kind)

    def table(self) -> str:
        """A plain-text table in MiB, one line per device, and the verdict."""
        head = (
            f"{'device':<8} {'where':<22} {'model':>9} {'actual':>9} {'KV':>8} {'actual':>8} "
            f"{'compute':>9} {'actual':>9}  check"
        )
        lines = ["predicted vs actual after load (MiB)", head]
        for dev in self.devices():
            cells = []
            bad = []
            for kind in KINDS:
                r = next((x for x in self.rows if x.device == dev and x.kind == kind), None)
                if r is None:  # not compared (the Meta device's compute buffer)
                    cells += ["-", "-"]
                    continue
                cells += [_mib(r.predicted_bytes), "?" if r.actual_bytes is None else _mib(r.actual_bytes)]
                if not r.ok:
                    bad.append("KV" if kind == "context" else kind)
            where = self.descriptions.get(dev, "")[:22]
            verdict = "ok" if not bad else "OFF: " + ", ".join(bad)
            lines.append(
                f"{dev:<8} {where:<22} {cells[0]:>9} {cells[1]:>9} {cells[2]:>8} {cells[3]:>8} "
                f"{cells[4]:>9} {cells[5]:>9}  {verdict}"
            )
        for r in self.rows:
            if r.kind in SIDE_KINDS:  # the draft model's and LoRA adapters' buffers
                got = "?" if r.actual_bytes is None else _mib(r.actual_bytes)
                lines.append(f"{r.device:<8} {r.kind:<22} predicted {_mib(r.predicted_bytes):>9} actual {got:>9}  "
                             + ("ok" if r.ok else "OFF"))
        if self.ok:
            lines.append(f"all within tolerance ({TOLERANCE_TEXT})")
        else:
            lines.append(f"outside tolerance ({TOLERANCE_TEXT}):")
            lines.extend(f"  {f}" for f in self.failures())
        return "\n".join(lines)

    def to_dict(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "found_buffers": self.found_buffers,
            "rows": [
                {
                    "device": r.device, "kind": r.kind, "predicted_bytes": r.predicted_bytes,
                    "actual_bytes": r.actual_bytes, "tolerance_bytes": r.tolerance_bytes, "ok": r.ok,
                }
                for r in self.rows
            ],
        }


def split_draft_log(log_text: str) -> tuple[str, str]:
    """The log before the draft model loads, and from there on (empty without a draft)."""
    at = log_text.find(DRAFT_MARK)
    return (log_text, "") if at < 0 else (log_text[:at], log_text[at:])


def _side_rows(plan: Plan, draft_log: str, log_text: str, mtp_log: str = "") -> list[Comparison]:
    """The draft model's and the LoRA adapters' buffers per device against ``companion_parts``."""
    names = llama_buffer_names(plan)
    actual: dict[tuple[str, str], int] = {}
    for owner, got in actual_by_device(plan, parse_buffers(mtp_log)).items():
        actual[(owner, "mtp_context")] = got.context_bytes
        actual[(owner, "mtp_compute")] = got.compute_bytes
    if plan.draft is not None:
        draft = actual_by_device(plan, parse_buffers(draft_log))
        for owner, got in draft.items():
            actual[(owner, "draft_model")] = got.model_bytes
            actual[(owner, "draft_context")] = got.context_bytes
            actual[(owner, "draft_compute")] = got.compute_bytes
    for match in _LORA_RE.finditer(log_text):
        owner = _owner(match.group("buffer"), names)
        actual[(owner, "lora")] = actual.get((owner, "lora"), 0) + round(float(match.group("mib")) * MiB)
    if plan.settings.mmproj is not None:
        where = _CLIP_BACKEND_RE.search(log_text)
        size = _CLIP_MODEL_RE.search(log_text)
        if where is not None and size is not None:
            owner = HOST if where.group("buffer") == "CPU" else _owner(where.group("buffer"), names)
            actual[(owner, "mmproj_model")] = round(float(size.group("mib")) * MiB)
        for match in _BUFFER_RE.finditer(log_text):
            if match.group("func") == CLIP_COMPUTE_FUNC:
                # a second reservation (flash attention refused) keeps the larger buffer (ggml-alloc.c)
                key = (_owner(match.group("buffer"), names), "mmproj_compute")
                actual[key] = max(actual.get(key, 0), round(float(match.group("mib")) * MiB))
    rows = []
    wanted = [k for k in SIDE_KINDS if (k == "lora" and plan.loras) or (k.startswith("draft") and plan.draft)
              or (k.startswith("mmproj") and plan.settings.mmproj is not None) or (k.startswith("mtp") and mtp_log)]
    for d in (*plan.devices, plan.host):
        parts = d.companion_parts or {}
        for kind in wanted:
            predicted = parts.get(kind, 0)
            got = actual.get((d.name, kind), 0)
            if predicted or got:
                rows.append(Comparison(d.name, kind, predicted, got,
                                       tolerance_bytes("compute" if kind.endswith("compute") else kind, predicted)))
    return rows


def verify(plan: Plan, log_text: str) -> Verification:
    """Compare ``plan``'s per-device prediction with the buffers in a llama.cpp log (pure); a draft
    model's buffers (after ``DRAFT_MARK``) and LoRA buffers are compared on their own rows."""
    full_text = log_text
    log_text, draft_log = split_draft_log(log_text)
    at = log_text.find(MTP_MARK)
    log_text, mtp_log = (log_text, "") if at < 0 else (log_text[:at], log_text[at:])
    buffers = parse_buffers(log_text)
    if plan.settings.split_mode == "tensor":
        return _verify_tensor(plan, buffers)
    actual = actual_by_device(plan, buffers)
    rows: list[Comparison] = []
    descriptions: dict[str, str] = {}
    for d in (*plan.devices, plan.host):
        got = actual.get(d.name)
        descriptions[d.name] = d.description if d.name != HOST else "CPU"
        for kind in KINDS:
            predicted = getattr(d, f"{kind}_bytes")
            measured = None if not buffers else (got.get(kind) if got is not None else 0)
            rows.append(Comparison(d.name, kind, predicted, measured, tolerance_bytes(kind, predicted)))
    planned = {d.name for d in plan.devices} | {HOST}
    for name, got in actual.items():
        if name in planned:
            continue
        descriptions[name] = "not in the plan"
        for kind in KINDS:
            rows.append(Comparison(name, kind, 0, got.get(kind), tolerance_bytes(kind, 0)))
    if buffers and (plan.draft is not None or plan.loras or plan.settings.mmproj is not None or mtp_log):
        rows += _side_rows(plan, draft_log, full_text, mtp_log)
    return Verification(rows=tuple(rows), descriptions=descriptions, found_buffers=len(buffers))


def _verify_tensor(plan: Plan, buffers: list[BufferLine]) -> Verification:
    """``-sm tensor``: llama.cpp logs the Meta device's buffers, each the max over its devices
    (ggml-backend-meta.cpp), so the plan's per-device weights and KV are compared through their
    max; the host as usual. The Meta compute buffer is not compared (its relation to the
    devices' own reservations is not modelled)."""
    meta = [b for b in buffers if b.buffer.startswith("Meta(")]
    others = [b for b in buffers if not b.buffer.startswith("Meta(")]
    rows: list[Comparison] = []
    descriptions: dict[str, str] = {}
    name = meta[0].buffer if meta else "Meta(" + ",".join(d.name for d in plan.devices) + ")"
    descriptions[name] = "the tensor-parallel Meta device (max over " + ", ".join(d.name for d in plan.devices) + ")"
    for kind in ("model", "context"):
        predicted = max((getattr(d, f"{kind}_bytes") for d in plan.devices), default=0)
        got = sum(b.size_bytes for b in meta if b.kind == kind) if buffers else None
        rows.append(Comparison(name, kind, predicted, got, tolerance_bytes(kind, predicted)))
    host = actual_by_device(plan, others).get(HOST)
    descriptions[HOST] = "CPU"
    for kind in KINDS:
        predicted = getattr(plan.host, f"{kind}_bytes")
        measured = None if not buffers else (host.get(kind) if host is not None else 0)
        rows.append(Comparison(HOST, kind, predicted, measured, tolerance_bytes(kind, predicted)))
    return Verification(rows=tuple(rows), descriptions=descriptions, found_buffers=len(buffers))


def _mib(n: int) -> str:
    return f"{n / MiB:.2f}"
