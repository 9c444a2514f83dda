"""The runner against the real thing: llama-server over real RPC workers on loopback, real models.

Every process is started through llamasplit's own code (``llamasplit worker``/``run`` in a
subprocess, or ``start_rpc_worker``/``serve`` in-process) and stopped in ``finally``; each test
checks by pid that nothing it started is left behind.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from procs import free_port, free_port_pair, plan_of_a_corrupt_model, start_rpc_worker

import llamasplit
from llamasplit.cli import main
from llamasplit.errors import LaunchError
from llamasplit.runner.launch import health

pytestmark = pytest.mark.llamacpp

MiB = 1024 * 1024
# the child sets the SIGINT handler the Ctrl-C tests rely on: started from a background job or
# nohup, SIGINT is ignored and the ignoring is inherited, so Python would install no handler
CLI = [sys.executable, "-c", "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
       "from llamasplit.cli import main; sys.exit(main(sys.argv[1:]))"]
THREADS = ["-t", "1"]
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _gone(pid: int, timeout_s: float = 5.0) -> bool:
    """Whether ``pid`` is gone (or a zombie about to be reaped) within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state == "Z":
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def _wait_for(path: Path, pattern: str, proc: subprocess.Popen, timeout_s: float = 60.0) -> re.Match:
    """The first match of ``pattern`` in the file ``path`` is written to, failing if ``proc`` ends first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        match = re.search(pattern, path.read_text())
        if match:
            return match
        if proc.poll() is not None:
            match = re.search(pattern, path.read_text())
            if match:
                return match
            pytest.fail(f"process exited ({proc.returncode}) before printing {pattern!r}: {path.read_text()[-2000:]}")
        time.sleep(0.05)
    pytest.fail(f"no {pattern!r} after {timeout_s} s: {path.read_text()[-2000:]}")


class _Cli:
    """``llamasplit ARGS`` in a subprocess, output in files; always ended by ``close``."""

    def __init__(self, tmp: Path, name: str, *args: str) -> None:
        self.out, self.err = tmp / f"{name}.out", tmp / f"{name}.err"
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.proc = subprocess.Popen([*CLI, *args], stdout=out, stderr=err, stdin=subprocess.DEVNULL)

    def wait_out(self, pattern: str, timeout_s: float = 60.0) -> re.Match:
        return _wait_for(self.out, pattern, self.proc, timeout_s)

    def wait_err(self, pattern: str, timeout_s: float = 60.0) -> re.Match:
        return _wait_for(self.err, pattern, self.proc, timeout_s)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def _complete(url: str, prompt: str = "The capital of France is", n: int = 4) -> dict:
    body = json.dumps({"prompt": prompt, "n_predict": n, "temperature": 0}).encode()
    req = urllib.request.Request(url + "/completion", data=body, headers={"Content-Type": "application/json"})
    with _NO_PROXY.open(req, timeout=60) as resp:
        return json.loads(resp.read())


@pytest.fixture(scope="module")
def workers():
    """Two RPC workers on free loopback ports for the tests that leave them alive."""
    started = []
    try:
        for _ in range(2):
            started.append(start_rpc_worker(threads=1))
        yield started
    finally:
        for w in started:
            w.stop()


def _rpc(workers) -> str:
    return ",".join(w.endpoint for w in workers)


def test_cli_worker_and_run_serve_smollm2_unevenly_and_ctrl_c_stops_everything(smollm2_path, tmp_path):
    first = free_port_pair()
    ports = [first, free_port_pair(avoid=(first, first + 1))]  # each worker's device endpoint is on --port + 1
    worker_clis = [_Cli(tmp_path, f"worker{i}", "worker", "--port", str(p), "--threads", "1") for i, p in enumerate(ports)]
    run = None
    try:
        rpc_pids = [int(w.wait_err(r"ggml-rpc-server pid (\d+)").group(1)) for w in worker_clis]
        assert [w.wait_out(r"\S+").group(0) for w in worker_clis] == [f"127.0.0.1:{p}" for p in ports]
        port = free_port()
        run = _Cli(tmp_path, "run", "run", str(smollm2_path), "--rpc", ",".join(f"127.0.0.1:{p}" for p in ports),
                   "-ts", "1,3", "-c", "1024", "--port", str(port), "--", *THREADS)
        url = run.wait_out(r"http://\S+").group(0)
        assert url == f"http://127.0.0.1:{port}"
        server_pid = int(run.wait_err(r"llama-server \(pid (\d+)\) is serving").group(1))
        out = _complete(url)
        assert out["tokens_predicted"] == 4 and out["content"].strip()
        err = run.err.read_text()
        assert "the allocation matches the plan on every device" in err, err
        # the uneven split really is uneven: 1:3 of the 31 offloaded layers
        log = Path(re.search(r"log (\S+\.log)", err).group(1)).read_text()
        model_mib = {int(port): float(mib) for port, mib in
                     re.findall(r"RPC0\[127\.0\.0\.1:(\d+)\] model buffer size =\s+([0-9.]+) MiB", log)}
        assert set(model_mib) == set(ports) and 3.0 < model_mib[ports[1]] / model_mib[ports[0]] < 6.0

        started = time.monotonic()
        run.proc.send_signal(signal.SIGINT)
        assert run.proc.wait(timeout=10) == 130
        assert time.monotonic() - started < 5.0
        assert _gone(server_pid, 0.5)
        assert f"stopped llama-server (pid {server_pid})" in run.err.read_text()
        assert all(w.proc.poll() is None for w in worker_clis)  # workers belong to their own commands

        worker_clis[0].proc.send_signal(signal.SIGINT)
        worker_clis[1].proc.send_signal(signal.SIGTERM)
        assert [w.proc.wait(timeout=10) for w in worker_clis] == [130, 128 + signal.SIGTERM]
        assert all(_gone(pid) for pid in rpc_pids)
    finally:
        for cli in [*worker_clis, *([run] if run else [])]:
            cli.close()


def test_check_gemma3_uneven_split_over_rpc(gemma3_path, workers, capsys):
    port = free_port()
    rc = main(["run", str(gemma3_path), "--rpc", _rpc(workers), "-ts", "1,3", "-c", "1024", "--port", str(port),
               "--check", "--", *THREADS])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert out == f"http://127.0.0.1:{port}\n"
    table = err[err.index("predicted vs actual"):].splitlines()
    assert [line.split()[0] for line in table[2:5]] == ["RPC0", "RPC1", "Host"]
    assert all(line.endswith("ok") for line in table[2:5])
    assert table[5].startswith("all within tolerance")
    assert health(f"http://127.0.0.1:{port}") is None  # --check stopped it
    assert all(w.alive() for w in workers)


def test_serve_api_predicted_vs_actual_and_completion(smollm2_path, workers):
    # the first worker described on the spec (as the CPU it is): the plan keeps the description
    with llamasplit.serve(smollm2_path, rpc=[f"{workers[0].endpoint}=cpu", workers[1].endpoint], ts=(2, 1), ctx=1024,
                          extra_args=THREADS) as srv:
        report = srv.report()
        assert report.ok, report.table()
        plan = srv.plan
        assert [d.name for d in plan.devices] == ["RPC0", "RPC1"]
        assert plan.devices[0].serves_source == "described" and plan.devices[1].serves_source != "described"
        for d in plan.devices:
            assert abs(report.row(d.name, "model").actual_bytes - d.model_bytes) <= 1 * MiB
            assert abs(report.row(d.name, "context").actual_bytes - d.context_bytes) <= 1 * MiB
            assert report.row(d.name, "compute").actual_bytes > 0
        assert [len(d.layers) for d in plan.devices] == [21, 10]  # -ts 2,1 of 30 blocks + the output layer
        assert _complete(srv.url, n=3)["tokens_predicted"] == 3
        pid = srv.pid
    assert _gone(pid, 0.5)
    assert all(w.alive() for w in workers)  # not ours to stop


@pytest.fixture
def sigint_raises():
    """SIGINT raises KeyboardInterrupt here, even when pytest runs with SIGINT ignored (nohup, a
    background job): the handler the Ctrl-C test relies on, restored afterwards."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


def test_sigint_to_our_process_stops_server_and_our_workers(smollm2_path, sigint_raises):
    pids = []
    with pytest.raises(KeyboardInterrupt):
        with llamasplit.serve(smollm2_path, rpc=2, worker_threads=1, ts="1,2", ctx=1024, extra_args=THREADS) as srv:
            pids = [srv.pid, *(w.pid for w in srv.workers)]
            assert len(pids) == 3 and health(srv.url) == "ok"
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(10)
    assert all(_gone(pid, 5.0) for pid in pids)


def test_worker_killed_under_serve_is_reported(smollm2_path):
    srv = llamasplit.serve(smollm2_path, rpc=2, worker_threads=1, ts="1,1", ctx=1024, extra_args=THREADS)
    try:
        victim = srv.workers[1]
        os.kill(victim.pid, signal.SIGKILL)
        with pytest.raises(LaunchError) as err:
            srv.wait(timeout_s=10)
        assert str(err.value).startswith(f"RPC worker {victim.endpoint} (pid {victim.pid}) died (killed by SIGKILL)")
        assert _gone(srv.pid, 0.5) and all(_gone(w.pid, 0.5) for w in srv.workers)
    finally:
        srv.stop()


def test_worker_killed_under_cli_run_is_reported(smollm2_path, tmp_path):
    mine = []
    run = None
    try:
        mine = [start_rpc_worker(threads=1) for _ in range(2)]
        run = _Cli(tmp_path, "run", "run", str(smollm2_path), "--rpc", _rpc(mine), "-ts", "1,3", "-c", "1024",
                   "--port", str(free_port()), "--", *THREADS)
        run.wait_out(r"http://\S+")
        server_pid = int(run.wait_err(r"llama-server \(pid (\d+)\)").group(1))
        mine[1].proc.kill()
        assert run.proc.wait(timeout=10) == 1
        lines = [line for line in run.err.read_text().splitlines() if line.startswith("llamasplit: error:")]
        assert len(lines) == 1
        expected = (f"llamasplit: error: RPC worker {mine[1].endpoint} stopped answering (connection refused) while "
                    "llama-server was running; restart the worker (`llamasplit worker` on its host) and run again; logs: ")
        assert lines[0].startswith(expected)
        log = Path(lines[0][len(expected):])  # kept, since the error names it
        assert log.parent.name == "logs" and "llama-server" in log.read_text(errors="replace")
        log.unlink()
        assert _gone(server_pid, 0.5)
    finally:
        if run:
            run.close()
        for w in mine:
            w.stop()


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("llamasplit: loading")]
    assert len(lines) == 1, err
    return lines[0]


def test_port_in_use_is_one_line(smollm2_path, workers, capsys):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        rc = main(["run", str(smollm2_path), "--rpc", _rpc(workers), "-c", "1024", "--port", str(port)])
    assert rc == 1
    assert _one_error_line(capsys.readouterr().err) == (
        f"llamasplit: error: port {port} on 127.0.0.1 is in use; pick another with --port, or stop what listens there"
    )


def test_missing_binary_is_one_line(smollm2_path, workers, capsys):
    rc = main(["run", str(smollm2_path), "--rpc", _rpc(workers), "-c", "1024", "--binary", "/nonexistent/llama-server"])
    assert rc == 1
    assert _one_error_line(capsys.readouterr().err).startswith(
        "llamasplit: error: llama.cpp binary /nonexistent/llama-server not found"
    )


def test_a_bad_model_file_fails_with_llama_cpp_s_reason(smollm2_path, workers, tmp_path, capsys):
    plan_file = plan_of_a_corrupt_model(main, capsys, smollm2_path, _rpc(workers), tmp_path)
    rc = main(["run", "--plan", str(plan_file), "--port", str(free_port()), "--", *THREADS])
    assert rc == 1
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith("llamasplit: error: llama-server exited (exit code 1) while loading: gguf_init_from_reader: invalid magic")
    assert "check the model file" in line


def test_run_without_a_gpu_serves_on_the_cpu(smollm2_path, tmp_path):
    """`llamasplit run MODEL` on a machine with no usable GPU (all hidden): a CPU plan, said in one
    line, and a llama-server that answers; the allocation matches the plan on the host."""
    port = free_port()
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    out, err = tmp_path / "run.out", tmp_path / "run.err"
    with open(out, "w") as fo, open(err, "w") as fe:
        proc = subprocess.Popen([*CLI, "run", str(smollm2_path), "-c", "1024", "--port", str(port),
                                 "--", *THREADS], stdout=fo, stderr=fe, stdin=subprocess.DEVNULL, env=env)
    try:
        url = _wait_for(out, r"http://\S+", proc).group(0)
        _wait_for(err, r"llama-server \(pid \d+\) is serving", proc)
        assert _complete(url)["tokens_predicted"] == 4
        text = err.read_text()
        assert text.count("planning for the CPU") == 1, text
        assert "the allocation matches the plan on every device" in text, text
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=15)


def test_load_without_devices_plans_for_the_cpu(smollm2_path, monkeypatch):
    """`llamasplit.load(MODEL)` with no GPU and no devices= argument: the CPU plan, then text."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    llm = llamasplit.load(smollm2_path, ctx=512, n_threads=2, verbose=False)
    assert llm.n_ctx() == 512
    out = llm("The capital of France is", max_tokens=4, temperature=0.0)
    assert out["usage"]["completion_tokens"] > 0


def test_load_generates_text_on_the_cpu(smollm2_path):
    llm = llamasplit.load(smollm2_path, devices=[], ctx=512, n_threads=2, verbose=False)
    assert llm.n_ctx() == 512
    out = llm("The capital of France is", max_tokens=4, temperature=0.0)
    assert out["usage"]["completion_tokens"] > 0 and out["choices"][0]["text"].strip()


def test_worker_refuses_a_public_address_without_allow_remote(capsys):
    assert main(["worker", "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "refusing to bind an RPC worker to 0.0.0.0" in err and "--allow-remote" in err


def test_allowed_remote_worker_warns_and_dies_with_us(tmp_path):
    # 127.0.0.2 is loopback on Linux but not the address the check trusts: it stands in for a LAN address
    port = free_port_pair("127.0.0.2")
    worker = _Cli(tmp_path, "worker", "worker", "--host", "127.0.0.2", "--allow-remote", "--port", str(port))
    rpc_pid = None
    try:
        rpc_pid = int(worker.wait_err(r"ggml-rpc-server pid (\d+)").group(1))
        assert "WARNING: RPC worker listening on 127.0.0.2: llama.cpp RPC has no authentication" in worker.err.read_text()
        worker.proc.kill()  # SIGKILL: no chance to clean up, the kernel ends the child for us
        worker.proc.wait()
        assert _gone(rpc_pid)
    finally:
        worker.close()
        if rpc_pid is not None and not _gone(rpc_pid, 0):
            os.kill(rpc_pid, signal.SIGKILL)  # only when the test failed: leave no orphan
