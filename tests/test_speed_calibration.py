"""The speed model against published llama-bench results, and where each device's speed comes from.

Tolerances (stated in ``speed.json``): every decode row (tg128) within 35 %; every prefill row
(pp512) within 25 %: prefill runs each weight type at the rate of the kernel the pinned llama.cpp
picks for it (MMQ on int8 tensor cores or dp4a, cuBLAS FP16 GEMM with FP16 accumulate), scaled by
the power the card may draw per SM, plus the KQ traffic without flash attention. Rows with an
``excluded`` reason (an old build's kernels) are neither fitted nor checked.
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
PREFILL_TOLERANCE = 0.25


@pytest.fixture(scope="module")
def errors():
    return C.errors(C.load_rows())


def test_every_calibration_row_is_reproduced(errors):
    assert len(errors) >= 120
    bad = []
    for row, predicted, err in errors:
        ok = err <= (DECODE_TOLERANCE if row.decode else PREFILL_TOLERANCE)
        if not ok:
            bad.append((row.gpu, row.test, row.quant, row.t_s, round(predicted, 1)))
    assert not bad, bad
    decode = [e for r, _, e in errors if r.decode]
    assert statistics.median(decode) < 0.08  # the fit is good where it matters most
    prefill = [e for r, _, e in errors if not r.decode]
    assert len(prefill) >= 75 and statistics.median(prefill) < 0.07
    assert coefficients()["tolerance"]["decode"] == DECODE_TOLERANCE
    assert coefficients()["tolerance"]["prefill"] == PREFILL_TOLERANCE


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


def test_excluded_rows_say_why_and_are_not_checked(errors):
    rows = C.load_rows()
    excluded = [r for r in rows if r.excluded]
    assert excluded and all("build" in r.excluded for r in excluded)
    assert len(excluded) <= 0.05 * len(rows)  # data is kept, and dropping it is the exception
    checked = {r for r, _, _ in errors}
    assert not any(r in checked for r in excluded)


def test_catalog_prefill_rates_are_consistent():
    # every tensor-core generation from Turing on does 2 INT8 ops per FP16-accumulate FLOP (whitepaper
    # per-SM rates); GeForce cards halve only the FP32-accumulate rate (fp16_tflops), other cards do not
    from llamasplit.devices.catalog import load_catalog

    for spec in load_catalog().specs.values():
        assert spec.int8_tops and spec.board_power_w and spec.sm_count, spec.key
        if spec.compute_capability >= (7, 5):
            # datasheets round, and the L40S one lists 362.05 FP16 next to 733 INT8 dense TOPS
            assert spec.int8_tops == pytest.approx(2 * spec.fp16_acc16_tflops, rel=0.015), spec.key
            geforce = "GeForce" in spec.name
            assert spec.fp16_acc16_tflops == pytest.approx(spec.fp16_tflops * (2 if geforce else 1), rel=0.002), spec.key


def test_prefill_rate_follows_the_kernel_llama_cpp_picks():
    c = coefficients()
    ada = c["families"]["ada"]
    gpu = fleet_from_spec("4090").devices[0]
    sp = device_speed(gpu)
    power = (450 / 128 / c["prefill_power"]["reference_w_per_sm"]) ** c["prefill_power"]["exponent"]
    # quantized weights: MMQ on int8 tensor cores; F16: cuBLAS with FP16 accumulate (the full GeForce rate)
    assert sp.rates("Q4_K")[1] == sp.flops == pytest.approx(660.6e12 * ada["prefill_mmq_efficiency"] * power)
    assert sp.rates("F16")[1] == pytest.approx(330.3e12 * ada["prefill_cublas_efficiency"] * power)
    # BF16 runs cuBLAS with FP32 accumulate: GeForce's half rate
    assert sp.rates("BF16")[1] == pytest.approx(165.2e12 * ada["prefill_cublas_efficiency"] * power)
    # Volta has no int8 tensor cores: a prompt batch of quantized weights goes to cuBLAS FP16
    v100 = device_speed(fleet_from_spec("v100").devices[0])
    volta = c["families"]["volta"]
    power = (250 / 80 / c["prefill_power"]["reference_w_per_sm"]) ** c["prefill_power"]["exponent"]
    assert v100.flops == pytest.approx(112e12 * volta["prefill_cublas_efficiency"] * power)


def test_prefill_without_flash_attention_is_slower(smollm2_path):
    model = read_model(smollm2_path)
    fleet = fleet_from_spec("3090")
    speeds = {}
    for fa in ("on", "off"):
        est = estimate(model, list(fleet.devices), LlamaSettings(n_ctx=4096, flash_attn=fa), fast=True)
        speeds[fa] = layer_split_speed(model, fleet, list(fleet.devices), est, prompt_tokens=512)
    assert speeds["off"].prefill_tok_s < speeds["on"].prefill_tok_s
    assert speeds["off"].decode_tok_s == pytest.approx(speeds["on"].decode_tok_s)


def test_every_prefill_row_is_predicted_or_says_why(errors):
    checked = {r for r, _, _ in errors}
    for r in C.load_rows():
        if r.decode or r.excluded:
            continue
        if not r.catalog_key and (r.int8_tops or r.fp16_acc16_tflops):
            assert r.figures_source, r.gpu  # the row's own figures name their source
        if r not in checked:
            assert r.figures_source.startswith("no prefill rates"), r.gpu


def test_tensor_split_runs_each_device_at_its_type_mix():
    # one device whose F16 weights multiply at a tenth of its main rate: a tensor-split stage of
    # only F16 weights takes FLOPs x ubatch / the F16 rate (layer split already did)
    from llamasplit.speed.comm import Algorithm
    from llamasplit.speed.model import DeviceSpeed, Workload, predict

    work = Workload("tensor", ("a",), (((1e9, 2e9),),), n_embd=100, n_vocab=10, n_allreduce=0,
                    algorithm=Algorithm.NONE, n_subgraphs=0, layers=(0.0,), type_mix=((("F16", 1e9, 2e9),),))
    speed = DeviceSpeed(1e11, 1e13, types=(("F16", 1e11, 1e12),))
    est = predict(work, [speed], None, prompt_tokens=512)
    assert est.prefill_tok_s == pytest.approx(512 / (2e9 / 1e12 * 512))
    assert est.decode_tok_s == pytest.approx(1 / (1e9 / 1e11))
