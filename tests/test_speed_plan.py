"""The speed model inside plan/run: basis per device, measured inventories, -sm tensor and auto,
unknown speeds, and the bench fit's arithmetic."""

from __future__ import annotations

import dataclasses
import json

import pytest

from llamasplit.cli import main
from llamasplit.devices.device import Device, Fleet, HostInfo, Link, LinkKind
from llamasplit.devices.inventory import save_inventory
from llamasplit.devices.measured import MeasuredSpeed
from llamasplit.model.profile import read_model
from llamasplit.planner.plan import PlanOptions, auto_plan, plan
from llamasplit.memory.settings import LlamaSettings
from llamasplit.speed.measure import BenchResult, Features, fit_device

GiB = 1 << 30


def workers(n: int, speeds: list[MeasuredSpeed | None] | None = None) -> Fleet:
    devs = tuple(
        Device(f"rpc:127.0.0.1:{5000 + i}#0", f"RPC{i}", f"127.0.0.1:{5000 + i}", "RPC", 24 * GiB, 24 * GiB,
               host=f"127.0.0.1:{5000 + i}", measured=(speeds[i] if speeds else None))
        for i in range(n)
    )
    links = tuple(Link(a.id, b.id, LinkKind.UNKNOWN) for i, a in enumerate(devs) for b in devs[i + 1:])
    return Fleet(devices=devs, host=HostInfo(ram_total_bytes=16 * GiB, ram_available_bytes=16 * GiB, cpu_cores=2),
                 links=links, source="test")


SLOW = MeasuredSpeed(decode_gb_s=4.0, prefill_gflops=20.0, layer_us=30.0, token_us=900.0, threads=1)
FAST = MeasuredSpeed(decode_gb_s=8.0, prefill_gflops=40.0, layer_us=15.0, token_us=900.0, threads=2)


def test_plan_json_carries_speed_and_basis(smollm2_path, capsys):
    assert main(["plan", str(smollm2_path), "--fleet", "3090", "-c", "4096", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert 400 < data["decode_tok_s"] < 800 and data["prefill_tok_s"] > 1000
    assert data["speed_basis"] == "calibrated" and data["device_speed_basis"]["CUDA0"] == "calibrated"
    assert main(["plan", str(smollm2_path), "--fleet", "3090", "-c", "4096"]) == 0
    out = capsys.readouterr().out
    assert "prefill:" in out and "[calibrated: CUDA0 calibrated]" in out


def test_unknown_speed_still_plans_and_tensor_gives_a_tensor_plan(smollm2_path, tmp_path, capsys):
    # the example: two CPU-backed RPC workers of unknown speed, -sm tensor -ngl 99 -fa on
    inv = save_inventory(workers(2), tmp_path / "rpc.json")
    assert main(["plan", str(smollm2_path), "--inventory", str(inv), "-sm", "tensor", "-ngl", "99", "-fa", "on"]) == 0
    out = capsys.readouterr().out
    assert "-sm tensor" in out and "--rpc 127.0.0.1:5000,127.0.0.1:5001" in out
    assert "predicted speed: unknown" in out and "RPC0" in out and "RPC1" in out
    assert main(["plan", str(smollm2_path), "--inventory", str(inv), "-sm", "tensor", "-c", "4096", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["settings"]["split_mode"] == "tensor" and data["decode_tok_s"] is None and data["speed_basis"] is None
    # run takes the same -sm
    assert main(["run", str(smollm2_path), "--inventory", str(inv), "-sm", "tensor", "-c", "4096", "--dry-run"]) == 0
    assert "-sm tensor" in capsys.readouterr().out


def test_measured_fleet_puts_the_model_on_the_fast_worker(smollm2_path):
    model = read_model(smollm2_path)
    opts = PlanOptions(settings=LlamaSettings(n_ctx=4096), fixed=frozenset({"n_ctx"}))
    for order in ([SLOW, FAST], [FAST, SLOW]):
        fleet = workers(2, order)
        fast = fleet.devices[order.index(FAST)]
        p = plan(model, fleet, opts)
        assert [d.device_id for d in p.devices] == [fast.id]  # everything fits on the fast worker alone
        assert p.speed_basis == "measured" and p.to_llama_args()[-1] == fast.host
        assert p.default_split_decode_tok_s < p.decode_tok_s  # llama.cpp's even split uses the slow one too


def test_auto_picks_layer_split_over_loopback_workers(smollm2_path):
    model = read_model(smollm2_path)
    fleet = workers(2, [FAST, FAST])
    p = auto_plan(model, fleet, PlanOptions(settings=LlamaSettings(n_ctx=4096), fixed=frozenset({"n_ctx"})))
    assert p.settings.split_mode == "layer" and any("-sm auto: layer split predicted" in n for n in p.notes)


def test_fit_device_recovers_known_coefficients():
    # seconds = bytes / 5 GB/s + layers x 40 us + 700 us; prefill = FLOPs / 30 GFLOP/s + the same fixed costs
    feats = [Features(13e6, 3e9, 24), Features(215e6, 50e9, 24), Features(40e6, 10e9, 96), Features(98e6, 17e9, 30)]
    runs = [BenchResult(f"m{i}", f.bytes_per_token / 5e9 + f.layers * 40e-6 + 700e-6,
                        f.prompt_flops / 30e9 + f.layers * 40e-6 + 700e-6, 128, 32) for i, f in enumerate(feats)]
    m = fit_device(list(zip(feats, runs)), threads=2, how="test")
    assert m.decode_gb_s == pytest.approx(5.0, rel=1e-3) and m.layer_us == pytest.approx(40.0, rel=1e-3)
    assert m.token_us == pytest.approx(700.0, rel=1e-3) and m.prefill_gflops == pytest.approx(30.0, rel=1e-3)
    assert dataclasses.asdict(m)["threads"] == 2


def test_rpc_workers_listed_again_keep_their_measured_speeds():
    from llamasplit.devices.sources import with_rpc_devices

    saved = workers(2, [SLOW, FAST])
    saved = dataclasses.replace(saved, links=(Link(saved.devices[0].id, saved.devices[1].id, LinkKind.UNKNOWN, latency_us=800.0),))
    fresh = [dataclasses.replace(d, measured=None) for d in saved.devices]  # as --list-devices reports them
    merged = with_rpc_devices(saved, fresh)
    assert [d.measured for d in merged.devices] == [SLOW, FAST]
    assert merged.link(merged.devices[0].id, merged.devices[1].id).latency_us == 800.0


def rpc_like(endpoints: list[str]) -> list[Device]:
    """Devices as --list-devices reports CPU-backed workers on these endpoints (24 GiB each)."""
    return [Device(f"rpc:{ep}#0", f"RPC{i}", ep, "RPC", 24 * GiB, 24 * GiB, host=ep) for i, ep in enumerate(endpoints)]


def test_check_of_a_tensor_plan_compares_the_meta_buffers(smollm2_path):
    from llamasplit.runner.verify import verify

    model = read_model(smollm2_path)
    p = plan(model, workers(2), PlanOptions(settings=LlamaSettings(n_ctx=4096, split_mode="tensor", flash_attn="on"),
                                            fixed=frozenset({"n_ctx"})))
    meta = "Meta(RPC0[127.0.0.1:5000],RPC1[127.0.0.1:5001])"
    mib = 1024 * 1024
    model_mib = max(d.model_bytes for d in p.devices) / mib
    kv_mib = max(d.context_bytes for d in p.devices) / mib
    h = p.host
    log = (f"load_tensors: {meta} model buffer size = {model_mib:.2f} MiB\n"
           f"load_tensors:   CPU_Mapped model buffer size = {h.model_bytes / mib:.2f} MiB\n"
           f"llama_kv_cache: {meta} KV buffer size = {kv_mib:.2f} MiB\n"
           f"sched_reserve: {meta} compute buffer size = 99.00 MiB\n"
           f"sched_reserve:        CPU compute buffer size = {h.compute_bytes / mib:.2f} MiB\n")
    report = verify(p, log)
    assert report.ok, report.failures()
    assert "Meta(RPC0" in report.table() and report.table().count("\n") >= 3
    off = verify(p, log.replace(f"{model_mib:.2f} MiB", f"{model_mib + 10:.2f} MiB", 1))
    assert not off.ok and any("model" in f for f in off.failures())
