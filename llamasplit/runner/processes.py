"""Child processes that always die with us: ``ggml-rpc-server`` workers and llama.cpp servers.

Every child is started from an argv list (never a shell), in its own process group, with its
environment passed as a dict. ``ManagedProcess.stop()`` sends SIGTERM to the group, waits, then
SIGKILL; the context managers call it on every exit path, Ctrl-C included.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from llamasplit.errors import LaunchError, UsageError
from llamasplit.llamacpp.binaries import find_binary
from llamasplit.runner.logs import MAX_LOG_BYTES, LogPump, new_log

LOOPBACK = "127.0.0.1"


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that was free a moment ago on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def wait_for_port(host: str, port: int, timeout_s: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise LaunchError(f"process exited with code {proc.returncode} before listening on {host}:{port}")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.2)
            if sock.connect_ex((host, port)) == 0:
                return
        time.sleep(0.05)
    raise LaunchError(f"nothing listens on {host}:{port} after {timeout_s:.0f} s")


@dataclass
class ManagedProcess:
    """A child in its own process group, with its output in a log file."""

    argv: list[str]
    proc: subprocess.Popen
    log_path: Path
    endpoint: str | None = None
    _log_fh: object = field(default=None, repr=False)
    keep_log: bool = False
    """Keep the log after ``stop`` even if the child ended well (an error message names it)."""
    _pump: LogPump | None = field(default=None, repr=False)
    _stopping: bool = field(default=False, repr=False)
    """We signalled it to stop (``stop_all``): its exit by that signal is a good end."""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self, timeout_s: float = 5.0) -> int:
        """SIGTERM the whole group, then SIGKILL after ``timeout_s``; returns the exit code.

        The log is removed when the child ended well (we stopped it, or it exited 0) and kept when
        it failed on its own or ``keep_log`` is set (see ``runner.logs``)."""
        stopped_by_us = self._stopping or self.proc.poll() is None
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self._log_fh is not None:
            self._log_fh.close()  # type: ignore[attr-defined]
            self._log_fh = None
        if self._pump is not None:
            self._pump.join()
            self._pump = None
            if not self.keep_log and (stopped_by_us or self.proc.returncode == 0):
                with contextlib.suppress(OSError):
                    self.log_path.unlink()
        return self.proc.returncode


def spawn(argv: Sequence[str], *, env: Mapping[str, str] | None = None, log_path: Path | None = None,
          max_log_bytes: int = MAX_LOG_BYTES) -> ManagedProcess:
    """Start ``argv`` in a new process group, output to ``log_path`` (a temp file by default).

    ``max_log_bytes`` bounds the log (head plus latest tail, see ``runner.logs``); a caller that reads
    the whole output afterwards (a test of GGML_RPC_DEBUG's command lines) raises it.
    On Linux the child also gets SIGKILL if we die without stopping it (see ``_die_with_parent_hook``)."""
    return _start(argv, env=env, log_path=log_path, attached=False, max_log_bytes=max_log_bytes)


def spawn_attached(
    argv: Sequence[str], *, env: Mapping[str, str] | None = None, log_path: Path | None = None, stdin: bool = False
) -> ManagedProcess:
    """Like ``spawn``, for a child whose stdout is the product (``llama-completion``'s text): its
    stdout is ours, its stderr (llama.cpp's log) goes to ``log_path``; ``stdin=True`` lends it ours."""
    return _start(argv, env=env, log_path=log_path, attached=True, stdin=stdin)


def _start(
    argv: Sequence[str], *, env: Mapping[str, str] | None, log_path: Path | None, attached: bool, stdin: bool = False,
    max_log_bytes: int = MAX_LOG_BYTES,
) -> ManagedProcess:
    if log_path is None:
        log_path = new_log(Path(argv[0]).name)
    # the output goes through a pipe to a LogPump thread that keeps the file bounded
    read_fd, write_fd = os.pipe()
    try:
        proc = subprocess.Popen(
            list(argv),
            stdin=None if stdin else subprocess.DEVNULL,
            stdout=None if attached else write_fd,
            stderr=write_fd if attached else subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            start_new_session=True,
            preexec_fn=_die_with_parent_hook(),
        )
    except OSError as exc:
        os.close(read_fd)
        os.close(write_fd)
        raise LaunchError(f"cannot start {argv[0]}: {exc.strerror or exc}") from exc
    os.close(write_fd)
    return ManagedProcess(list(argv), proc, log_path, _pump=LogPump(read_fd, log_path, max_bytes=max_log_bytes))


_PR_SET_PDEATHSIG = 1


def _die_with_parent_hook():
    """A ``preexec_fn`` that makes the child get SIGKILL when we die, even by SIGKILL (Linux).

    The kernel sends it when the *thread* that forked exits, so it is only armed from the main
    thread (which lives as long as the process); elsewhere, and off Linux, ``None``.
    """
    import threading

    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:  # we died between fork and prctl
            os._exit(1)

    return hook


def stop_all(processes: Sequence[ManagedProcess], timeout_s: float = 5.0) -> None:
    """Stop several children within ``timeout_s`` in all: SIGTERM every group at once, one shared
    wait, then SIGKILL whatever is left. Children that already exited are just reaped."""
    live = [p for p in processes if p.proc.poll() is None]
    for p in live:
        p._stopping = True
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for p in live:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    for p in processes:
        p.stop(timeout_s=0.5)  # SIGKILL the stragglers' groups, close the logs


def port_in_use(host: str, port: int) -> bool:
    """Whether someone already holds ``host:port`` (binding it fails with EADDRINUSE).

    ``SO_REUSEADDR`` as servers set it: connections of a server that just stopped, lingering in
    TIME_WAIT, do not count. Other bind errors (an address not on this machine, a privileged
    port) are left for the server itself to report.
    """
    import errno

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


def endpoint_refuses(endpoint: str, timeout_s: float = 0.5) -> bool:
    """``True`` when ``host:port`` actively refuses a connection: nothing listens there any more.

    A timeout or an accepted connection counts as alive (a worker busy with its one client queues
    us). The connection is closed at once; a ggml-rpc-server reads EOF and moves on.
    """
    host, _, port = endpoint.rpartition(":")
    host = host.strip("[]")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            return False
    except ConnectionRefusedError:
        return True
    except OSError:
        return False


def check_bind_host(host: str, allow_remote: bool) -> str | None:
    """Refuse a non-loopback bind without ``allow_remote``; return the warning to print otherwise."""
    if host in (LOOPBACK, "localhost", "::1"):
        return None
    if not allow_remote:
        raise UsageError(
            f"refusing to bind an RPC worker to {host}: llama.cpp RPC has no authentication",
            remedy="bind 127.0.0.1, or pass --allow-remote on a network you trust",
        )
    return (
        f"WARNING: RPC worker listening on {host}: llama.cpp RPC has no authentication or encryption; "
        "anyone who can reach this port can run code on this machine's devices. Use only on a trusted network."
    )


def start_rpc_worker(
    *,
    host: str = LOOPBACK,
    port: int | None = None,
    threads: int | None = None,
    devices: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
    timeout_s: float = 30.0,
    max_log_bytes: int = MAX_LOG_BYTES,
) -> ManagedProcess:
    """Start one ``ggml-rpc-server`` and wait until it listens."""
    port = port or free_port(host)
    argv = [str(find_binary("ggml-rpc-server", env)), "-H", host, "-p", str(port)]
    if threads:
        argv += ["-t", str(threads)]
    if devices:
        argv += ["-d", ",".join(devices)]
    worker = spawn(argv, env=env, max_log_bytes=max_log_bytes)
    worker.endpoint = f"{host}:{port}"
    try:
        wait_for_port(host, port, timeout_s, worker.proc)
    except LaunchError as exc:
        worker.keep_log = True
        worker.stop()
        tail = worker.log_text().strip().splitlines()[-1:] or ["no output"]
        raise LaunchError(f"ggml-rpc-server on {host}:{port} did not start: {exc.message}; it said: {tail[0]}",
                          remedy=f"its log: {worker.log_path}") from exc
    return worker


@contextlib.contextmanager
def rpc_workers(n: int, *, host: str = LOOPBACK, threads: int | None = 1, env: Mapping[str, str] | None = None,
                max_log_bytes: int = MAX_LOG_BYTES) -> Iterator[list[ManagedProcess]]:
    """``n`` RPC workers on free loopback ports, all stopped on exit."""
    workers: list[ManagedProcess] = []
    try:
        for _ in range(n):
            workers.append(start_rpc_worker(host=host, threads=threads, env=env, max_log_bytes=max_log_bytes))
        yield workers
    finally:
        for w in workers:
            w.stop()


def run_to_end(argv: Sequence[str], *, timeout_s: float, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run a short llama.cpp command to completion; its group is killed on timeout or Ctrl-C."""
    proc = subprocess.Popen(
        list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=dict(env) if env is not None else None, start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        if sys.exc_info()[0] is subprocess.TimeoutExpired:
            raise LaunchError(f"{Path(argv[0]).name} did not finish in {timeout_s:.0f} s") from None
        raise
    return subprocess.CompletedProcess(list(argv), proc.returncode, out, err)
