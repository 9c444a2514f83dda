"""The GPU check: llamasplit's CUDA figures against llama.cpp and NVML on a real NVIDIA GPU.

Run through ``scripts/gpu-check.sh`` (which builds the pinned llama.cpp with CUDA for this GPU's
architecture and points ``LLAMASPLIT_LLAMA_CPP_BIN`` at it). For each model (SmolLM2 Q4_1,
Gemma-3 Q4_K_M, a synthetic F16 llama and a synthetic qwen3moe) and flag set (everything offloaded
at 4k, flash attention with a q8_0 cache, no flash attention at 16k with ubatch 1024, a partial
offload; with two GPUs also ``-ts 1,1`` and ``-sm tensor``) it compares per device:

- ``ours``: ``estimate()`` (or ``estimate_tensor()``) for the binary in question;
- ``fitp``: ``llama-fit-params -fitp on`` (llama.cpp's own dry run, whole MiB; not under -sm tensor);
- ``real``: llama-server's buffer lines after load (``-lv 4``);
- ``nvml``: NVML's memory for llama-server's pid on that GPU after load, against our
  model + context + compute + overhead: the check of ``memory/cuda_rules.py``'s estimates
  (context, cuBLAS, pool) that llama.cpp's breakdown leaves out;

and, for the first flag set, the first GPU again behind a real ``llamasplit worker`` on loopback
(the client's own GPUs hidden): the RPC device sized by what the worker published must get the
figures llama.cpp reports for it (RPC over CUDA allocates with CUDA's rules);

and ``llamasplit gpus`` against ``nvidia-smi``. It prints one table (stdout) and exits 0.

The parts that need no GPU (parsing nvidia-smi, the table, ``compare_case`` over CPU/RPC devices)
are exercised by ``tests/test_gpu_check.py``.

    benchmarks/gpu_check.py [--quick] [--no-server]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from llamasplit.devices.device import Device, Fleet  # noqa: E402
from llamasplit.errors import LlamasplitError  # noqa: E402
from llamasplit.llamacpp.binaries import find_binary  # noqa: E402
from llamasplit.llamacpp.oracle import parse_fit_print  # noqa: E402
from llamasplit.model.profile import ModelProfile, read_model  # noqa: E402
from llamasplit.memory.estimate import estimate  # noqa: E402
from llamasplit.memory.weights import HOST  # noqa: E402
from llamasplit.memory.settings import LlamaSettings  # noqa: E402
from llamasplit.runner.processes import free_port, run_to_end, spawn  # noqa: E402
from llamasplit.runner.verify import parse_buffers  # noqa: E402

MiB = 1024 * 1024


# -- nvidia-smi ----------------------------------------------------------------------------------

SMI_GPU_FIELDS = ("index", "uuid", "name", "memory.total", "memory.free", "compute_cap", "pcie.link.gen.max",
                  "pcie.link.width.max")


@dataclass(frozen=True)
class SmiGpu:
    """One row of ``nvidia-smi --query-gpu=...`` (MiB as nvidia-smi prints them)."""

    index: int
    uuid: str
    name: str
    total_mib: int | None
    free_mib: int | None
    compute_cap: tuple[int, int] | None
    pcie_gen: int | None
    pcie_width: int | None


def _num(text: str) -> int | None:
    text = text.strip()
    return int(text) if text.isdigit() else None


def parse_smi_gpus(text: str) -> list[SmiGpu]:
    """``nvidia-smi --query-gpu=<SMI_GPU_FIELDS> --format=csv,noheader,nounits``; ``[N/A]`` -> None.

    >>> parse_smi_gpus("0, GPU-1a, NVIDIA GeForce RTX 3090, 24576, 24237, 8.6, 4, 16\\n")[0].compute_cap
    (8, 6)
    """
    out = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != len(SMI_GPU_FIELDS) or not parts[0].isdigit():
            continue
        cc = None
        major, _, minor = parts[5].partition(".")
        if major.isdigit() and minor.isdigit():
            cc = (int(major), int(minor))
        out.append(SmiGpu(int(parts[0]), parts[1], parts[2], _num(parts[3]), _num(parts[4]), cc, _num(parts[6]), _num(parts[7])))
    return out


def parse_smi_apps(text: str) -> dict[tuple[int, str], int]:
    """``nvidia-smi --query-compute-apps=pid,gpu_uuid,used_memory --format=csv,noheader,nounits``:
    (pid, GPU UUID) -> MiB.

    >>> parse_smi_apps("4242, GPU-1a, 812\\n77, GPU-1a, [N/A]\\n")
    {(4242, 'GPU-1a'): 812}
    """
    out = {}
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3 and parts[0].isdigit() and parts[2].isdigit():
            out[(int(parts[0]), parts[1])] = int(parts[2])
    return out


def compare_gpus(ours: Sequence[Device], smi: Sequence[SmiGpu]) -> list[Row]:
    """``llamasplit gpus`` (NVML, CUDA order = PCI order) against nvidia-smi, matched by UUID."""
    rows = []
    by_uuid = {g.uuid: g for g in smi}
    for d in ours:
        g = by_uuid.get(d.id)
        if g is None:
            rows.append(Row("gpus", d.name, "uuid", None, None, None, None, note=f"{d.id} not in nvidia-smi"))
            continue
        rows.append(Row("gpus", d.name, "total", _mib(d.total_bytes), None, g.total_mib, None,
                        note="" if d.description == g.name else f"name {d.description!r} vs {g.name!r}"))
        rows.append(Row("gpus", d.name, "cc", None, None, None, None,
                        note="same" if d.compute_capability == g.compute_cap else f"{d.compute_capability} vs {g.compute_cap}"))
        rows.append(Row("gpus", d.name, "pcie", None, None, None, None,
                        note="same" if (d.pcie_gen, d.pcie_width) == (g.pcie_gen, g.pcie_width)
                        else f"gen{d.pcie_gen} x{d.pcie_width} vs gen{g.pcie_gen} x{g.pcie_width}"))
    return rows


# -- one comparison ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Row:
    """One figure of one device in one case: ours, fit-params', the real buffer's and NVML's, in MiB."""

    case: str
    device: str
    kind: str
    ours_mib: float | None
    fitp_mib: int | None
    real_mib: float | None
    nvml_mib: float | None
    note: str = ""

    def error_mib(self) -> float | None:
        """Ours minus the best reference there is (real, else fit-params, else NVML)."""
        if self.ours_mib is None:
            return None
        for ref in (self.real_mib, self.fitp_mib, self.nvml_mib):
            if ref is not None:
                return self.ours_mib - ref
        return None


def _mib(n: int | None) -> float | None:
    return None if n is None else n / MiB


def table(rows: Sequence[Row]) -> str:
    """The one table the check prints."""
    def f(x: float | None) -> str:
        return "-" if x is None else f"{x:.2f}"

    head = f"{'case':<44} {'device':<10} {'kind':<9} {'ours':>10} {'fitp':>8} {'real':>10} {'nvml':>10} {'error':>9}  note"
    lines = [head, "-" * len(head)]
    for r in rows:
        err = r.error_mib()
        lines.append(f"{r.case[:44]:<44} {r.device[:10]:<10} {r.kind:<9} {f(r.ours_mib):>10} "
                     f"{'-' if r.fitp_mib is None else r.fitp_mib:>8} {f(r.real_mib):>10} {f(r.nvml_mib):>10} "
                     f"{'-' if err is None else f'{err:+.2f}':>9}  {r.note}")
    return "\n".join(lines)


@dataclass(frozen=True)
class Case:
    name: str
    model: Path
    settings: LlamaSettings


def buffer_names(devices: Sequence[Device]) -> list[str]:
    """The names llama.cpp's buffer lines give ``devices``: ``CUDA0``; ``RPC<n>[endpoint]`` with ``n`` the
    device's index on its worker (every worker's first device is ``RPC0[...]``). fit-params' table
    names them as ``--list-devices`` does (``RPC0``, ``RPC1``, ...: ``Device.name``).

    >>> buffer_names([Device("a", "RPC0", "h:1", "RPC", None, None, host="h:1"), Device("b", "RPC1", "h:2", "RPC", None, None, host="h:2")])
    ['RPC0[h:1]', 'RPC0[h:2]']
    """
    seen: dict[str, int] = {}
    out = []
    for d in devices:
        if d.backend.upper() == "RPC":
            n = seen.get(d.host, 0)
            seen[d.host] = n + 1
            out.append(f"RPC{n}[{d.host}]")
        else:
            out.append(d.name)
    return out


def compare_case(case: Case, devices: Sequence[Device], *, rpc: Sequence[str] = (), fitp: bool = True,
                 server: bool = True, env: Mapping[str, str] | None = None, timeout_s: float = 300) -> list[Row]:
    """Ours against fit-params (layer mode) and against a real llama-server's buffers and NVML.

    ``devices`` are llama.cpp's devices in its order (RPC first), ``rpc`` their endpoints.
    """
    profile = read_model(case.model)
    rows: list[Row] = []
    tensor = case.settings.split_mode == "tensor"
    rpc_args = ["--rpc", ",".join(rpc)] if rpc else []
    if fitp and not tensor:
        s = case.settings.replace(binary="llama-fit-params")
        est = estimate(profile, devices, s)
        oracle = {r.name: r for r in _fit_print(case.model, [*s.to_args(), *rpc_args], env, timeout_s)}
        for d, e in zip(devices, est.devices):
            o = oracle.get(d.name)
            for kind in ("model", "context", "compute"):
                rows.append(Row(case.name + " [fitp]", d.name, kind, _mib(getattr(e, f"{kind}_bytes")),
                                getattr(o, f"{kind}_mib") if o else None, None, None))
        o = oracle.get("Host")
        rows.append(Row(case.name + " [fitp]", HOST, "compute", _mib(est.host.compute_bytes), o.compute_mib if o else None, None, None))
    if server:
        rows += _server_rows(case, profile, devices, rpc_args, env=env, timeout_s=timeout_s)
    return rows


def _fit_print(model: Path, args: Sequence[str], env: Mapping[str, str] | None, timeout_s: float) -> list:
    """``llama-fit-params -fitp on`` under ``env`` (CUDA_VISIBLE_DEVICES picks the GPUs of the case)."""
    argv = [str(find_binary("llama-fit-params", env)), "-m", str(model), "-fitp", "on", *args]
    result = run_to_end(argv, timeout_s=timeout_s, env=env)
    rows = parse_fit_print(result.stdout)
    if result.returncode != 0 or not rows:
        raise LlamasplitError(f"llama-fit-params failed (exit {result.returncode}): "
                              f"{(result.stderr.strip().splitlines() or ['no output'])[-1]}")
    return rows


def cuda_case_devices(devices: Sequence[Device], env: Mapping[str, str]) -> tuple[list[Device], dict[str, str]]:
    """The GPUs of one case as llama.cpp will number them, and the environment that shows it only those:
    ``CUDA_VISIBLE_DEVICES`` by UUID in order, so they are ``CUDA0..k`` whatever else the box holds.

    >>> ds, e = cuda_case_devices([Device("GPU-b", "CUDA1", "x", "CUDA", 1, 1)], {})
    >>> [d.name for d in ds], e["CUDA_VISIBLE_DEVICES"]
    (['CUDA0'], 'GPU-b')
    """
    renamed = [dataclasses.replace(d, name=f"CUDA{k}", cuda_index=k) for k, d in enumerate(devices)]
    return renamed, {**env, "CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": ",".join(d.id for d in devices)}


@contextlib.contextmanager
def _llama_server(model: Path, args: Sequence[str], env: Mapping[str, str] | None, timeout_s: float) -> Iterator:
    port = free_port("127.0.0.1")
    # -fit off as the runner launches (llama.cpp's default --fit on may rewrite flags left at their default)
    argv = [str(find_binary("llama-server", env)), "-m", str(model), *args, "-fit", "off",
            "--host", "127.0.0.1", "--port", str(port), "-lv", "4"]
    proc = spawn(argv, env=env)
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not proc.alive():
                raise LlamasplitError(f"llama-server exited: {(proc.log_text().strip().splitlines() or ['?'])[-1]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            time.sleep(0.5)
        else:
            raise LlamasplitError(f"llama-server did not load within {timeout_s:.0f} s")
        yield proc, port
    finally:
        proc.stop()


def _one_prompt(port: int, words: int = 600) -> None:
    """POST one prompt of about ``words`` tokens (``n_predict`` 1); a model without a vocabulary may
    refuse it, which only leaves the pool at its post-warm-up size."""
    import json as _json

    body = _json.dumps({"prompt": "hello " * words, "n_predict": 1, "cache_prompt": False}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/completion", data=body,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            r.read(1 << 20)
    except OSError:
        pass


def _nvml_process_mib(pid: int) -> dict[str, float]:
    """GPU UUID -> MiB that ``pid`` holds, from NVML; empty without NVML."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - no driver here: no NVML column
        return {}
    try:
        out = {}
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            uuid = pynvml.nvmlDeviceGetUUID(h)
            uuid = uuid.decode() if isinstance(uuid, bytes) else uuid
            for p in pynvml.nvmlDeviceGetComputeRunningProcesses(h):
                if p.pid == pid and p.usedGpuMemory is not None:
                    out[uuid] = p.usedGpuMemory / MiB
        return out
    finally:
        pynvml.nvmlShutdown()


def _server_rows(case: Case, profile: ModelProfile, devices: Sequence[Device], rpc_args: list[str], *,
                 env: Mapping[str, str] | None, timeout_s: float) -> list[Row]:
    s = case.settings.replace(binary="llama-server")
    name = case.name + " [server]"
    rows: list[Row] = []
    with _llama_server(case.model, [*s.to_args(), *rpc_args], env, timeout_s) as (proc, port):
        _one_prompt(port)  # a prompt ubatch, so the pool and cuBLAS workspace reach their size
        buffers = parse_buffers(proc.log_text())
        nvml = _nvml_process_mib(proc.pid)
    real_bytes: dict[tuple[str, str], int] = {}
    for b in buffers:  # model and KV lines add up (split files, two caches); a compute buffer reserved again replaces
        key = (b.buffer, b.kind)
        real_bytes[key] = b.size_bytes if b.kind == "compute" else real_bytes.get(key, 0) + b.size_bytes
    real = {k: v / MiB for k, v in real_bytes.items()}
    if s.split_mode == "tensor":
        from llamasplit.memory.tensor_split import estimate_tensor

        te = estimate_tensor(profile, devices, s)
        meta = next((b.buffer for b in buffers if b.buffer.startswith("Meta(")), None)
        rows.append(Row(name, "Meta", "model", _mib(te.meta_model_bytes), None, real.get((meta, "model")) if meta else None, None))
        rows.append(Row(name, "Meta", "context", _mib(sum(te.meta_kv_bytes)), None, real.get((meta, "context")) if meta else None, None))
        ests = te.devices
    else:
        ests = estimate(profile, devices, s).devices
    for d, e, label in zip(devices, ests, buffer_names(devices)):
        if s.split_mode != "tensor":
            for kind in ("model", "context", "compute"):
                rows.append(Row(name, d.name, kind, _mib(getattr(e, f"{kind}_bytes")), None, real.get((label, kind)), None))
        if d.id in nvml:
            total = e.model_bytes + e.context_bytes + e.compute_bytes + e.overhead_bytes
            rows.append(Row(name, d.name, "total", _mib(total), None, None, nvml[d.id],
                            note=f"overhead predicted {e.overhead_bytes / MiB:.0f} MiB (cuda_rules)"))
    return rows


# -- the grid ------------------------------------------------------------------------------------

FLAG_SETS: tuple[tuple[str, dict], ...] = (
    ("all layers, 4k", dict(n_ctx=4096)),
    ("fa on, q8_0 cache, 4k", dict(n_ctx=4096, flash_attn="on", type_k="q8_0", type_v="q8_0")),
    ("fa off, 16k, ub 1024", dict(n_ctx=16384, flash_attn="off", n_ubatch=1024)),
    ("-ngl 8, 4k", dict(n_ctx=4096, n_gpu_layers=8)),
)
TWO_GPU_SETS: tuple[tuple[str, dict], ...] = (
    ("-ts 1,1, 4k", dict(n_ctx=4096, tensor_split=(1.0, 1.0))),
    ("-sm tensor, fa on, 4k", dict(n_ctx=4096, split_mode="tensor", flash_attn="on")),
)


def models(tmp: Path, quick: bool) -> dict[str, Path]:
    from synth import write_llama_dense, write_qwen3moe

    from llamasplit.realmodels import fetch_model

    out = {"smollm2": Path(fetch_model("smollm2"))}
    if not quick:
        out["gemma3"] = Path(fetch_model("gemma3"))
        write_llama_dense(tmp / "llama-f16.gguf")
        write_qwen3moe(tmp / "qwen3moe.gguf")
        out["llama-f16"] = tmp / "llama-f16.gguf"
        out["qwen3moe"] = tmp / "qwen3moe.gguf"
    return out


def _free_port_pair() -> int:
    """A loopback port p with p + 1 free too (a worker and its device endpoint)."""
    import socket

    for _ in range(50):
        port = free_port("127.0.0.1")
        if port >= 65535:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise LlamasplitError("no two consecutive free ports on loopback")


@contextlib.contextmanager
def llamasplit_worker(env: Mapping[str, str], timeout_s: float = 60) -> Iterator[str]:
    """A real ``llamasplit worker`` on loopback (its ggml-rpc-server and its device endpoint) under ``env``;
    yields its endpoint once it publishes."""
    from llamasplit.devices.workerinfo import fetch_published

    port = _free_port_pair()
    exe = str(Path(sys.executable).with_name("llamasplit"))
    proc = spawn([exe, "worker", "--port", str(port)], env=env)
    endpoint = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while fetch_published(endpoint, timeout_s=1.0)[0] is None:
            if not proc.alive() or time.monotonic() > deadline:
                raise LlamasplitError(f"llamasplit worker did not publish: {(proc.log_text().strip().splitlines() or ['?'])[-1]}")
            time.sleep(0.2)
        yield endpoint
    finally:
        proc.stop()


def compare_over_worker(case: Case, *, worker_env: Mapping[str, str], client_env: Mapping[str, str],
                        server: bool = True, timeout_s: float = 300) -> list[Row]:
    """The same comparison with the device behind a real ``llamasplit worker``: the client sees only
    the RPC device (hide its local GPUs with ``client_env``), sized by what the worker published.
    On a GPU box this checks that an RPC worker serving CUDA is sized with CUDA's rules."""
    from llamasplit.devices.listdevices import list_devices
    from llamasplit.devices.workerinfo import serving

    with llamasplit_worker(worker_env) as ep:
        listed = [d for d in list_devices(find_binary("llama-server", client_env), [ep], env=client_env) if d.backend == "RPC"]
        devices = serving(listed, ep)
        named = dataclasses.replace(case, name=f"{case.name} via worker ({devices[0].serves}, {devices[0].serves_source})")
        return compare_case(named, devices, rpc=[ep], server=server, env=client_env, timeout_s=timeout_s)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="SmolLM2 only.")
    ap.add_argument("--no-server", action="store_true", help="Skip the llama-server runs (fit-params only).")
    args = ap.parse_args(argv)
    from llamasplit.devices.nvml import NvmlSource

    env = {**os.environ, "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    try:
        fleet = NvmlSource(env=env).read()
    except LlamasplitError as err:
        print(f"gpu-check: {err.message}; this check needs an NVIDIA GPU", file=sys.stderr)
        return 2
    rows: list[Row] = []
    smi = shutil.which("nvidia-smi")
    if smi:
        q = subprocess.run([smi, f"--query-gpu={','.join(SMI_GPU_FIELDS)}", "--format=csv,noheader,nounits"],
                           capture_output=True, text=True, timeout=30)
        # `llamasplit gpus --json` itself (the command users run), against nvidia-smi
        cli = subprocess.run([str(Path(sys.executable).with_name("llamasplit")), "gpus", "--json"],
                             capture_output=True, text=True, timeout=60, env=env)
        shown = Fleet.from_dict(json.loads(cli.stdout)).devices if cli.returncode == 0 else fleet.devices
        rows += compare_gpus(shown, parse_smi_gpus(q.stdout))
    sets = FLAG_SETS + (TWO_GPU_SETS if len(fleet.devices) >= 2 else ())
    devices = list(fleet.devices[:2])
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        for mname, path in models(Path(tmp), args.quick).items():
            for label, kw in sets:
                case = Case(f"{mname}: {label}", path, LlamaSettings(**kw))
                use, case_env = cuda_case_devices(
                    devices if kw.get("split_mode") == "tensor" or kw.get("tensor_split") else devices[:1], env)
                try:
                    rows += compare_case(case, use, server=not args.no_server, env=case_env)
                    if label == FLAG_SETS[0][0]:  # the first GPU again, behind a llamasplit worker on loopback
                        rows += compare_over_worker(case, worker_env={**env, "CUDA_VISIBLE_DEVICES": devices[0].id},
                                                    client_env={**env, "CUDA_VISIBLE_DEVICES": ""},
                                                    server=not args.no_server)
                except LlamasplitError as err:
                    rows.append(Row(case.name, "-", "error", None, None, None, None, note=err.message))
    print(table(rows))
    print(f"\n{len(rows)} rows in {time.monotonic() - started:.0f} s on {', '.join(d.description for d in fleet.devices)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
