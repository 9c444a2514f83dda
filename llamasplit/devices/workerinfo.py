"""What an RPC worker serves: published by ``llamasplit worker``, or described on the client's ``--rpc``.

llama.cpp's ``--list-devices`` shows an RPC device as ``RPC0: host:port (TOTAL MiB, FREE MiB free)``:
nothing about the backend behind it. Yet the client asks the worker for alignment and per-tensor
allocation sizes (ggml-rpc.cpp, ``RPC_CMD_GET_ALIGNMENT`` / ``RPC_CMD_GET_ALLOC_SIZE``), so a worker
serving a CUDA GPU allocates with CUDA's rules (``planner.cuda_rules``). This module tells the
planner what is behind each RPC device, in this order of trust:

1. **described** on the client: ``--rpc boxb:50052=3090`` (a catalog name, or ``=2x3090`` for a
   worker exposing two, or ``=cpu``): for a plain ``ggml-rpc-server`` or to override;
2. **published** by ``llamasplit worker``: a snapshot of its GPUs read once through NVML, served as
   JSON on ``GET /llamasplit/devices`` at the RPC port + 1 (``info_port``);
3. **assumed-cpu**: neither; sized as a CPU (32-byte alignment, no padding), as before.

The published endpoint's security posture. It is bound exactly like the worker (127.0.0.1 unless
``--allow-remote``), read-only (GET of one path; anything else is 404/405), unauthenticated,
single-threaded per request with a 2 s socket timeout, and its reply is one small JSON document
(at most ``MAX_REPLY_BYTES``). It reveals what ``nvidia-smi -L`` and ``--list-devices`` would: GPU
models, UUIDs, VRAM (total and free at the worker's start), memory bandwidth, compute capability,
PCIe generation/width and NVLink between the worker's GPUs, plus the RPC port. Anyone who can
reach it can already reach the RPC port, which is far more powerful (llama.cpp RPC runs any
graph on the worker's devices). The client treats the reply as untrusted input: bounded read
with a timeout, schema checked, numbers range-checked, strings stripped of control characters
and cut to 128 characters. A plain ``ggml-rpc-server`` on the port above another one receives
the probe on its RPC port: it drops a client that does not open with HELLO and keeps serving
(tested); describe such workers (``=GPU``) and no probe is sent.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import math
import re
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

from llamasplit.devices.catalog import GpuSpec, load_catalog
from llamasplit.devices.device import Device, Fleet, Link, LinkKind
from llamasplit.errors import UsageError

SCHEMA = "llamasplit.worker/1"
INFO_PATH = "/llamasplit/devices"
MAX_REPLY_BYTES = 64 * 1024
"""Replies longer than this are refused (a worker with 64 GPUs needs about 30 KiB)."""
FETCH_TIMEOUT_S = 2.0
MAX_DEVICES = 64
BACKENDS = ("CUDA", "CPU", "HIP", "Metal", "Vulkan", "SYCL", "MUSA", "CANN")
"""Backends a worker may say it serves (ggml's backend names); anything else is ignored."""

PUBLISHED, DESCRIBED, ASSUMED_CPU = "published", "described", "assumed-cpu"

_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_COUNT_RE = re.compile(r"^(\d+)\s*[x×*]\s*(\S.*)$", re.IGNORECASE)


def info_port(rpc_port: int) -> int:
    """The port of a worker's device endpoint: the RPC port + 1.

    >>> info_port(50052)
    50053
    """
    if not 0 < rpc_port < 65535:
        raise UsageError(f"RPC port {rpc_port} leaves no port above it for the device endpoint",
                         remedy="use an RPC port below 65535")
    return rpc_port + 1


def clean(text: Any, limit: int = 128) -> str:
    """An untrusted string made printable: control characters dropped, cut to ``limit``.

    >>> clean("RTX\\x1b[31m 3090\\n" + "x" * 200)[:12]
    'RTX[31m 3090'
    """
    return _CONTROL_RE.sub("", str(text)).strip()[:limit]


# -- the description on the client's --rpc ------------------------------------------------------

@dataclass(frozen=True)
class RpcSpec:
    """One ``--rpc`` entry: ``host:port``, and what the user says it serves (``None``: not said)."""

    endpoint: str
    described: tuple[GpuSpec | None, ...] | None = None
    """One entry per device the worker exposes; ``None`` in it = a CPU device (``=cpu``)."""
    text: str = ""


def split_description(item: str) -> tuple[str, str | None]:
    """``host:port=3090`` -> (``host:port``, ``3090``); no ``=``: (item, None).

    >>> split_description("boxb:50052=2x3090"), split_description("[::1]:50052")
    (('boxb:50052', '2x3090'), ('[::1]:50052', None))
    """
    endpoint, eq, desc = item.partition("=")
    return endpoint.strip(), (desc.strip() if eq else None)


def parse_rpc_specs(values: str | Sequence[str] | None) -> list[RpcSpec]:
    """``--rpc`` values, each ``host:port`` or ``host:port=GPU`` (``=2x3090``, ``=3090+4090``, ``=cpu``).

    Several GPUs behind one worker are joined with ``+`` in the order the worker exposes them
    (``ggml-rpc-server``: every GPU in CUDA order, or its ``-d`` list). An unknown GPU name is a
    ``UsageError`` naming close catalog entries.

    >>> [(s.endpoint, [g.key if g else None for g in s.described or ()]) for s in parse_rpc_specs("a:1=2x3090,b:2")]
    [('a:1', ['3090', '3090']), ('b:2', [])]
    """
    from llamasplit.devices.listdevices import parse_endpoints

    if values is None:
        return []
    items = [values] if isinstance(values, str) else list(values)
    catalog = None
    out: dict[str, RpcSpec] = {}
    for item in items:
        for raw in item.split(","):
            endpoint, desc = split_description(raw)
            (endpoint,) = parse_endpoints(endpoint)
            described = None
            if desc is not None:
                if not desc:
                    raise UsageError(f"--rpc {raw.strip()!r}: nothing after '='", remedy="e.g. --rpc boxb:50052=3090")
                catalog = catalog or load_catalog()
                gpus: list[GpuSpec | None] = []
                for part in desc.split("+"):
                    part = part.strip()
                    count, name = 1, part
                    match = _COUNT_RE.match(part)
                    if match:
                        count, name = int(match.group(1)), match.group(2).strip()
                    if not 0 < count <= MAX_DEVICES:
                        raise UsageError(f"--rpc {raw.strip()!r}: {count} devices", remedy=f"1 to {MAX_DEVICES}")
                    gpu = None if name.lower() == "cpu" else catalog.get(name, where=f" in --rpc {raw.strip()!r}")
                    gpus.extend([gpu] * count)
                described = tuple(gpus)
            if endpoint in out and described is None:
                continue
            out[endpoint] = RpcSpec(endpoint, described, raw.strip())
    return list(out.values())


# -- the published snapshot ---------------------------------------------------------------------

_DEVICE_FIELDS = ("name", "uuid", "backend", "total_bytes", "free_bytes", "bandwidth_gb_s", "fp16_tflops",
                  "compute_capability", "pcie_gen", "pcie_width")


def worker_document(fleet: Fleet, rpc_endpoint: str) -> dict[str, Any]:
    """The JSON a worker publishes: its devices in the order ggml-rpc-server exposes them, the links
    between them, and where the snapshot came from. With no GPU, the host's CPU."""
    devices = []
    for d in fleet.devices[:MAX_DEVICES]:
        devices.append({
            "name": d.description, "uuid": d.id if d.id.startswith(("GPU-", "MIG-")) else None,
            "backend": d.backend, "total_bytes": d.total_bytes, "free_bytes": d.free_bytes,
            "bandwidth_gb_s": d.bandwidth_gb_s, "fp16_tflops": d.fp16_tflops,
            "compute_capability": list(d.compute_capability) if d.compute_capability else None,
            "pcie_gen": d.pcie_gen, "pcie_width": d.pcie_width, "sm_count": d.sm_count,
        })
    if not devices:
        h = fleet.host
        devices.append({"name": h.cpu_name or "CPU", "uuid": None,
                        "backend": "CPU", "total_bytes": h.ram_total_bytes, "free_bytes": h.ram_available_bytes,
                        "bandwidth_gb_s": h.ram_bandwidth_gb_s, "fp16_tflops": None, "compute_capability": None,
                        "pcie_gen": None, "pcie_width": None})
    index = {d.id: i for i, d in enumerate(fleet.devices)}
    links = [
        {"a": index[link.a], "b": index[link.b], "kind": link.kind.value, "bandwidth_gb_s": link.bandwidth_gb_s,
         "n_links": link.n_links}
        for link in fleet.links if link.a in index and link.b in index
    ]
    return {"schema": SCHEMA, "rpc_endpoint": rpc_endpoint, "source": fleet.source, "devices": devices, "links": links}


@dataclass(frozen=True)
class PublishedDevice:
    """One device as a worker published it, checked and sanitized."""

    name: str
    uuid: str | None
    backend: str
    total_bytes: int | None
    free_bytes: int | None
    bandwidth_gb_s: float | None
    fp16_tflops: float | None
    compute_capability: tuple[int, int] | None
    pcie_gen: int | None
    pcie_width: int | None
    sm_count: int | None = None
    links: tuple[PublishedLink, ...] = ()
    """Links from this device to later ones of the same worker (NVLink, PCIe), as the worker read them."""


@dataclass(frozen=True)
class PublishedLink:
    """A link between two devices of one worker, by their index in its reply."""

    peer: int
    kind: LinkKind
    bandwidth_gb_s: float | None
    n_links: int | None


class BadReply(ValueError):
    """A worker's reply that is not a valid ``llamasplit.worker/1`` document."""


def _int(value: Any, what: str, hi: int = 1 << 50) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= hi:
        raise BadReply(f"{what} is not an integer in 0..{hi}")
    return value


def _float(value: Any, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not 0 < value < 1e6:
        raise BadReply(f"{what} is not a positive number")
    return float(value)


def parse_worker_document(body: bytes) -> list[PublishedDevice]:
    """The devices in a worker's reply; ``BadReply`` (one line) when it is not a valid document."""
    if len(body) > MAX_REPLY_BYTES:
        raise BadReply(f"the reply is longer than {MAX_REPLY_BYTES} bytes")
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadReply(f"the reply is not JSON ({clean(exc, 80)})") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise BadReply(f"the reply is not a {SCHEMA} document")
    items = data.get("devices")
    if not isinstance(items, list) or not 0 < len(items) <= MAX_DEVICES:
        raise BadReply("the reply lists no devices")
    links: dict[int, list[PublishedLink]] = {}
    raw_links = data.get("links", [])
    if not isinstance(raw_links, list) or len(raw_links) > MAX_DEVICES * MAX_DEVICES:
        raise BadReply("links is not a list of pairs")
    for n, link in enumerate(raw_links):
        if not isinstance(link, dict):
            raise BadReply(f"links[{n}] is not an object")
        a, b = _int(link.get("a"), f"links[{n}].a", len(items) - 1), _int(link.get("b"), f"links[{n}].b", len(items) - 1)
        if a is None or b is None or a == b:
            raise BadReply(f"links[{n}] does not join two devices of the reply")
        try:
            kind = LinkKind(clean(link.get("kind", ""), 8))
        except ValueError:
            raise BadReply(f"links[{n}].kind is not a link kind") from None
        a, b = min(a, b), max(a, b)
        links.setdefault(a, []).append(PublishedLink(
            b, kind, _float(link.get("bandwidth_gb_s"), f"links[{n}].bandwidth_gb_s"), _int(link.get("n_links"), f"links[{n}].n_links", 64)))
    out = []
    for n, item in enumerate(items):
        if not isinstance(item, dict):
            raise BadReply(f"devices[{n}] is not an object")
        backend = clean(item.get("backend", ""), 16)
        if backend not in BACKENDS:
            raise BadReply(f"devices[{n}].backend {backend!r} is not one of {', '.join(BACKENDS)}")
        cc = item.get("compute_capability")
        if cc is not None:
            if not (isinstance(cc, list) and len(cc) == 2 and all(isinstance(x, int) and 0 <= x < 100 for x in cc)):
                raise BadReply(f"devices[{n}].compute_capability is not [major, minor]")
            cc = (cc[0], cc[1])
        uuid = item.get("uuid")
        out.append(PublishedDevice(
            name=clean(item.get("name", "")) or backend,
            uuid=clean(uuid, 64) if isinstance(uuid, str) else None,
            backend=backend,
            total_bytes=_int(item.get("total_bytes"), f"devices[{n}].total_bytes"),
            free_bytes=_int(item.get("free_bytes"), f"devices[{n}].free_bytes"),
            bandwidth_gb_s=_float(item.get("bandwidth_gb_s"), f"devices[{n}].bandwidth_gb_s"),
            fp16_tflops=_float(item.get("fp16_tflops"), f"devices[{n}].fp16_tflops"),
            compute_capability=cc,
            pcie_gen=_int(item.get("pcie_gen"), f"devices[{n}].pcie_gen", 16),
            pcie_width=_int(item.get("pcie_width"), f"devices[{n}].pcie_width", 64),
            sm_count=_int(item.get("sm_count"), f"devices[{n}].sm_count", 4096),
            links=tuple(links.get(n, ())),
        ))
    return out


def _host_port(endpoint: str) -> tuple[str, int]:
    host, _, port = endpoint.rpartition(":")
    return host.strip("[]"), int(port)


def fetch_published(endpoint: str, *, timeout_s: float = FETCH_TIMEOUT_S) -> tuple[list[PublishedDevice] | None, str]:
    """Ask the worker at ``endpoint`` (its RPC ``host:port``) what it serves.

    Returns (devices, why): devices ``None`` when nothing valid answered, with the reason in one line
    (a plain ggml-rpc-server has no endpoint: connection refused). At most ``MAX_REPLY_BYTES`` + 1
    bytes are read, within ``timeout_s`` for the connection and each read.
    """
    host, port = _host_port(endpoint)
    conn = http.client.HTTPConnection(host, info_port(port), timeout=timeout_s)
    try:
        conn.request("GET", INFO_PATH, headers={"Accept": "application/json"})
        resp = conn.getresponse()
        if resp.status != 200:
            return None, f"its device endpoint answered HTTP {resp.status}"
        body = resp.read(MAX_REPLY_BYTES + 1)
    except (OSError, http.client.HTTPException) as exc:
        return None, f"no device endpoint at port {info_port(port)} ({clean(exc, 80) or type(exc).__name__})"
    finally:
        conn.close()
    try:
        return parse_worker_document(body), ""
    except BadReply as exc:
        return None, f"its device endpoint sent a bad reply: {exc}"


# -- applying what is known to the RPC devices ----------------------------------------------------

def _from_catalog(d: Device, gpu: GpuSpec | None, text: str) -> Device:
    if gpu is None:
        return dataclasses.replace(d, serves="CPU", serves_source=DESCRIBED,
                                   notes=(*d.notes, f"described as a CPU on --rpc {text}"))
    return dataclasses.replace(
        d, serves="CUDA", serves_source=DESCRIBED, description=f"{gpu.name} (via {d.host})",
        bandwidth_gb_s=gpu.bandwidth_gb_s, fp16_tflops=gpu.fp16_tflops, fp16_acc16_tflops=gpu.fp16_acc16_tflops,
        int8_tops=gpu.int8_tops, board_power_w=gpu.board_power_w, compute_capability=gpu.compute_capability,
        sm_count=gpu.sm_count, notes=(*d.notes, f"described as {gpu.key} on --rpc {text}: catalog {gpu.source}"),
    )


def _from_published(d: Device, p: PublishedDevice) -> Device:
    return dataclasses.replace(
        d, serves=p.backend, serves_source=PUBLISHED, description=f"{p.name} (via {d.host})",
        bandwidth_gb_s=p.bandwidth_gb_s, fp16_tflops=p.fp16_tflops, compute_capability=p.compute_capability,
        pcie_gen=p.pcie_gen, pcie_width=p.pcie_width, sm_count=p.sm_count,
        notes=(*d.notes, f"published by the worker: {p.name}" + (f" {p.uuid}" if p.uuid else "")),
    )


Fetch = Callable[[str], tuple["list[PublishedDevice] | None", str]]


def serving_fleet(fleet: Fleet, listed: Sequence[Device], rpc: str | Sequence[str] | None, *,
                  fetch: Fetch | None = None) -> Fleet:
    """``fleet`` with the RPC devices ``listed`` put first (``sources.with_rpc_devices``), each with
    what it serves (``serving``), and the links a worker published between its own devices (NVLink,
    PCIe) in place of the unknown same-host ones."""
    from llamasplit.devices.sources import with_rpc_devices

    devices, links = _serve(listed, rpc, fetch)
    out = with_rpc_devices(fleet, devices)
    if not links:
        return out
    known = {frozenset((link.a, link.b)): link for link in links}
    merged = tuple(known.get(frozenset((link.a, link.b)), link) for link in out.links)
    return dataclasses.replace(out, links=merged)


def serving(devices: Sequence[Device], rpc: str | Sequence[str] | None, *, fetch: Fetch | None = None) -> list[Device]:
    """``devices`` (as ``--list-devices`` reported them) with each RPC device's backend filled in:
    described on ``--rpc``, else published by the worker, else assumed a CPU (module docstring).

    ``fetch`` replaces the HTTP request (default ``fetch_published``); it is called once per
    endpoint that is not described, all of them at once. A described or published count that differs from the
    devices the worker exposes is an error (the user's words) or a note (the worker's).
    """
    return _serve(devices, rpc, fetch)[0]


def _serve(devices: Sequence[Device], rpc: str | Sequence[str] | None, fetch: Fetch | None) -> tuple[list[Device], list[Link]]:
    """``serving``'s devices, and the links the workers published between their own devices."""
    specs = {s.endpoint: s for s in parse_rpc_specs(rpc)}
    fetch = fetch or fetch_published
    by_endpoint: dict[str, list[int]] = {}
    for i, d in enumerate(devices):
        if d.backend.upper() == "RPC":
            by_endpoint.setdefault(d.host, []).append(i)
    out = list(devices)
    links: list[Link] = []
    asked = [ep for ep in by_endpoint if specs.get(ep) is None or specs[ep].described is None]
    answers: dict[str, tuple[list[PublishedDevice] | None, str]] = {}
    if asked:  # at once: a host that drops the probe costs one timeout, not one per worker
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=min(len(asked), 16)) as pool:
            answers = dict(zip(asked, pool.map(fetch, asked)))
    for endpoint, idx in by_endpoint.items():
        spec = specs.get(endpoint)
        if spec is not None and spec.described is not None:
            if len(spec.described) != len(idx):
                raise UsageError(
                    f"--rpc {spec.text}: describes {len(spec.described)} device(s), the worker exposes {len(idx)}",
                    remedy="describe each device the worker exposes, e.g. =2x3090 or =3090+4090",
                )
            for i, gpu in zip(idx, spec.described):
                out[i] = _from_catalog(out[i], gpu, spec.text)
            continue
        published, why = answers[endpoint]
        if published is not None and len(published) == len(idx):
            for i, p in zip(idx, published):
                out[i] = _from_published(out[i], p)
            for n, p in enumerate(published):
                for pl in p.links:
                    links.append(Link(out[idx[n]].id, out[idx[pl.peer]].id, pl.kind, pl.bandwidth_gb_s, n_links=pl.n_links))
            continue
        if published is not None:
            why = f"it published {len(published)} device(s) but exposes {len(idx)}"
        for i in idx:
            out[i] = dataclasses.replace(
                out[i], serves="CPU", serves_source=ASSUMED_CPU,
                notes=(*out[i].notes, f"sized as a CPU: {why}; describe it with --rpc {endpoint}=GPU"),
            )
    return out, links


# -- the worker's side: a read-only endpoint ----------------------------------------------------

class _Handler(BaseHTTPRequestHandler):
    server_version = "llamasplit-worker"
    sys_version = ""
    timeout = 2.0

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        if self.path.split("?", 1)[0] != INFO_PATH:
            self.send_error(404)
            return
        body = self.server.body  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _refuse(self) -> None:
        self.send_error(405)

    do_POST = do_PUT = do_DELETE = do_PATCH = _refuse  # noqa: N815

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's signature)
        pass


class _Server(HTTPServer):
    allow_reuse_address = True

    def __init__(self, addr: tuple[str, int], body: bytes, family: int) -> None:
        self.address_family = family
        self.body = body
        super().__init__(addr, _Handler)


class InfoServer:
    """The worker's device endpoint: serves one fixed JSON document on ``GET INFO_PATH``.

    Bind it exactly as the RPC worker (the caller checks ``check_bind_host`` first).
    """

    def __init__(self, document: dict[str, Any], host: str, port: int) -> None:
        body = json.dumps(document, separators=(",", ":")).encode()
        if len(body) > MAX_REPLY_BYTES:
            raise UsageError(f"the device snapshot is {len(body)} bytes, over {MAX_REPLY_BYTES}")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._server = _Server((host.strip("[]"), port), body, family)
        self._thread = threading.Thread(target=self._server.serve_forever, name="llamasplit-worker-info", daemon=True)
        self.host, self.port = host, self._server.server_address[1]

    def start(self) -> InfoServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> InfoServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def worker_fleet(fleet: Fleet, devices: Sequence[str] | None) -> Fleet:
    """The part of ``fleet`` a ggml-rpc-server exposes: with ``-d`` those devices in that order (by
    llama.cpp name; a name not in ``fleet``, such as ``CPU``, leaves the fleet's GPUs out and the
    CPU in), else every GPU in CUDA order (tools/rpc/rpc-server.cpp ``get_devices``: all non-CPU
    devices, else the CPU). The worker starts ggml-rpc-server with ``CUDA_DEVICE_ORDER=PCI_BUS_ID``
    so that its CUDA0.. are NVML's devices in the order ``NvmlSource`` reads them.
    """
    if not devices:
        return fleet
    by_name = {d.name: d for d in fleet.devices}
    chosen = [by_name[name] for name in devices if name in by_name]
    if len(chosen) != len(devices):
        return dataclasses.replace(fleet, devices=(), links=())
    ids = {d.id for d in chosen}
    return dataclasses.replace(fleet, devices=tuple(chosen),
                               links=tuple(link for link in fleet.links if link.a in ids and link.b in ids))
