"""A live view of GPU memory while llama.cpp serves: NVML every interval, next to the plan's prediction.

``sample(nvml, pids)`` reads, per GPU: total, used and free memory (``nvmlDeviceGetMemoryInfo``) and
the memory the watched processes hold there (``nvmlDeviceGetComputeRunningProcesses``: per process
where the driver tells it; ``None`` under some containers and on WDDM, where NVML reports
NVML_VALUE_NOT_AVAILABLE or the pids live in another namespace). ``render`` lays one sample out
next to a plan: each planned device's predicted total (llama.cpp's buffers plus the CUDA overhead),
found by GPU UUID, else by CUDA index. Reading is the hardware edge; ``render`` is pure.

``watch`` loops: it redraws in place on a terminal, and prints one plain block per sample with a
timestamp otherwise (logs, pipes); ``count`` bounds the loop (tests, scripts).
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from llamasplit.devices.nvml import _text, check_official, init_error, query_error
from llamasplit.units import format_size


_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")


@dataclass(frozen=True)
class GpuSample:
    """One GPU at one moment."""

    index: int
    uuid: str
    name: str
    total_bytes: int | None
    used_bytes: int | None
    free_bytes: int | None
    process_bytes: int | None
    """Memory the watched processes (none given: all compute processes) hold here; ``None``: NVML does not say."""
    processes: tuple[tuple[int, int | None], ...] = ()
    """Every compute process NVML lists here: (pid, bytes or None)."""


def sample(nvml: Any, pids: Sequence[int] = ()) -> list[GpuSample]:
    """One reading of every GPU; NVML must be initialised. Failures are ``DeviceQueryError`` lines."""
    out = []
    try:
        count = nvml.nvmlDeviceGetCount()
    except nvml.NVMLError as exc:
        raise query_error(nvml, exc, "counting GPUs") from exc
    watched = set(pids)
    for i in range(count):
        try:
            h = nvml.nvmlDeviceGetHandleByIndex(i)
            uuid = _text(nvml.nvmlDeviceGetUUID(h))
            name = _text(nvml.nvmlDeviceGetName(h))
            mem = nvml.nvmlDeviceGetMemoryInfo(h)
        except nvml.NVMLError as exc:
            raise query_error(nvml, exc, f"reading the memory of GPU {i}") from exc
        try:
            procs = tuple((int(p.pid), None if p.usedGpuMemory is None else int(p.usedGpuMemory))
                          for p in nvml.nvmlDeviceGetComputeRunningProcesses(h))
        except nvml.NVMLError:
            procs = ()
        mine = [used for pid, used in procs if pid in watched or not watched]  # no pid given: every process
        process_bytes = sum(mine) if mine and all(u is not None for u in mine) else None  # type: ignore[misc]
        out.append(GpuSample(i, uuid, name, int(mem.total), int(mem.used), int(mem.free), process_bytes, procs))
    return out


def predictions(plan: Any | None) -> dict[str, tuple[str, int]]:
    """Plan device -> (name, predicted total bytes), keyed by GPU UUID (``GPU-...``) or ``cuda:N``."""
    if plan is None:
        return {}
    out: dict[str, tuple[str, int]] = {}
    cuda = 0
    for d in plan.devices:
        if d.device_id and d.device_id.startswith(("GPU-", "MIG-")):
            out[d.device_id] = (d.name, d.total_bytes)
        elif d.name.startswith("CUDA"):
            out[f"cuda:{cuda}"] = (d.name, d.total_bytes)
        if d.name.startswith("CUDA"):
            cuda += 1
    return out


def process_name(pid: int) -> str | None:
    """A process's name (psutil), or None when it is gone, hidden (another pid namespace) or psutil is absent."""
    try:
        import psutil

        return psutil.Process(pid).name()
    except Exception:  # noqa: BLE001 - psutil.Error, ImportError: the name is only a label
        return None


def render(samples: Sequence[GpuSample], plan: Any | None = None, pids: Sequence[int] = (), *, when: str = "",
           names: Callable[[int], str | None] = process_name) -> str:
    """One sample as a table: GPU, used, free, what the watched process holds, the plan's prediction;
    then every compute process NVML lists, with its name (untrusted: control characters dropped)."""
    pred = predictions(plan)
    head = f"{'gpu':<4} {'name':<26} {'used':>11} {'free':>11} {'process':>11} {'planned':>11} {'diff':>11}"
    lines = [f"llamasplit top{' ' + when if when else ''}" + (f" (pid {', '.join(map(str, pids))})" if pids else ""), head]
    for s in samples:
        planned = pred.get(s.uuid) or pred.get(f"cuda:{s.index}")
        got = s.process_bytes
        diff = "" if planned is None or got is None else (("+" if got >= planned[1] else "-") + format_size(abs(got - planned[1])))
        lines.append(
            f"{s.index:<4} {s.name[:26]:<26} {format_size(s.used_bytes):>11} {format_size(s.free_bytes):>11} "
            f"{format_size(got) if got is not None else '-':>11} "
            f"{(planned[0] + ' ' + format_size(planned[1])) if planned else '-':>11} {diff:>11}"
        )
    for s in samples:
        for pid, used in s.processes:
            name = _CONTROL_RE.sub("", names(pid) or "?")[:32]
            mark = "*" if pid in pids else " "
            lines.append(f"{mark}    gpu {s.index} pid {pid} {name}: {format_size(used) if used is not None else 'not reported'}")
    if pids and all(s.process_bytes is None for s in samples):
        lines.append("note: NVML does not report this process's memory (another pid namespace, or not available)")
    return "\n".join(lines)


def watch(
    nvml: Any | None = None, *, pids: Sequence[int] = (), plan: Any | None = None, interval_s: float = 1.0,
    count: int | None = None, out: TextIO | None = None, tty: bool | None = None,
    until: Callable[[], bool] | None = None, sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Sample every ``interval_s`` and print; stop after ``count`` samples or when ``until()`` is true.

    Returns the number of samples shown. NVML is initialised once and always shut down.
    """
    if nvml is None:
        from llamasplit.devices.nvml import _import_pynvml

        nvml = _import_pynvml()
    check_official(nvml)
    out = out or sys.stdout
    tty = out.isatty() if tty is None else tty
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as exc:
        raise init_error(nvml, exc) from exc
    shown = 0
    try:
        while count is None or shown < count:
            if until is not None and until():
                break
            text = render(sample(nvml, pids), plan, pids, when=time.strftime("%H:%M:%S"))
            if tty:
                out.write("\x1b[H\x1b[2J" + text + "\n")
            else:
                out.write(text + "\n\n")
            out.flush()
            shown += 1
            if count is None or shown < count:
                sleep(interval_s)
    finally:
        try:
            nvml.nvmlShutdown()
        except nvml.NVMLError:
            pass
    return shown
