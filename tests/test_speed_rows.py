"""The speed model's per-row costs and the output matrix a prompt reads once: which rows count
(the host's repacked weights do not), the arithmetic of a prediction, and the bench fit that
recovers the coefficients."""

from __future__ import annotations

import pytest

from llamasplit.devices.measured import MeasuredSpeed
from llamasplit.memory.estimate import estimate
from llamasplit.memory.repack import CpuFeatures
from llamasplit.memory.settings import LlamaSettings
from llamasplit.model.profile import read_model
from llamasplit.speed.measure import JOINT_TYPE, BenchResult, Features, fit_device
from llamasplit.speed.model import DeviceSpeed, StageRows, Workload, layer_workload, predict
from llamasplit.speed.probe import ProbeShape, write_probe

AVX2 = CpuFeatures(frozenset({"avx2", "fma", "f16c"}), "x86_64")
SHAPE = dict(n_layer=4, n_embd=256, n_ff=768, n_head=4, n_head_kv=2, n_vocab=4096)
ROWS_PER_LAYER = 256 + 128 + 128 + 256 + 768 + 768 + 256
"""ne1 of attn_q, attn_k, attn_v, attn_output, ffn_gate, ffn_up, ffn_down (head 64, 2 KV heads)."""


def _host_rows(tmp_path, qtype: str, cpu):
    path = write_probe(tmp_path / f"{qtype}.gguf", ProbeShape(f"p-{qtype}", qtype=qtype, **SHAPE))
    model = read_model(path)
    s = LlamaSettings(n_ctx=256, n_gpu_layers=0, binary="llama-completion")
    est = estimate(model, [], s, fast=True, cpu=cpu)
    work = layer_workload(model, est, [], prompt_tokens=64, host=True, cpu=cpu)
    (rows,) = work.rows
    return rows, est


def test_plain_rows_are_every_matrix_row(tmp_path):
    rows, _ = _host_rows(tmp_path, "Q8_0", None)
    assert rows.decode == 4 * ROWS_PER_LAYER + 4096  # the layers and the output's vocabulary rows
    assert rows.prefill == 4 * ROWS_PER_LAYER  # a prompt token computes no logits but the last one's
    assert rows.output_rows == 4096 and rows.output_type == "Q8_0"
    assert rows.prefill_types == (("Q8_0", 4 * ROWS_PER_LAYER),)  # every layer matrix is Q8_0
    assert rows.output_bytes == 4096 * 256 // 32 * 34 + 256 * 4  # output.weight (Q8_0: 34 bytes per 32) and output_norm (F32)


def test_repacked_host_weights_cost_no_row_time(tmp_path):
    # x86 AVX2 repacks Q4_0 matrices with ne1 % 8 == 0 (ggml-cpu/repack.cpp), never Q8_0
    q4, est = _host_rows(tmp_path, "Q4_0", AVX2)
    assert est.host.extra_buffers.get("CPU_REPACK")
    assert q4.decode == 0 and q4.prefill == 0 and q4.output_rows == 0
    q8, est8 = _host_rows(tmp_path, "Q8_0", AVX2)
    assert not est8.host.extra_buffers and q8.decode == 4 * ROWS_PER_LAYER + 4096


def test_prediction_adds_row_costs_and_one_output_read_per_ubatch():
    speed = DeviceSpeed(10e9, 100e9, layer_s=20e-6, token_s=300e-6, row_s=5e-9, prefill_row_s=2e-9)
    rows = StageRows(decode=1e5, prefill=8e4, output_bytes=2e7, output_rows=2e4, output_type="Q8_0")
    work = Workload("layer", ("X",), (((1e8, 2e8),),), 256, 4096, layers=(10.0,), rows=(rows,))
    est = predict(work, [speed], None, prompt_tokens=1024, n_ubatch=512)
    decode_s = 1e8 / 10e9 + 10 * 20e-6 + 1e5 * 5e-9 + 300e-6
    assert 1 / est.decode_tok_s == pytest.approx(decode_s, rel=1e-12)
    ubatch_s = 512 * (2e8 / 100e9 + 8e4 * 2e-9) + 10 * 20e-6 + 2e7 / 10e9 + 2e4 * 5e-9
    # one stage: two ubatches one after the other, each with the device's token cost
    assert 1024 / est.prefill_tok_s == pytest.approx(2 * ubatch_s + 2 * 300e-6, rel=1e-12)


def test_fit_recovers_row_costs_and_the_joint_type():
    truth = MeasuredSpeed(decode_gb_s=12.0, prefill_gflops=150.0, layer_us=25.0, token_us=400.0, row_ns=9.0,
                          prefill_row_ns=3.0, types={JOINT_TYPE: [20.0, 90.0]}, prefill_read_gb_s=15.0)
    jr = truth.types[JOINT_TYPE]
    wide_short = Features(215e6, 11e9, 24, 2.9e5, 2.9e5 * 16, 4e6, 8192, ubatch_bytes=215e6)  # 16 tokens
    feats = [  # narrow, wide (64 tokens), deep (Q4_0), the Q4_0 reference, the Q8_0 type probe, the Q8_0 vocabulary probe
        Features(13e6, 5e9, 24, 7e4, 7e4 * 128, 4e6, 8192, ubatch_bytes=13e6),
        Features(215e6, 44e9, 24, 2.9e5, 2.9e5 * 64, 4e6, 8192, ubatch_bytes=215e6),
        Features(40e6, 19e9, 96, 2.5e5, 2.5e5 * 128, 4e6, 8192, ubatch_bytes=40e6),
        Features(45e6, 18e9, 8, 6.9e4, 6.9e4 * 128, 4e6, 8192, ubatch_bytes=45e6),
        Features(85e6, 18e9, 8, 6.9e4, 6.9e4 * 128, 9e6, 8192, 85e6, 18e9, JOINT_TYPE, ubatch_bytes=85e6),
        Features(95e6, 5e9, 24, 3.2e5, 6.1e4 * 128, 7e7, 262144, 95e6, 5e9, JOINT_TYPE, ubatch_bytes=95e6),
    ]

    def prefill(f: Features) -> float:
        return ((f.prompt_flops - f.joint_flops) / (truth.prefill_gflops * 1e9) + f.joint_flops / (jr[1] * 1e9)
                + f.prefill_fixed_s(truth))

    def seconds(f: Features) -> BenchResult:
        dec = ((f.bytes_per_token - f.joint_bytes) / (truth.decode_gb_s * 1e9) + f.joint_bytes / (jr[0] * 1e9)
               + f.decode_fixed_s(truth))
        return BenchResult("m", dec, prefill(f) if f.prompt_flops else None, 128, 32)

    runs = [(f, seconds(f)) for f in feats]
    runs[1] = (feats[1], BenchResult("wide", runs[1][1].decode_s, prefill(feats[1]), 64, 32, prefill(wide_short)))
    m = fit_device(runs, threads=2, how="test", read_pair=(feats[1], wide_short, runs[1][1]))
    assert m.decode_gb_s == pytest.approx(12.0, rel=1e-3) and m.prefill_gflops == pytest.approx(150.0, rel=1e-3)
    assert m.layer_us == pytest.approx(25.0, rel=1e-3) and m.token_us == pytest.approx(400.0, rel=1e-3)
    assert m.row_ns == pytest.approx(9.0, rel=1e-3) and m.prefill_row_ns == pytest.approx(3.0, rel=1e-3)
    assert m.types[JOINT_TYPE] == [pytest.approx(20.0, rel=1e-3), pytest.approx(90.0, rel=1e-3)]
    assert m.prefill_read_gb_s == pytest.approx(15.0, rel=1e-3)


def test_a_measured_read_rate_adds_the_stage_weights_once_per_ubatch():
    plain = DeviceSpeed(10e9, 100e9, layer_s=20e-6, token_s=300e-6)
    reads = DeviceSpeed(10e9, 100e9, layer_s=20e-6, token_s=300e-6, prefill_read_bytes_s=5e9)
    rows = StageRows(output_bytes=2e7, output_type="Q8_0")
    work = Workload("layer", ("X",), (((1e8, 2e8),),), 256, 4096, layers=(10.0,), rows=(rows,))
    a, b = (predict(work, [s], None, prompt_tokens=1024, n_ubatch=512) for s in (plain, reads))
    assert 1 / a.decode_tok_s == 1 / b.decode_tok_s  # decode reads the weights anyway
    # two ubatches, each reading the stage's 1e8 bytes but the output's 2e7 (charged once already)
    # at 5 GB/s: 2 x 16 ms more
    assert 1024 / b.prefill_tok_s - 1024 / a.prefill_tok_s == pytest.approx(2 * 8e7 / 5e9, rel=1e-9)


def test_inventory_without_row_costs_reads_as_none_charged():
    m = MeasuredSpeed.from_dict({"decode_gb_s": 10.0, "prefill_gflops": 50.0, "layer_us": 5.0, "token_us": 100.0})
    assert m.row_ns == 0.0 and m.prefill_row_ns == 0.0 and m.prefill_read_gb_s is None


def test_a_type_with_its_own_row_cost_pays_it_on_its_rows_only():
    from llamasplit.speed.model import _measured

    m = MeasuredSpeed(decode_gb_s=10.0, prefill_gflops=100.0, prefill_row_ns=2.0,
                      types={"Q4_1": [8.0, 50.0, 6.0], JOINT_TYPE: [12.0, 90.0]})
    speed = _measured(m)
    assert speed.type_prefill_row_s == (("Q4_1", pytest.approx(6e-9)),)  # Q8_0 has none: the device's 2 ns
    rows = StageRows(prefill=8e4, prefill_types=(("Q4_1", 5e4), (JOINT_TYPE, 3e4)))
    base = StageRows(prefill=8e4)
    work = lambda r: Workload("layer", ("X",), (((1e8, 2e8),),), 256, 4096, layers=(1.0,), rows=(r,))
    a, b = (predict(work(r), [speed], None, prompt_tokens=512, n_ubatch=512) for r in (base, rows))
    # one ubatch of 512 tokens: the 5e4 Q4_1 rows at 6 ns instead of 2 ns
    assert 512 / b.prefill_tok_s - 512 / a.prefill_tok_s == pytest.approx(512 * 5e4 * 4e-9, rel=1e-9)


def test_bench_table_shows_the_prompt_read_rate():
    import dataclasses

    from llamasplit.cli.bench import bench_table
    from llamasplit.devices.device import Device, Fleet, HostInfo

    worker = Device("rpc:127.0.0.1:5000#0", "RPC0", "127.0.0.1:5000", "RPC", 1 << 30, 1 << 30, host="127.0.0.1:5000",
                    measured=MeasuredSpeed(decode_gb_s=7.7341, prefill_gflops=101.81, prefill_read_gb_s=9.7243, threads=1))
    host = dataclasses.replace(HostInfo(), measured=MeasuredSpeed(decode_gb_s=28.7, prefill_gflops=233.1, threads=2))
    lines = bench_table(Fleet(devices=(worker,), host=host)).splitlines()
    assert "prefill GFLOP/s  prompt read GB/s  layer us" in lines[0]
    assert lines[1].split()[-4] == "-"  # the host: no read measured
    assert lines[2].split()[1:5] == ["7.73", "101.8", "9.7", "0.0"]
