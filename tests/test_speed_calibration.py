"""The speed model against published llama-bench results, and where each device's speed comes from.

Tolerances (stated in ``speed.json`` and the README of the data): every decode row (tg128) within
35 %; every prefill row (pp512) within a factor of 3 (the catalog's FP16 TFLOPS mixes FP16- and
FP32-accumulate rates and quantized prefill runs on int8 kernels, so a datasheet FLOP rate is a
weak predictor; ``llamasplit bench`` measures it instead).
"""

from __future__ import annotations

import dataclasses
import statistics

import pytest

from llamasplit.devices.device import Device, Fleet, HostInfo
from llamasplit.devices.fleet import fleet_from_spec
from llamasplit.devices.measured import MeasuredSpeed
from llamasplit.model.profile import read_model
from llamasplit.memory.estimate import estimate
from llamasplit.memory.settings import LlamaSettings
from llamasplit.speed import calibration as C
from llamasplit.speed.data import coefficients
from llamasplit.speed.model import device_speed, host_speed, layer_split_speed

DECODE_TOLERANCE = 0.35
PREFILL_FACTOR = 3.0


@pytest.fixture(scope="module")
def errors():
    return C.errors(C.load_rows())


def test_every_calibration_row_is_reproduced(errors):
    assert len(errors) >= 120
    bad = []
    for row, predicted, err in errors:
        ratio = predicted / row.t_s
        ok = err <= DECODE_TOLERANCE if row.decode else 1 / PREFILL_FACTOR <= ratio <= PREFILL_FACTOR
        if not ok:
            bad.append((row.gpu, row.test, row.quant, row.t_s, round(predicted, 1)))
    assert not bad, bad
    decode = [e for r, _, e in errors if r.decode]
    assert statistics.median(decode) < 0.08  # the fit is good where it matters most


def test_stated_errors_are_the_real_ones(errors):
    """speed.json's per-family errors are what the shipped coefficients give on the shipped rows."""
    summary = C.summary(errors)
    fams = coefficients()["families"]
    for key, s in summary.items():
        fam, phase = key.split("/")
        assert fams[fam]["errors"][phase] == s, key


def test_every_row_names_its_source():
    rows = C.load_rows()
    assert all(r.source for r in rows)
    assert {r.family for r in rows} >= {"ampere", "ada", "hopper", "blackwell"}
    assert any(r.n_gpus > 1 for r in rows) and len({(r.shape, r.quant) for r in rows}) >= 5


def test_small_models_hit_the_fixed_cost_ceiling(smollm2_path):
    # published CUDA llama-bench results top out around 650-760 tok/s for small models: a
    # bandwidth roofline alone predicted 6,500 tok/s for SmolLM2-135M on a 3090
    model = read_model(smollm2_path)
    fleet = fleet_from_spec("3090")
    est = estimate(model, list(fleet.devices), LlamaSettings(n_ctx=4096), fast=True)
    sp = layer_split_speed(model, fleet, list(fleet.devices), est)
    assert 400 < sp.decode_tok_s < 800 and sp.speed_basis == "calibrated"


def test_basis_of_each_device():
    fleet = fleet_from_spec("3090")
    gpu = fleet.devices[0]
    assert device_speed(gpu).basis == "calibrated"
    maxwell = dataclasses.replace(gpu, compute_capability=(5, 2))
    assert device_speed(maxwell).basis == "datasheet"
    rpc = Device("rpc:127.0.0.1:1#0", "RPC0", "127.0.0.1:1", "RPC", 1 << 30, 1 << 30)
    assert device_speed(rpc) is None
    m = MeasuredSpeed(decode_gb_s=12.0, prefill_gflops=90.0, layer_us=10.0, token_us=400.0)
    sp = device_speed(dataclasses.replace(rpc, measured=m))
    assert (sp.basis, sp.bandwidth_bytes_s, sp.flops) == ("measured", 12e9, 90e9)
    assert (sp.layer_s, sp.token_s) == pytest.approx((1e-5, 4e-4))
    assert host_speed(HostInfo()).basis == "assumed"
    assert host_speed(HostInfo(ram_bandwidth_gb_s=80.0)).basis == "datasheet"
    assert host_speed(HostInfo(measured=m)).basis == "measured"


def test_decode_arithmetic_on_a_measured_worker(smollm2_path):
    # one measured device holding everything: bytes / bandwidth + layers x layer cost + token cost
    model = read_model(smollm2_path)
    m = MeasuredSpeed(decode_gb_s=10.0, prefill_gflops=50.0, layer_us=20.0, token_us=1000.0)
    dev = Device("rpc:127.0.0.1:1#0", "RPC0", "127.0.0.1:1", "RPC", 8 << 30, 8 << 30, measured=m)
    fleet = Fleet(devices=(dev,), host=HostInfo())
    est = estimate(model, [dev], LlamaSettings(n_ctx=4096), fast=True)
    sp = layer_split_speed(model, fleet, [dev], est, kv_fill=0.25)
    e = est.devices[0]
    seconds = (e.read_bytes + e.context_bytes * 0.25) / 10e9 + model.hparams.n_layer * 20e-6 + 1000e-6
    assert 1 / sp.decode_tok_s == pytest.approx(seconds)
    assert sp.basis == ("measured", "idle") and sp.speed_basis == "measured"
