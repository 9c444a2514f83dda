"""Devices as llama.cpp itself sees them: parse ``--list-devices`` and run it.

``common_print_available_devices`` (common/arg.cpp) prints::

    Available devices:
      CUDA0: NVIDIA GeForce RTX 3090 (24135 MiB, 23800 MiB free)
      RPC0: 127.0.0.1:50052 (24105 MiB, 24105 MiB free)

(``  (none)`` when there is no non-CPU device). Sizes are whole MiB, rounded down. RPC devices are
named ``RPC<n>`` with the endpoint as description in current llama.cpp, and ``RPC<n>[host:port]``
in older builds; both are read. ``--rpc`` must come before ``--list-devices`` on the command line:
the listing is printed (and the process exits) when that flag is parsed.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from llamasplit.devices.device import Device
from llamasplit.errors import DeviceQueryError, UsageError
from llamasplit.untrusted import printable
from llamasplit.units import MiB

_HEADER = "Available devices:"
_LINE_RE = re.compile(
    r"^\s+(?P<name>[A-Za-z_][\w.-]*(?:\[[^\]\s]*\])?): (?P<desc>.*) "
    r"\((?P<total>\d+) MiB, (?P<free>\d+) MiB free\)\s*$"
)
_ENDPOINT_RE = re.compile(r"^(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(?P<port>\d{1,5})$")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _clean(text: str) -> str:
    """Device strings come from another program (an RPC worker's from another host): drop control
    characters, then the other unsafe ones (bidi overrides, zero-width) become ``?``, length bounded."""
    return printable(_CONTROL_RE.sub("", text).strip(), limit=200)


def parse_endpoints(values: str | Sequence[str] | None) -> list[str]:
    """``host:port`` endpoints from ``"a:1,b:2"`` or a list of such strings; ``UsageError`` on a bad one.

    A description after ``=`` (``boxb:50052=3090``, see ``devices.workerinfo``) is not part of the endpoint.

    >>> parse_endpoints(["127.0.0.1:50052,10.0.0.2:50052=3090"])
    ['127.0.0.1:50052', '10.0.0.2:50052']
    """
    if values is None:
        return []
    items = [values] if isinstance(values, str) else list(values)
    out: list[str] = []
    for item in items:
        for raw in item.split(","):
            endpoint = raw.partition("=")[0].strip()
            match = _ENDPOINT_RE.match(endpoint)
            if not match or not 0 < int(match.group("port")) < 65536:
                raise UsageError(f"RPC endpoint {endpoint!r} is not host:port", remedy="e.g. --rpc 192.168.1.20:50052")
            if endpoint not in out:
                out.append(endpoint)
    return out


def check_resolvable(endpoints: Sequence[str]) -> None:
    """Resolve each endpoint's host name ourselves, so an unknown name is said as such (llama.cpp
    aborts on it, and the message was "did not answer (exited with -6)")."""
    import socket

    for endpoint in endpoints:
        host, _, port = endpoint.rpartition(":")
        name = host.strip("[]")
        try:
            socket.getaddrinfo(name, int(port), type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:  # UnicodeError: an empty or over-long label
            why = exc.strerror if isinstance(exc, socket.gaierror) and exc.strerror else "not a valid host name"
            raise DeviceQueryError(f"RPC worker {endpoint}: cannot resolve the host name {name!r} ({why})",
                                   remedy="check the name, or give the worker's IP address") from exc


def _backend(name: str) -> str:
    match = re.match(r"[A-Za-z_]+?(?=\d|\[|$)", name)
    return match.group(0) if match else name


def parse_list_devices(text: str) -> list[Device]:
    """Devices from ``--list-devices`` output, in llama.cpp's order.

    ``id`` is ``rpc:host:port#n`` for the n-th device of an RPC endpoint and ``llama.cpp:NAME``
    otherwise (llama.cpp prints no UUID). A listing without the ``Available devices:`` header, or
    with a line under it that is not a device, raises ``DeviceQueryError``.
    """
    lines = text.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == _HEADER)
    except StopIteration:
        raise DeviceQueryError(
            "llama.cpp printed no 'Available devices:' list",
            remedy="check the binary with `llama-server --list-devices`",
        ) from None
    devices: list[Device] = []
    per_endpoint: dict[str, int] = {}
    for line in lines[start + 1:]:
        if not line.strip():
            break
        if line.strip() == "(none)":
            return []
        match = _LINE_RE.match(line)
        if match is None:
            if not line.startswith((" ", "\t")):
                break  # the listing ended; llama.cpp printed something else after it
            raise DeviceQueryError(
                f"cannot read llama.cpp device line {_clean(line)!r}",
                remedy="expected '  NAME: DESCRIPTION (TOTAL MiB, FREE MiB free)'",
            )
        name = _clean(match.group("name"))
        desc = _clean(match.group("desc"))
        backend = _backend(name)
        host = "localhost"
        index: int | None = None
        digits = re.match(r"[A-Za-z_]+(\d+)", name)
        if digits:
            index = int(digits.group(1))
        if backend == "RPC":
            bracket = re.search(r"\[([^\]]+)\]", name)
            host = bracket.group(1) if bracket else desc
            n = per_endpoint.get(host, 0)
            per_endpoint[host] = n + 1
            device_id = f"rpc:{host}#{n}"
        else:
            device_id = f"llama.cpp:{name}"
        devices.append(
            Device(
                id=device_id,
                name=name,
                description=desc,
                backend=backend,
                total_bytes=int(match.group("total")) * MiB,
                free_bytes=int(match.group("free")) * MiB,
                cuda_index=index if backend == "CUDA" else None,
                host=host,
                notes=("from llama.cpp --list-devices (sizes rounded down to MiB)",),
            )
        )
    return devices


def list_devices_argv(binary: str | Path, rpc: Sequence[str] = ()) -> list[str]:
    """The argv for a listing; ``--rpc`` goes first, since ``--list-devices`` exits as soon as it is parsed.

    >>> list_devices_argv("/bin/llama-server", ["127.0.0.1:50052"])
    ['/bin/llama-server', '--rpc', '127.0.0.1:50052', '--list-devices']
    """
    argv = [str(binary)]
    if rpc:
        argv += ["--rpc", ",".join(rpc)]
    return argv + ["--list-devices"]


def list_devices(
    binary: str | Path,
    rpc: Sequence[str] = (),
    *,
    timeout_s: float = 60.0,
    env: Mapping[str, str] | None = None,
) -> list[Device]:
    """Run ``binary --rpc ... --list-devices`` and parse what it prints.

    Every failure (missing binary, timeout, a worker that does not answer, a crash, an RPC
    endpoint missing from the listing) is one ``DeviceQueryError`` line.
    """
    endpoints = parse_endpoints(list(rpc)) if rpc else []
    check_resolvable(endpoints)
    argv = list_devices_argv(binary, endpoints)
    try:
        proc = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout_s,
            env=None if env is None else dict(env),
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except FileNotFoundError as exc:
        raise DeviceQueryError(f"llama.cpp binary {binary} not found", remedy="build llama.cpp or pass its path") from exc
    except PermissionError as exc:
        raise DeviceQueryError(f"llama.cpp binary {binary} is not executable", remedy=f"chmod +x {binary}") from exc
    except subprocess.TimeoutExpired as exc:
        where = f" (RPC workers: {', '.join(endpoints)})" if endpoints else ""
        raise DeviceQueryError(
            f"{Path(binary).name} --list-devices did not answer within {timeout_s:g} s{where}",
            remedy="check that every RPC worker is up and reachable",
        ) from exc
    except OSError as exc:
        raise DeviceQueryError(f"cannot run {binary}: {exc}", remedy="check the llama.cpp build") from exc
    if proc.returncode != 0:
        raise DeviceQueryError(_failure(Path(binary).name, proc.returncode, proc.stderr, endpoints),
                               remedy="check that every RPC worker is up (ggml-rpc-server -H HOST -p PORT)"
                               if endpoints else "run the command by hand to see why")
    devices = parse_list_devices(proc.stdout)
    seen = {d.host for d in devices if d.backend == "RPC"}
    missing = [e for e in endpoints if e not in seen]
    if missing:
        raise DeviceQueryError(
            f"RPC worker {', '.join(missing)} reported no devices",
            remedy="check the worker with `ggml-rpc-server` on that host",
        )
    return devices


def _failure(binary: str, returncode: int, stderr: str, endpoints: Sequence[str]) -> str:
    lines = [_clean(line) for line in stderr.splitlines() if line.strip()]
    connect = next((line for line in lines if "Failed to connect to" in line), None)
    if connect is not None:
        target = connect.split("Failed to connect to", 1)[1].strip()
        return f"RPC worker {target} did not answer ({binary} --list-devices exited with {returncode})"
    interesting = [
        line for line in lines
        if not line.startswith(("#", "[New LWP", "[Thread", "[Inferior", "Using host libthread_db")) and "No such file" not in line
    ]
    last = interesting[-1] if interesting else "no output"
    return f"{binary} --list-devices exited with {returncode}: {last}"
