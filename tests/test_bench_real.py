"""``llamasplit bench`` on real loopback RPC workers: measured speeds into the inventory, and plan
--inventory predicting from them (small models only; the full comparison is benchmarks/speed_vs_real.py)."""

from __future__ import annotations

import json
import math

import pytest
from procs import rpc_workers

from llamasplit.cli import main
from llamasplit.devices.device import Fleet
from llamasplit.devices.inventory import load_inventory, save_inventory
from llamasplit.devices.nvml import local_host
from llamasplit.devices.sources import network_links
from llamasplit.llamacpp.binaries import find_binary
from llamasplit.model.profile import read_model
from llamasplit.memory.estimate import estimate
from llamasplit.memory.settings import LlamaSettings
from llamasplit.speed.measure import JOINT_TYPE, N_GEN, N_PROMPT, measure_fleet
from llamasplit.speed.model import layer_split_speed
from llamasplit.speed.probe import PROBES, TYPE_PROBES, probe_path

pytestmark = pytest.mark.llamacpp


def test_bench_measures_workers_and_plan_uses_it(smollm2_path, tmp_path, capsys):
    from test_speed_plan import rpc_like

    probes = [(s.name, probe_path(s)) for s in PROBES]
    typed = [(TYPE_PROBES[0].qtype, probe_path(TYPE_PROBES[0]))]  # Q4_1, SmolLM2's type
    binary = find_binary("llama-bench")
    with rpc_workers(2, threads=1) as workers:
        devices = rpc_like([w.endpoint for w in workers])
        fleet = Fleet(devices=tuple(devices), host=local_host(), links=network_links(devices), source="test")
        measured = measure_fleet(fleet, binary=binary, host=False, models=probes, type_models=typed,
                                 hop_model=("smollm2", smollm2_path), passes=1)  # one pass: CI's time
        for d in measured.devices:
            m = d.measured
            assert m is not None and m.decode_gb_s > 0.1 and m.prefill_gflops > 1 and math.isfinite(m.token_us)
            # Q4_1 from its probe, Q8_0 fitted with the Q4_0 probes (the vocabulary probe's type)
            assert set(m.types or {}) == {"Q4_1", JOINT_TYPE} and all(v[0] > 0 and v[1] > 0 for v in m.types.values())
            # Q4_1's narrow probe (added by default for a type that has one) gives its own per-row cost
            assert len(m.types["Q4_1"]) == 3 and m.types["Q4_1"][2] >= 0
        hop = measured.link(measured.devices[0].id, measured.devices[1].id)
        assert hop is not None and hop.latency_us is not None and hop.latency_us >= 0
        # the fitted figures give SmolLM2 on one worker a finite, positive speed (how close that
        # comes to a real run is timed, so benchmarks/speed_vs_real.py judges it on an idle machine)
        model = read_model(smollm2_path)
        dev = [measured.devices[0]]
        est = estimate(model, dev, LlamaSettings(n_ctx=N_PROMPT + N_GEN, binary="llama-completion"), fast=True)
        sp = layer_split_speed(model, measured, dev, est, prompt_tokens=N_PROMPT, kv_fill=(N_GEN / 2) / est.n_ctx)
        assert math.isfinite(sp.decode_tok_s) and sp.decode_tok_s > 0 and sp.prefill_tok_s > 0, sp
    path = save_inventory(measured, tmp_path / "bench.json")
    assert load_inventory(path).devices[0].measured == measured.devices[0].measured
    assert main(["plan", str(smollm2_path), "--inventory", str(path), "-c", "4096", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["speed_basis"] == "measured" and data["decode_tok_s"] > 0 and data["prefill_tok_s"] > 0


def test_a_tensor_plan_runs_and_checks(smollm2_path, tmp_path, capsys):
    """plan -sm tensor over two real workers, then run --plan --check: llama.cpp's Meta buffers
    match the plan (the issue's example, with a plan instead of "does not fit")."""
    from procs import free_port

    with rpc_workers(2, threads=1) as workers:
        eps = ",".join(w.endpoint for w in workers)
        assert main(["plan", str(smollm2_path), "--rpc", eps, "-sm", "tensor", "-c", "4096", "--json"]) == 0
        plan_file = tmp_path / "tensor.json"
        plan_file.write_text(capsys.readouterr().out)
        rc = main(["run", "--plan", str(plan_file), "--check", "--port", str(free_port()), "--timeout", "240"])
        err = capsys.readouterr().err
        assert rc == 0, err[-1500:]
        assert "Meta(" in err and "all within tolerance" in err
