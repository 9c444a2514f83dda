"""Process helpers for real-stack tests: RPC workers and one-shot llama.cpp runs that always stop.

Tests use these instead of starting processes themselves, so no test leaves a child behind.
"""

from __future__ import annotations

import socket
import time

from llamasplit.llamacpp.binaries import find_binary
from llamasplit.runner.processes import free_port, rpc_workers, run_to_end, spawn, start_rpc_worker

__all__ = ["free_port", "rpc_workers", "run_to_end", "spawn", "start_rpc_worker", "endpoints", "plan_of_a_corrupt_model",
           "server_load_log", "free_port_pair"]


def free_port_pair(host: str = "127.0.0.1", avoid: tuple[int, ...] = ()) -> int:
    """A port p with p and p + 1 free on ``host`` a moment ago, neither in ``avoid``: for a
    ``llamasplit worker``, whose device endpoint listens on --port + 1."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        if port >= 65535 or port in avoid or port + 1 in avoid:
            continue
        try:
            with socket.socket() as s2:
                s2.bind((host, port + 1))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port pair")


def server_load_log(model, args: list[str], *, timeout_s: float = 90.0) -> str:
    """llama-server's log (``-lv 4``, one thread, no ``--fit``) up to "model loaded" or its exit:
    every buffer line it prints while loading. The server is stopped before this returns."""
    argv = [str(find_binary("llama-server")), "-m", str(model), "--host", "127.0.0.1", "--port", str(free_port()),
            "-lv", "4", "-fit", "off", "-t", "1", *args]
    server = spawn(argv)
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if "llama_server: model loaded" in server.log_text() or not server.alive():
                break
            time.sleep(0.2)
        return server.log_text()
    finally:
        server.stop()


def endpoints(workers) -> list[str]:
    """``host:port`` of each worker, in order."""
    return [w.endpoint for w in workers]


def plan_of_a_corrupt_model(main, capsys, model, rpc: str, tmp_path):
    """A real plan of ``model`` over ``rpc``, saved as ``plan.json`` with its model path pointed at a
    file that is not a GGUF: what ``run --plan`` then loads fails inside llama.cpp."""
    import json

    assert main(["plan", str(model), "--rpc", rpc, "-c", "1024", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"NOT A GGUF" + bytes(4096))
    data["model"]["path"] = str(bad)
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps(data))
    return plan_file
