"""What an RPC worker serves (devices/workerinfo.py): the --rpc description, the published endpoint
(a real HTTP server on loopback, the client's bounded and sanitising read), and plans over such
workers sized with CUDA's rules."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from fake_nvml import FakeNvml, rtx3090, rtx4060ti16
from procs import free_port_pair
from llamasplit.devices.device import Device, Fleet
from llamasplit.devices.fleet import fleet_from_spec
from llamasplit.devices.inventory import save_inventory
from llamasplit.devices.nvml import NvmlSource
from llamasplit.devices.workerinfo import (
    ASSUMED_CPU, DESCRIBED, MAX_REPLY_BYTES, PUBLISHED, SCHEMA, BadReply, InfoServer, fetch_published, info_port,
    parse_rpc_specs, parse_worker_document, serving, worker_document, worker_fleet,
)
from llamasplit.errors import UsageError
from llamasplit.model.profile import read_model
from llamasplit.planner.plan import PlanOptions, plan
from llamasplit.memory.settings import LlamaSettings


def _rpc_device(endpoint: str, n: int = 0, free_bytes: int = 23 * 1024**3) -> Device:
    """An RPC device as llama.cpp's --list-devices reports it (parse_list_devices' shape)."""
    return Device(id=f"rpc:{endpoint}#{n}", name=f"RPC{n}", description=endpoint, backend="RPC",
                  total_bytes=24 * 1024**3, free_bytes=free_bytes, host=endpoint)


def _gpu_fleet() -> Fleet:
    gpus = [rtx3090("0000:01:00.0", "GPU-aaaaaaaa-0000-0000-0000-000000000001"),
            rtx4060ti16("0000:02:00.0", "GPU-bbbbbbbb-0000-0000-0000-000000000002")]
    return NvmlSource(FakeNvml(gpus), env={"CUDA_DEVICE_ORDER": "PCI_BUS_ID"}).read()


def test_parse_rpc_specs():
    specs = parse_rpc_specs(["boxb:50052=2x3090,boxc:50052=3090+4060ti-16", "boxd:1=cpu,boxe:2"])
    assert [s.endpoint for s in specs] == ["boxb:50052", "boxc:50052", "boxd:1", "boxe:2"]
    assert [g.key for g in specs[0].described] == ["3090", "3090"]
    assert [g.key for g in specs[1].described] == ["3090", "4060ti-16g"]
    assert specs[2].described == (None,) and specs[3].described is None
    with pytest.raises(UsageError, match=r"unknown GPU '3095' in --rpc 'b:1=3095'"):
        parse_rpc_specs("b:1=3095")
    with pytest.raises(UsageError, match="nothing after '='"):
        parse_rpc_specs("b:1=")
    with pytest.raises(UsageError, match="is not host:port"):
        parse_rpc_specs("b=3090")


def test_described_worker_is_sized_as_its_gpu():
    listed = [_rpc_device("boxb:50052")]
    got = serving(listed, "boxb:50052=3090", fetch=lambda ep: pytest.fail("a described worker is not asked"))
    d = got[0]
    assert (d.serves, d.serves_source, d.alloc_backend) == ("CUDA", DESCRIBED, "CUDA")
    assert d.compute_capability == (8, 6) and d.bandwidth_gb_s == 936.0 and d.sm_count == 82
    assert d.free_bytes == listed[0].free_bytes  # what llama.cpp splits by stays the listing's
    with pytest.raises(UsageError, match="describes 2 device"):
        serving(listed, "boxb:50052=2x3090")


def test_published_snapshot_over_a_real_http_endpoint_on_loopback():
    fleet = _gpu_fleet()
    port = free_port_pair()
    endpoint = f"127.0.0.1:{port}"
    with InfoServer(worker_document(fleet, endpoint), "127.0.0.1", info_port(port)):
        published, why = fetch_published(endpoint)
        assert why == ""
        assert [p.name for p in published] == ["NVIDIA GeForce RTX 3090", "NVIDIA GeForce RTX 4060 Ti"]
        assert published[0].uuid == "GPU-aaaaaaaa-0000-0000-0000-000000000001"
        assert published[0].compute_capability == (8, 6) and published[0].bandwidth_gb_s == pytest.approx(936.096)
        assert published[1].pcie_width == 8 and published[1].sm_count == 34  # the catalog's, via NVML's name
        got = serving([_rpc_device(endpoint, 0), _rpc_device(endpoint, 1)], endpoint)
        assert [(d.serves, d.serves_source) for d in got] == [("CUDA", PUBLISHED)] * 2
        assert got[1].description == f"NVIDIA GeForce RTX 4060 Ti (via {endpoint})"
        # read-only: anything but GET of the one path is refused
        import http.client

        conn = http.client.HTTPConnection("127.0.0.1", info_port(port), timeout=2)
        conn.request("POST", "/llamasplit/devices", body=b"x")
        assert conn.getresponse().status == 405
        conn.close()
        conn = http.client.HTTPConnection("127.0.0.1", info_port(port), timeout=2)
        conn.request("GET", "/etc/passwd")
        assert conn.getresponse().status == 404
        conn.close()
    # a count that does not match what the worker exposes: sized as a CPU, with the reason
    with InfoServer(worker_document(fleet, endpoint), "127.0.0.1", info_port(port)):
        only = serving([_rpc_device(endpoint, 0)], endpoint)[0]
    assert only.serves_source == ASSUMED_CPU and "published 2 device(s) but exposes 1" in only.notes[-1]


def test_plain_rpc_server_without_endpoint_is_assumed_cpu():
    port = free_port_pair()  # nothing listens on port + 1
    d = serving([_rpc_device(f"127.0.0.1:{port}")], f"127.0.0.1:{port}")[0]
    assert (d.serves, d.serves_source, d.alloc_backend) == ("CPU", ASSUMED_CPU, "CPU")
    assert "no device endpoint at port" in d.notes[-1] and f"--rpc 127.0.0.1:{port}=GPU" in d.notes[-1]


def _raw_server(payload: bytes) -> tuple[int, threading.Thread]:
    """A loopback server that answers any request with ``payload`` (a hostile or broken worker)."""
    port = free_port_pair()
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port + 1))
    srv.listen(1)

    def serve() -> None:
        conn, _ = srv.accept()
        with conn:
            conn.recv(4096)
            try:
                conn.sendall(payload)
            except OSError:
                pass  # the client stopped reading: what a bounded read does
        srv.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return port, t


def test_the_client_bounds_and_sanitises_what_a_worker_sends():
    huge = b"x" * (4 * MAX_REPLY_BYTES)
    port, t = _raw_server(b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n" + huge)
    published, why = fetch_published(f"127.0.0.1:{port}")
    t.join(5)
    assert published is None and f"longer than {MAX_REPLY_BYTES} bytes" in why
    doc = {"schema": SCHEMA, "devices": [{"name": "RTX\x1b[2J 3090\n" + "A" * 500, "backend": "CUDA",
                                          "uuid": "GPU-\x07x", "total_bytes": 1, "free_bytes": 1}]}
    (p,) = parse_worker_document(json.dumps(doc).encode())
    assert p.name.startswith("RTX[2J 3090") and len(p.name) == 128 and "\x1b" not in p.name and p.uuid == "GPU-x"
    for bad, msg in [
        ({**doc, "schema": "other/1"}, "is not a llamasplit.worker/1 document"),
        ({**doc, "devices": [{**doc["devices"][0], "backend": "EVIL"}]}, "backend 'EVIL' is not one of"),
        ({**doc, "devices": [{**doc["devices"][0], "free_bytes": -5}]}, "free_bytes is not an integer"),
        ({**doc, "devices": [{**doc["devices"][0], "bandwidth_gb_s": float("nan")}]}, "bandwidth_gb_s is not a positive"),
        ({**doc, "devices": []}, "lists no devices"),
        ({**doc, "links": [{"a": 0, "b": 0, "kind": "NV"}]}, r"links\[0\] does not join two devices"),
        ({**doc, "links": [{"a": 0, "b": 5, "kind": "NV"}]}, r"links\[0\].b is not an integer in 0..0"),
    ]:
        with pytest.raises(BadReply, match=msg):
            parse_worker_document(json.dumps(bad).encode())
    with pytest.raises(BadReply, match="not JSON"):
        parse_worker_document(b"\xff{")


def test_worker_fleet_follows_the_rpc_servers_device_list():
    fleet = _gpu_fleet()
    assert [d.name for d in worker_fleet(fleet, None).devices] == ["CUDA0", "CUDA1"]
    assert [d.name for d in worker_fleet(fleet, ["CUDA1", "CUDA0"]).devices] == ["CUDA1", "CUDA0"]
    assert worker_fleet(fleet, ["CPU"]).devices == ()  # the worker serves its CPU
    doc = worker_document(worker_fleet(fleet, ["CPU"]), "h:1")
    assert [d["backend"] for d in doc["devices"]] == ["CPU"]


def test_plan_over_a_described_rpc_3090_gives_it_the_local_3090s_model_bytes(smollm2_path):
    """Done-when (issue 13): the same layers on an RPC worker serving a 3090 and on a local 3090 get
    the same model bytes; the plan says what the RPC device is and where that came from."""
    model = read_model(smollm2_path)
    opts = PlanOptions(settings=LlamaSettings(n_ctx=4096, n_gpu_layers=None), fixed=frozenset({"n_ctx", "n_gpu_layers"}))
    local = plan(model, fleet_from_spec("3090"), opts)
    rpc_dev = serving([_rpc_device("10.9.9.9:50052", free_bytes=local.devices[0].free_bytes)], "10.9.9.9:50052=3090")
    remote = plan(model, Fleet(devices=tuple(rpc_dev), host=local.fleet.host, source="test+rpc"), opts)
    (dl,), (dr,) = local.devices, remote.devices
    assert dr.layers == dl.layers and dr.model_bytes == dl.model_bytes and dr.context_bytes == dl.context_bytes
    assert (dr.serves, dr.serves_source) == ("CUDA", "described")
    assert "RPC0: NVIDIA GeForce RTX 3090 (via 10.9.9.9:50052), sized as CUDA (described)" in remote.summary()
    assert json.loads(remote.to_json())["devices"][0]["serves_source"] == "described"
    assert remote.decode_tok_s is not None  # sized with the 3090's bandwidth, not an unknown CPU worker's


@pytest.mark.llamacpp
def test_plan_cli_over_a_real_rpc_server_described_as_a_3090(smollm2_path, capsys):
    """`plan --rpc HOST:PORT=3090` over a real ggml-rpc-server (CPU-backed, loopback): the RPC device
    gets the model bytes of a simulated local 3090 holding the same layers; without the description
    (no device endpoint on a plain server) it is sized as a CPU and said so."""
    from llamasplit.cli import main
    from llamasplit.runner.processes import rpc_workers

    args = [str(smollm2_path), "-ngl", "all", "-c", "4096", "--json"]
    assert main(["plan", *args, "--fleet", "3090"]) == 0
    local = json.loads(capsys.readouterr().out)["devices"][0]
    with rpc_workers(1) as (w,):
        assert main(["plan", *args, "--rpc", f"{w.endpoint}=3090"]) == 0
        described = json.loads(capsys.readouterr().out)
        assert main(["plan", *args, "--rpc", w.endpoint]) == 0
        plain = json.loads(capsys.readouterr().out)
    rpc = [d for d in described["devices"] if d["device_id"].startswith("rpc:")]
    assert [(d["serves"], d["serves_source"]) for d in rpc] == [("CUDA", "described")]
    assert rpc[0]["layers"] == local["layers"] and rpc[0]["model_bytes"] == local["model_bytes"]
    (cpu_rpc,) = [d for d in plain["devices"] if d["device_id"].startswith("rpc:")]
    assert (cpu_rpc["serves"], cpu_rpc["serves_source"]) == ("CPU", "assumed-cpu")
    assert cpu_rpc["model_bytes"] < local["model_bytes"]  # no 128-byte alignment, no row padding


@pytest.mark.llamacpp
def test_a_real_llamasplit_worker_publishes_its_fake_nvml_snapshot(tmp_path, smollm2_path):
    """`llamasplit worker` (a real process with a real ggml-rpc-server on loopback) publishes a
    snapshot read through the fake NVML (handed over as an inventory, the DeviceSource seam a worker
    without NVML would use); `plan --rpc` fetches it and sizes the RPC device as CUDA. The RPC
    server itself serves this machine's CPU: the test checks the channel, not the GPU."""
    gpus = NvmlSource(FakeNvml([rtx3090("0000:01:00.0", "GPU-cccccccc-0000-0000-0000-000000000003")]),
                      env={"CUDA_DEVICE_ORDER": "PCI_BUS_ID"}).read()
    inv = save_inventory(gpus, tmp_path / "worker.json")
    port = free_port_pair()
    proc = subprocess.Popen([str(Path(sys.executable).with_name("llamasplit")), "worker", "--port", str(port), "--inventory", str(inv)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        line = proc.stdout.readline().strip()
        assert line == f"127.0.0.1:{port}", proc.stderr.read() if proc.poll() is not None else line
        deadline = time.monotonic() + 10
        published = None
        while published is None and time.monotonic() < deadline:
            published, why = fetch_published(line)
            time.sleep(0.1)
        assert published is not None, why
        assert [(p.name, p.uuid, p.backend) for p in published] == [
            ("NVIDIA GeForce RTX 3090", "GPU-cccccccc-0000-0000-0000-000000000003", "CUDA")]
        from llamasplit.devices.sources import resolve_fleet

        fleet = resolve_fleet(fleet_spec="3090", rpc=line)
        rpc = [d for d in fleet.devices if d.backend == "RPC"]
        assert [(d.serves, d.serves_source) for d in rpc] == [("CUDA", "published")]
        assert rpc[0].compute_capability == (8, 6)
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    assert proc.returncode is not None


@pytest.mark.llamacpp
def test_probing_a_port_where_another_rpc_server_listens_is_harmless():
    """Two plain workers on consecutive ports: the probe for the first one's endpoint reaches the
    second's RPC port. ggml-rpc-server drops a client that does not say HELLO; it keeps serving."""
    from llamasplit.devices.listdevices import list_devices
    from llamasplit.llamacpp.binaries import find_binary
    from llamasplit.runner.processes import start_rpc_worker

    w = start_rpc_worker()
    try:
        host, port = w.endpoint.rsplit(":", 1)
        published, why = fetch_published(f"{host}:{int(port) - 1}")
        assert published is None and "no device endpoint" in why
        assert w.proc.poll() is None
        assert [d.host for d in list_devices(find_binary("llama-server"), [w.endpoint]) if d.backend == "RPC"] == [w.endpoint]
    finally:
        w.stop()


def test_worker_snapshot_through_the_nvml_door(monkeypatch, capsys):
    """What `llamasplit worker` publishes, read through (fake) NVML: the GPUs; no driver: the CPU;
    a driver/library mismatch: nothing, with one warning (the worker still starts)."""
    import pynvml

    from llamasplit.cli.run import _worker_snapshot

    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml([rtx3090("0000:01:00.0", "GPU-dddddddd-0000-0000-0000-000000000004")]))
    snap = _worker_snapshot(None, [])
    assert [(d.name, d.id, d.sm_count) for d in snap.devices] == [("CUDA0", "GPU-dddddddd-0000-0000-0000-000000000004", 82)]
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml([], init_error=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND))
    assert _worker_snapshot(None, []).devices == ()
    assert [d["backend"] for d in worker_document(_worker_snapshot(None, []), "h:1")["devices"]] == ["CPU"]
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml([], init_error=pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH))
    assert _worker_snapshot(None, []) is None
    assert "cannot read this worker's GPUs" in capsys.readouterr().err


def test_workers_are_asked_at_once():
    """Undescribed workers are asked in parallel: three that each take 0.4 s cost about 0.4 s."""
    calls = []

    def slow(endpoint: str):
        calls.append(endpoint)
        time.sleep(0.4)
        return None, "no answer"

    listed = [_rpc_device(f"10.0.0.{i}:50052") for i in (1, 2, 3)] + [_rpc_device("10.0.0.4:50052")]
    start = time.monotonic()
    got = serving(listed, "10.0.0.1:50052,10.0.0.2:50052,10.0.0.3:50052,10.0.0.4:50052=3090", fetch=slow)
    assert time.monotonic() - start < 1.0
    assert sorted(calls) == ["10.0.0.1:50052", "10.0.0.2:50052", "10.0.0.3:50052"]  # the described one is not asked
    assert [d.serves_source for d in got] == [ASSUMED_CPU] * 3 + [DESCRIBED]


def test_a_workers_nvlink_between_its_own_gpus_reaches_the_fleet():
    """Two bridged 3090s behind one worker: the client's fleet joins RPC0 and RPC1 by NVLink (4 links),
    as the worker's NVML read them, instead of an unknown same-host link."""
    from fake_nvml import GPU

    a = rtx3090("0000:01:00.0", "GPU-eeeeeeee-0000-0000-0000-000000000001", nvlinks=[("0000:02:00.0", GPU)] * 4)
    b = rtx3090("0000:02:00.0", "GPU-eeeeeeee-0000-0000-0000-000000000002", nvlinks=[("0000:01:00.0", GPU)] * 4)
    worker = NvmlSource(FakeNvml([a, b]), env={"CUDA_DEVICE_ORDER": "PCI_BUS_ID"}).read()
    assert worker.link(worker.devices[0].id, worker.devices[1].id).kind.value == "NV"
    port = free_port_pair()
    endpoint = f"127.0.0.1:{port}"
    from llamasplit.devices.workerinfo import serving_fleet

    with InfoServer(worker_document(worker, endpoint), "127.0.0.1", info_port(port)):
        fleet = serving_fleet(fleet_from_spec("4090"), [_rpc_device(endpoint, 0), _rpc_device(endpoint, 1)], endpoint)
    rpc0, rpc1, local = fleet.devices
    link = fleet.link(rpc0.id, rpc1.id)
    assert (link.kind.value, link.n_links, link.bandwidth_gb_s) == ("NV", 4, worker.links[0].bandwidth_gb_s)
    assert fleet.link(rpc0.id, local.id).kind.value == "NET"
