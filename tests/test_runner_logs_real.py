"""`run` against real llama.cpp: -- --port is where it serves and where we wait; logs go to the
cache's logs folder, are removed after a good end and kept (and named) after a failure."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from procs import plan_of_a_corrupt_model, free_port, start_rpc_worker
from test_runner_real import CLI, THREADS, _complete, _gone, _wait_for

from llamasplit.cli import main

pytestmark = pytest.mark.llamacpp


def test_run_with_extra_port_serves_and_is_waited_for_there(smollm2_path, tmp_path):
    worker = start_rpc_worker(threads=1)
    port = free_port()
    out, err = tmp_path / "run.out", tmp_path / "run.err"
    try:
        with open(out, "w") as fo, open(err, "w") as fe:
            proc = subprocess.Popen([*CLI, "run", str(smollm2_path), "--rpc", worker.endpoint, "-c", "1024",
                                     "--", "--port", str(port), *THREADS], stdout=fo, stderr=fe, stdin=subprocess.DEVNULL)
        try:
            url = _wait_for(out, r"http://\S+", proc, timeout_s=120).group(0)
            assert url == f"http://127.0.0.1:{port}"  # was: a warning, then a wait for 8080 forever
            assert _complete(url)["tokens_predicted"] == 4
            text = err.read_text()
            assert "--port" not in text.split("llamasplit: running", 1)[0]  # no warning about it
            log = Path(re.search(r"log (\S+\.log)", text).group(1))
            assert log.parent.name == "logs" and log.exists() and "llama-server" in log.name
            server_pid = int(re.search(r"llama-server \(pid (\d+)\)", text).group(1))
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=15) == 130
        assert _gone(server_pid, 1.0)
        assert not log.exists()  # a good end: the log goes
    finally:
        worker.stop()
    assert not worker.log_path.exists()


def test_a_failed_run_keeps_its_log_and_names_it(smollm2_path, tmp_path, capsys):
    worker = start_rpc_worker(threads=1)
    try:
        plan_file = plan_of_a_corrupt_model(main, capsys, smollm2_path, worker.endpoint, tmp_path)
        assert main(["run", "--plan", str(plan_file), "--port", str(free_port()), "--", *THREADS]) == 1
        err = capsys.readouterr().err
        log = Path(re.search(r"full log: (\S+\.log)", err).group(1))
        assert log.exists() and "invalid magic" in log.read_text()
        log.unlink()
    finally:
        worker.stop()


def test_run_to_an_unresolvable_worker_says_so(smollm2_path, capsys):
    t0 = time.monotonic()
    assert main(["run", str(smollm2_path), "--rpc=a..b:50052", "-c", "1024"]) == 1
    assert time.monotonic() - t0 < 5
    assert capsys.readouterr().err == ("llamasplit: error: RPC worker a..b:50052: cannot resolve the host name 'a..b' "
                                       "(not a valid host name); check the name, or give the worker's IP address\n")
