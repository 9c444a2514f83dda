"""Start llama.cpp exactly as a plan says: build the argv (pure), then launch (thin).

``build_argv(plan, launch)`` is the whole command: the binary, ``-m MODEL``, the plan's flags,
``-fit off`` (llama.cpp's default ``--fit on`` may rewrite flags the plan left at their default),
``-lv 4`` (the buffer-size lines ``verify`` reads are INFO lines), ``--host/--port`` for
llama-server, and last the user's extra arguments, so they win. ``child_env(plan, base_env)`` pins
the CUDA devices by UUID in plan order and drops the ``LLAMA_ARG_*`` variables that would change
memory behind the plan's back.

``launch`` spawns the child in its own process group, shows a status line while llama-server
loads, waits for ``/health`` (bounded) and returns a ``Server``. A child that dies while loading
becomes one ``LaunchError`` line carrying the llama.cpp line that says why.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from llamasplit.devices.cuda_env import launch_env
from llamasplit.devices.listdevices import check_resolvable
from llamasplit.errors import LaunchError, UsageError
from llamasplit.llamacpp.binaries import find_binary
from llamasplit.planner.plan import Plan
from llamasplit.runner.processes import (
    LOOPBACK, ManagedProcess, endpoint_refuses, port_in_use, spawn, spawn_attached, stop_all,
)
from llamasplit.runner.logs import new_log
from llamasplit.runner.verify import Verification, verify

SERVER = "llama-server"
COMPLETION = "llama-completion"
CLI = "llama-cli"
KINDS = (SERVER, COMPLETION, CLI)

LOG_VERBOSITY = 4
"""``-lv 4``: the level at which llama.cpp prints its buffer sizes."""
DEFAULT_PORT = 8080
"""llama-server's own default."""
STOP_TIMEOUT_S = 5.0
PROBE_INTERVAL_S = 2.0
"""How often a running server's RPC workers are checked for a refused connection."""

PLAN_ENV_VARS = (
    "LLAMA_ARG_MODEL", "LLAMA_ARG_N_GPU_LAYERS", "LLAMA_ARG_SPLIT_MODE", "LLAMA_ARG_TENSOR_SPLIT",
    "LLAMA_ARG_MAIN_GPU", "LLAMA_ARG_OVERRIDE_TENSOR", "LLAMA_ARG_CPU_MOE", "LLAMA_ARG_N_CPU_MOE",
    "LLAMA_ARG_N_CPU_FFN", "LLAMA_ARG_CTX_SIZE", "LLAMA_ARG_BATCH", "LLAMA_ARG_UBATCH", "LLAMA_ARG_N_PARALLEL",
    "LLAMA_ARG_KV_UNIFIED", "LLAMA_ARG_KV_UNIFIED_PER_SLOT", "LLAMA_ARG_CACHE_TYPE_K", "LLAMA_ARG_CACHE_TYPE_V",
    "LLAMA_ARG_FLASH_ATTN", "LLAMA_ARG_SWA_FULL", "LLAMA_ARG_KV_OFFLOAD", "LLAMA_ARG_LOAD_MODE",
    "LLAMA_ARG_REPACK", "LLAMA_ARG_RPC", "LLAMA_ARG_DEVICE", "LLAMA_ARG_FIT", "LLAMA_ARG_FIT_TARGET",
    "LLAMA_ARG_FIT_CTX", "LLAMA_ARG_HOST", "LLAMA_ARG_PORT", "LLAMA_ARG_LOG_VERBOSITY",
    # the projector (common/arg.cpp: --mmproj, --mmproj-url, --mmproj-auto, --mmproj-offload, -mmdev)
    "LLAMA_ARG_MMPROJ", "LLAMA_ARG_MMPROJ_URL", "LLAMA_ARG_MMPROJ_AUTO", "LLAMA_ARG_MMPROJ_OFFLOAD",
    "MTMD_BACKEND_DEVICE",
)
"""llama.cpp reads these for flags we leave unset; each would change what the plan predicted."""


@dataclass(frozen=True)
class LaunchOptions:
    """How to start llama.cpp for a plan: what the plan itself does not say."""

    binary: str | None = None
    """A binary name (llama-server, llama-completion, llama-cli) or a path; ``None`` = the plan's binary."""
    host: str = LOOPBACK
    """llama-server's address; loopback unless you mean to serve the network."""
    port: int = DEFAULT_PORT
    extra_args: tuple[str, ...] = ()
    """Arguments given after ``--``: appended last, so they win over the plan's."""
    ready_timeout_s: float = 600.0
    """How long llama-server may take to load before we give up."""


def take_address(options: LaunchOptions, *, host_given: bool, port_given: bool) -> LaunchOptions:
    """``--host H`` / ``--port P`` among the arguments after ``--`` become the options' host and port.

    llama-server takes the last of each flag, so an extra ``--port`` wins over ours and we would
    wait for it at the wrong address: take them over instead (pure). Given both ways with
    different values, or without a usable value, it is a ``UsageError``.

    >>> o = take_address(LaunchOptions(extra_args=("-t", "4", "--port", "9000")), host_given=False, port_given=False)
    >>> o.port, o.extra_args
    (9000, ('-t', '4'))
    """
    extra = list(options.extra_args)
    found: dict[str, str] = {}
    i = 0
    while i < len(extra):
        if extra[i] in ("--host", "--port"):
            flag = extra[i]
            if i + 1 >= len(extra):
                raise UsageError(f"{flag} after -- has no value", remedy=f"give llamasplit {flag} VALUE instead")
            found[flag] = extra[i + 1]
            del extra[i:i + 2]
            continue
        i += 1
    host, port = options.host, options.port
    if "--port" in found:
        text = found["--port"]
        if not text.isdigit() or not 0 < int(text) < 65536:
            raise UsageError(f"--port {text!r} after -- is not a port number", remedy="give a port from 1 to 65535")
        if port_given and int(text) != options.port:
            raise UsageError(f"--port {options.port} and -- --port {text} disagree", remedy="give the port once")
        port = int(text)
    if "--host" in found:
        if host_given and found["--host"] != options.host:
            raise UsageError(f"--host {options.host} and -- --host {found['--host']} disagree", remedy="give the host once")
        host = found["--host"]
    return replace(options, host=host, port=port, extra_args=tuple(extra))


def default_binary(plan: Plan) -> str:
    """The binary a plan was made for; llama-server for a llama-cpp-python or fit-params plan."""
    return plan.settings.binary if plan.settings.binary in KINDS else SERVER


def binary_kind(binary: str) -> str:
    """Which llama.cpp program ``binary`` (name or path) is; an unknown name is taken for llama-server.

    >>> binary_kind("/opt/llama/bin/llama-completion"), binary_kind("llama-server-cuda"), binary_kind("./server")
    ('llama-completion', 'llama-server', 'llama-server')
    """
    name = Path(binary).name
    for kind in KINDS:
        if name.startswith(kind):
            return kind
    return SERVER


def build_argv(plan: Plan, launch: LaunchOptions) -> list[str]:
    """The complete command for ``plan`` (pure): binary, model, plan flags, ours, then the extras."""
    binary = launch.binary or default_binary(plan)
    argv = [binary, *plan.model_args(), *plan.to_llama_args(), "-fit", "off", "-lv", str(LOG_VERBOSITY)]
    if binary_kind(binary) == SERVER:
        argv += ["--host", launch.host, "--port", str(launch.port)]
    return argv + list(launch.extra_args)


def child_env(plan: Plan, base_env: Mapping[str, str]) -> dict[str, str]:
    """The child's environment (pure): CUDA devices pinned in plan order, plan-changing ``LLAMA_ARG_*`` dropped."""
    env = launch_env(plan.fleet.devices, base_env)
    for name in PLAN_ENV_VARS:
        env.pop(name, None)
    return env


def dropped_env(base_env: Mapping[str, str]) -> list[str]:
    """The ``LLAMA_ARG_*`` variables of ``base_env`` that ``child_env`` leaves out."""
    return [name for name in PLAN_ENV_VARS if name in base_env]


# flags the plan (or llamasplit) sets: canonical name -> (aliases, takes a value)
_PLAN_FLAGS: dict[str, tuple[tuple[str, ...], bool]] = {
    "-m": (("-m", "--model"), True),
    "-ngl": (("-ngl", "--gpu-layers", "--n-gpu-layers"), True),
    "-sm": (("-sm", "--split-mode"), True),
    "-ts": (("-ts", "--tensor-split"), True),
    "-mg": (("-mg", "--main-gpu"), True),
    "-ot": (("-ot", "--override-tensor"), True),
    "--cpu-moe": (("-cmoe", "--cpu-moe"), False),
    "--n-cpu-moe": (("-ncmoe", "--n-cpu-moe"), True),
    "-ncffn": (("-ncffn", "--n-cpu-ffn"), True),
    "-c": (("-c", "--ctx-size"), True),
    "-b": (("-b", "--batch-size"), True),
    "-ub": (("-ub", "--ubatch-size"), True),
    "-np": (("-np", "--parallel"), True),
    "-kvu": (("-kvu", "--kv-unified", "-no-kvu", "--no-kv-unified"), False),
    "-ctk": (("-ctk", "--cache-type-k"), True),
    "-ctv": (("-ctv", "--cache-type-v"), True),
    "-fa": (("-fa", "--flash-attn"), True),
    "--swa-full": (("--swa-full",), False),
    "-nkvo": (("-nkvo", "--no-kv-offload", "-kvo", "--kv-offload"), False),
    "-lm": (("-lm", "--load-mode", "--no-mmap"), True),
    "--rpc": (("--rpc",), True),
    "-dev": (("-dev", "--device"), True),
    # the draft model and LoRA adapters the plan sizes (common/arg.cpp)
    "-md": (("-md", "--model-draft", "--spec-draft-model"), True),
    "-ngld": (("-ngld", "--gpu-layers-draft", "--n-gpu-layers-draft", "--spec-draft-ngl"), True),
    "-devd": (("-devd", "--device-draft", "--spec-draft-device"), True),
    "-ctkd": (("-ctkd", "--cache-type-k-draft", "--spec-draft-type-k"), True),
    "-ctvd": (("-ctvd", "--cache-type-v-draft", "--spec-draft-type-v"), True),
    "--spec-type": (("--spec-type",), True),
    "--lora": (("--lora",), True),
    "--lora-scaled": (("--lora-scaled",), True),
    # the multimodal projector the plan sizes (common/arg.cpp)
    "--mmproj": (("-mm", "--mmproj"), True),
    "-mmu": (("-mmu", "--mmproj-url"), True),
    "--no-mmproj-offload": (("--mmproj-offload", "--no-mmproj-offload"), False),
    "-mmdev": (("-mmdev", "--mmproj-device"), True),
    "-fit": (("-fit", "--fit"), True),
    "-lv": (("-lv", "--verbosity", "--log-verbosity"), True),
    "--host": (("--host",), True),
    "--port": (("--port",), True),
}
_ALIASES = {alias: canon for canon, (aliases, _) in _PLAN_FLAGS.items() for alias in aliases}


def _flag_values(args: Sequence[str]) -> list[tuple[str, str, str | None]]:
    """``(canonical, as written, value)`` for every plan-relevant flag in ``args``."""
    out = []
    i = 0
    while i < len(args):
        canon = _ALIASES.get(args[i])
        if canon is None:
            i += 1
            continue
        takes_value = _PLAN_FLAGS[canon][1] and args[i] != "--no-mmap"
        value = args[i + 1] if takes_value and i + 1 < len(args) else None
        out.append((canon, args[i], value))
        i += 2 if takes_value else 1
    return out


def conflicting_args(plan: Plan, launch: LaunchOptions) -> list[str]:
    """One warning per extra argument that changes what the plan predicted (pure).

    The extras are appended last, so llama.cpp takes them over the plan's flags.
    """
    base = build_argv(plan, replace(launch, extra_args=()))
    planned = {canon: value for canon, _, value in _flag_values(base[1:])}
    warnings = []
    for canon, written, value in _flag_values(list(launch.extra_args)):
        shown = f"{written} {value}" if value is not None else written
        if canon in ("--host", "--port"):
            warnings.append(f"{shown} after -- replaces llamasplit's {canon}; give llamasplit {canon} instead, "
                            "or it waits for llama-server at the wrong address")
        elif canon == "-lv":
            if value is not None and value.isdigit() and int(value) < LOG_VERBOSITY:
                warnings.append(f"{shown} after -- hides the buffer sizes llamasplit compares with the plan")
        elif canon == "-fit":
            if value != "off":
                warnings.append(f"{shown} after -- lets llama.cpp re-fit and change the plan's flags")
        elif canon in planned:
            if value != planned[canon] or value is None:
                was = f"{canon} {planned[canon]}" if planned[canon] is not None else canon
                warnings.append(f"{shown} after -- overrides the plan's {was}: memory use will differ from the prediction")
        else:
            warnings.append(f"{shown} after -- changes a setting the plan left at llama.cpp's default: "
                            "memory use will differ from the prediction")
    return warnings


# ---------------------------------------------------------------------------------------------
# why llama.cpp failed

_LOG_PREFIX_RE = re.compile(r"^\s*(?:\d+(?:\.\d+){3}\s+)?(?:(?P<level>[IWEDT])\s+)?")
_ABORT_RE = re.compile(r"^\S*\.(?:c|cc|cpp|cu|h|m):\d+:\s*(?P<msg>.+)$")
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_NOISE = ("#", "[New LWP", "[Thread", "[Inferior", "Using host libthread_db", "0x", "warning: ")
_CAUSES: tuple[tuple[str, re.Pattern[str], str], ...] = (
    ("memory", re.compile(r"out of memory|failed to allocate|unable to allocate|cannot allocate|cudaMalloc|bad_alloc", re.I),
     "the plan does not fit what is free now: free memory, or re-plan with a shorter -c, a q8_0 KV cache or fewer -ngl"),
    ("bind", re.compile(r"couldn't bind|address already in use|\bbind\b", re.I),
     "pick another --port, or stop what listens there"),
    ("rpc", re.compile(r"Remote RPC server|Failed to connect to|RPC handshake", re.I),
     "check that every RPC worker is up (`llamasplit worker` on each host)"),
    ("model", re.compile(r"load model|GGUF|model architecture|llama_model_load", re.I),
     "check the model file (`llamasplit inspect MODEL`)"),
)
_GENERIC_RE = re.compile(r"\berror\b|failed|cannot|unable|invalid|not found|abort", re.I)


def _clean_line(line: str) -> tuple[str | None, str]:
    match = _LOG_PREFIX_RE.match(line)
    level = match.group("level") if match else None
    text = _CONTROL_RE.sub("", line[match.end():] if match else line)
    abort = _ABORT_RE.match(text.strip())
    if abort:
        text = abort.group("msg")
    return level, " ".join(text.split())


def explain_failure(log_text: str) -> tuple[str, str | None] | None:
    """The llama.cpp line that says why it failed, and what to do; ``None`` if nothing looks like a cause.

    Out-of-memory, bind and RPC lines first; then the first error-level line, which names the
    cause before the lines that repeat it (``failed to load model``, ``exiting due to ...``).

    >>> explain_failure("0.00.1 I ok\\n0.00.003.728 E srv  start: couldn't bind HTTP server socket, port: 8080\\n")
    ("srv start: couldn't bind HTTP server socket, port: 8080", 'pick another --port, or stop what listens there')
    """
    lines = []
    for raw in log_text.splitlines():
        if not raw.strip() or raw.lstrip().startswith(_NOISE):
            continue
        level, text = _clean_line(raw)
        if text and "exiting due to" not in text:
            lines.append((level, text))
    for _, pattern, remedy in _CAUSES[:3]:
        for level, text in lines:
            if pattern.search(text) and (level in ("E", "W", None)):
                return _short(text), remedy
    for level, text in lines:
        if level == "E" or (level is None and _GENERIC_RE.search(text)):
            remedy = next((r for _, p, r in _CAUSES if p.search(text)), None)
            return _short(text), remedy
    return None


def _short(text: str, limit: int = 240) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe_exit(returncode: int) -> str:
    """``exit code N`` or ``killed by SIGKILL``."""
    if returncode < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-returncode).name}"
        return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


def exit_status(returncode: int) -> int:
    """A child's return code as a shell exit status (a signal N becomes 128 + N)."""
    return 128 - returncode if returncode < 0 else returncode


# ---------------------------------------------------------------------------------------------
# the running child


_STAGES = (
    ("llama_model_loader", "reading the model"),
    ("load_tensors:", "loading the weights"),
    ("llama_kv_cache", "allocating the KV cache"),
    ("sched_reserve", "reserving compute buffers"),
    ("warming up", "warming up"),
    ("model loaded", "starting the HTTP server"),
)


def loading_stage(log_text: str) -> str:
    """What llama-server is doing, judged from the last stage marker in its log."""
    stage, at = "starting", -1
    for marker, name in _STAGES:
        pos = log_text.rfind(marker)
        if pos > at:
            stage, at = name, pos
    return stage


class StatusLine:
    """The loading status on stderr: rewritten in place on a terminal, one line per stage elsewhere."""

    def __init__(self, label: str, stream=None) -> None:
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last_stage: str | None = None
        self._width = 0

    def __call__(self, stage: str, elapsed_s: float) -> None:
        if self.tty:
            text = f"llamasplit: {self.label}: {stage}... {elapsed_s:.0f} s"
            self.stream.write("\r" + text.ljust(self._width))
            self._width = len(text)
            self.stream.flush()
        elif stage != self._last_stage:
            print(f"llamasplit: {self.label}: {stage}...", file=self.stream, flush=True)
        self._last_stage = stage

    def done(self) -> None:
        if self.tty and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
            self._width = 0


Progress = Callable[[str, float], None]

_LIVE: weakref.WeakSet[Server] = weakref.WeakSet()


@atexit.register
def _stop_leftovers() -> None:
    for server in list(_LIVE):
        server.stop()


@contextlib.contextmanager
def _signals_held() -> object:
    """Hold off SIGINT/SIGTERM while children are being stopped, so a second Ctrl-C cannot orphan one."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)


class Server:
    """A launched llama.cpp child (and the RPC workers we started for it), stopped together.

    ``url`` is llama-server's address (``None`` for llama-completion/llama-cli). ``wait()`` blocks
    until the child exits and raises ``LaunchError`` when an RPC worker dies under it; ``stop()``
    ends the child and our workers within 5 s; ``report()`` compares the plan with the allocation.
    """

    def __init__(
        self, plan: Plan, argv: list[str], process: ManagedProcess, *, url: str | None,
        workers: Sequence[ManagedProcess] = (), endpoints: Sequence[str] = (),
    ) -> None:
        self.plan = plan
        self.argv = argv
        self.process = process
        self.url = url
        self.workers = list(workers)
        self.endpoints = list(endpoints)
        """RPC endpoints the plan uses; those not among ``workers`` are checked by connecting."""
        self.name = Path(argv[0]).name
        self._next_probe = time.monotonic() + PROBE_INTERVAL_S
        _LIVE.add(self)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def log_path(self) -> Path:
        return self.process.log_path

    def alive(self) -> bool:
        return self.process.alive()

    def report(self) -> Verification:
        """Predicted vs actual per device, from the buffer sizes llama.cpp logged."""
        return verify(self.plan, self.process.log_text())

    def explain(self) -> tuple[str, str | None] | None:
        """The llama.cpp line that says why it failed, and the remedy."""
        return explain_failure(self.process.log_text())

    def dead_worker(self, *, probe: bool = True) -> str | None:
        """A sentence about the first RPC worker that is gone, or ``None`` when all look alive."""
        owned = {w.endpoint for w in self.workers}
        for w in self.workers:
            if not w.alive():
                return f"RPC worker {w.endpoint} (pid {w.pid}) died ({describe_exit(w.proc.returncode)})"
        if probe:
            for endpoint in self.endpoints:
                if endpoint not in owned and endpoint_refuses(endpoint):
                    return f"RPC worker {endpoint} stopped answering (connection refused)"
        return None

    def _keep_logs(self) -> None:
        """An error will name the logs: keep them (the child's and our workers') after stop."""
        for p in (self.process, *self.workers):
            p.keep_log = True

    def _log_names(self) -> str:
        return ", ".join(str(p.log_path) for p in (self.process, *self.workers))

    def failure(self, when: str) -> LaunchError:
        """The one-line error for a child that exited with an error ``when`` (e.g. 'while loading')."""
        rc = self.process.proc.returncode
        why = self.explain()
        line, remedy = why if why else ("it printed no error", None)
        remedy = f"{remedy}; " if remedy else ""
        self.process.keep_log = True
        return LaunchError(f"{self.name} exited ({describe_exit(rc)}) {when}: {line}", remedy=f"{remedy}full log: {self.log_path}")

    def check(self) -> int | None:
        """Non-blocking: the child's return code if it exited, else ``None``; ``LaunchError`` when an
        RPC worker died (the child is stopped then: it cannot compute without its worker)."""
        rc = self.process.proc.poll()
        probe = False
        now = time.monotonic()
        if rc is not None or now >= self._next_probe:
            probe = True
            self._next_probe = now + PROBE_INTERVAL_S
        dead = self.dead_worker(probe=probe and bool(self.endpoints))
        if dead is not None:
            self._keep_logs()
            self.stop()
            why = self.explain() if rc is not None else None
            said = f"; {self.name} said: {why[0]}" if why else ""
            raise LaunchError(
                f"{dead} while {self.name} was running{said}",
                remedy=f"restart the worker (`llamasplit worker` on its host) and run again; logs: {self._log_names()}",
            )
        return rc

    def wait(self, timeout_s: float | None = None, poll_s: float = 0.2) -> int | None:
        """Block until the child exits (its return code) or ``timeout_s`` passes (``None``)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            rc = self.check()
            if rc is not None:
                return rc
            if deadline is not None and time.monotonic() >= deadline:
                return None
            with contextlib.suppress(Exception):
                self.process.proc.wait(timeout=poll_s)

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        """Stop the child and the workers we started (SIGTERM, then SIGKILL); the child's return code."""
        with _signals_held():
            stop_all([self.process, *self.workers], timeout_s=timeout_s)
        _LIVE.discard(self)
        return self.process.proc.returncode

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = self.url or "no HTTP"
        return f"<Server {self.name} pid {self.pid} {where} {'running' if self.alive() else 'stopped'}>"


def resolve_binary(binary: str, env: Mapping[str, str] | None = None) -> Path:
    """A path as given (it must be an executable file), or a name looked up by ``find_binary``."""
    if os.sep in binary or binary.startswith("."):
        path = Path(binary).expanduser()
        if not path.is_file():
            raise LaunchError(f"llama.cpp binary {path} not found", remedy="give the path of a built llama-server, or just its name")
        if not os.access(path, os.X_OK):
            raise LaunchError(f"llama.cpp binary {path} is not executable", remedy=f"chmod +x {path}")
        return path
    return find_binary(binary, env)


def _probe_host(host: str) -> str:
    return {"0.0.0.0": LOOPBACK, "": LOOPBACK, "::": "::1"}.get(host, host)


def server_url(host: str, port: int) -> str:
    """Where to reach a llama-server bound to ``host:port`` from this machine.

    >>> server_url("0.0.0.0", 8080), server_url("::1", 9000)
    ('http://127.0.0.1:8080', 'http://[::1]:9000')
    """
    h = _probe_host(host)
    return f"http://[{h}]:{port}" if ":" in h else f"http://{h}:{port}"


_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def health(url: str, timeout_s: float = 1.0) -> str | None:
    """``ok`` (200), ``loading`` (503), or ``None`` when nothing answers at ``url``/health."""
    try:
        with _NO_PROXY.open(url + "/health", timeout=timeout_s) as resp:
            return "ok" if resp.status == 200 else None
    except urllib.error.HTTPError as exc:
        return "loading" if exc.code == 503 else None
    except (urllib.error.URLError, OSError):
        return None


def _wait_ready(server: Server, timeout_s: float, progress: Progress | None) -> None:
    start = time.monotonic()
    assert server.url is not None
    while True:
        if server.process.proc.poll() is not None:
            raise server.failure("while loading")
        dead = server.dead_worker(probe=False)
        if dead is not None:
            server._keep_logs()
            raise LaunchError(f"{dead} while {server.name} was loading",
                              remedy=f"restart the worker and run again; logs: {server._log_names()}")
        state = health(server.url)
        if state == "ok" and server.process.proc.poll() is None:
            return
        elapsed = time.monotonic() - start
        if elapsed > timeout_s:
            server.process.keep_log = True
            raise LaunchError(
                f"{server.name} did not become ready within {timeout_s:.0f} s (still {loading_stage(server.process.log_text())})",
                remedy=f"see its log {server.log_path}",
            )
        if progress is not None:
            progress(loading_stage(server.process.log_text()), elapsed)
        time.sleep(0.1)


def launch(
    plan: Plan,
    options: LaunchOptions | None = None,
    *,
    env: Mapping[str, str] | None = None,
    progress: Progress | None = None,
    workers: Sequence[ManagedProcess] = (),
) -> Server:
    """Start llama.cpp for ``plan``; for llama-server, return once ``/health`` answers.

    ``env`` is the base environment (default ``os.environ``); ``workers`` are RPC workers we
    started for this run: they are watched and stopped with the child. Any failure stops
    everything and raises one ``LaunchError`` line.
    """
    options = options or LaunchOptions()
    base_env = dict(os.environ if env is None else env)
    endpoints = [d.device_id[len("rpc:"):].rpartition("#")[0] for d in plan.devices if (d.device_id or "").startswith("rpc:")]
    try:
        if plan.fleet.simulated:
            raise UsageError(
                f"this plan is for simulated hardware ({plan.fleet.source}); it cannot run here",
                remedy="plan for this machine (drop --fleet), or print the command with --dry-run",
            )
        binary = resolve_binary(options.binary or default_binary(plan), base_env)
        options = replace(options, binary=str(binary))
        kind = binary_kind(str(binary))
        if kind == SERVER and port_in_use(options.host, options.port):
            raise LaunchError(
                f"port {options.port} on {options.host} is in use",
                remedy="pick another with --port, or stop what listens there",
            )
        argv = build_argv(plan, options)
        check_resolvable(endpoints)
        child = child_env(plan, base_env)
        if kind == SERVER:
            process = spawn(argv, env=child, log_path=new_log(kind))
        else:
            process = spawn_attached(argv, env=child, log_path=new_log(kind), stdin=kind == CLI)
    except BaseException:
        stop_all(list(workers))
        raise
    server = Server(
        plan, argv, process, url=server_url(options.host, options.port) if kind == SERVER else None,
        workers=workers, endpoints=list(dict.fromkeys(endpoints)),
    )
    if kind == SERVER:
        try:
            _wait_ready(server, options.ready_timeout_s, progress)
        except BaseException:
            server.stop()
            raise
    return server
