"""The ``-sm tensor`` estimator, the communication model, ``llamasplit comm`` and ``recommend``,
on synthetic models with the arithmetic written out. tests/test_tensor_split_real.py checks the
same rules against llama.cpp itself."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
from gguf.constants import GGMLQuantizationType as Q

from llamasplit.cli import main
from llamasplit.devices.device import Device, Fleet, Link, LinkKind
from llamasplit.devices.fleet import fleet_from_spec
from llamasplit.errors import UsageError
from llamasplit.model.profile import read_model
from llamasplit.model.shapes import dense_profile
from llamasplit.speed import comm
from llamasplit.planner import recommend as R
from llamasplit.speed import links
from llamasplit.speed import model as speed
from llamasplit.memory.settings import LlamaSettings
from llamasplit.memory.tensor_split import (
    Axis, DENIED_ARCHS, arch_status, check_tensor_mode, compat_record, device_alloc_bytes, estimate_tensor, kv_slices,
    refuse_row_mode, weight_slices,
)
from synth import write_model

MiB = 1024 * 1024


def rpc(n: int) -> list[Device]:
    return [Device(id=f"rpc:h:{i}", name=f"RPC{i}", description="w", backend="RPC", total_bytes=None, free_bytes=None,
                   host=f"127.0.0.1:{5000 + i}") for i in range(n)]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """F32 llama: n_embd 192, 6 heads of 32 over 3 KV heads (n_gqa 2), FFN 640, 4 layers, untied
    1000-row output. The same shapes test_tensor_split_real.py runs through llama.cpp."""
    path = tmp_path_factory.mktemp("ts") / "syn.gguf"
    return read_model(write_model(path, n_layer=4, n_embd=192, n_head=6, n_head_kv=3, n_ff=640, n_vocab=1000))


def by_name(slices):
    return {s.name: s for s in slices}


def test_split_axes_granularity_and_rotation(synthetic):
    s = by_name(weight_slices(synthetic, 2, (1, 2)))
    # attention: F32 blocks (1) doubled while < 128 and x2 devices < n_gqa*head = 64: 32; lcm(64, 32) = 64
    # Q rows 192, -ts 1,2: high = int(192 * 1/3) = 64, a multiple of 64 -> 64 | 128
    assert s["blk.0.attn_q.weight"].axis is Axis.AXIS_1
    assert s["blk.0.attn_q.weight"].ne == (64, 128) and s["blk.0.attn_q.weight"].granularity == (64,)
    # K rows 96 = 3 heads of 32, granularity 64 / n_gqa = 32: int(96/3) = 32 -> 32 | 64 (one head | two)
    assert s["blk.0.attn_k.weight"].ne == (32, 64)
    # attn_output splits its input columns (axis 0) by whole heads: 2 heads x 32 = 64
    assert s["blk.0.attn_output.weight"].axis is Axis.AXIS_0 and s["blk.0.attn_output.weight"].ne == (64, 128)
    # FFN: lcm(1, 128) = 128. Layer 0 (rotation 0): int(640/3) = 213 -> 128 | 512.
    assert s["blk.0.ffn_up.weight"].ne == (128, 512) and s["blk.0.ffn_down.weight"].axis is Axis.AXIS_0
    # layer 1 rotates: the scan starts at device 1 (weight 2): int(640*2/3) = 426 -> 384 for device 1, 256 for device 0
    assert s["blk.1.ffn_up.weight"].rotation == 1 and s["blk.1.ffn_up.weight"].ne == (256, 384)
    # the output matrix by vocab rows, granularity 1, rotation n_layer % 2 = 0: int(1000/3) = 333 | 667
    assert s["output.weight"].axis is Axis.AXIS_1 and s["output.weight"].ne == (333, 667)
    # bytes: F32 rows of 192 floats
    assert s["output.weight"].n_bytes == (333 * 192 * 4, 667 * 192 * 4)
    # norms and the input embedding are mirrored
    assert s["blk.0.attn_norm.weight"].axis is Axis.MIRRORED and s["blk.0.attn_norm.weight"].n_bytes == (768, 768)
    assert s["token_embd.weight"].axis is Axis.MIRRORED


def test_split_slices_add_up(synthetic):
    for n, ts in ((2, None), (3, None), (3, (3, 1, 2)), (4, (1, 1, 1, 5))):
        for sl, t in zip(weight_slices(synthetic, n, ts), synthetic.tensors):
            if sl.axis.dim is None:
                assert sl.n_bytes == (t.n_bytes,) * n
            else:
                assert sum(sl.n_bytes) == t.n_bytes and sum(sl.ne) == t.shape[sl.axis.dim]
                remainder = (n - 1 + sl.rotation) % n  # the device that takes what is left
                assert all(e % sl.granularity[0] == 0 for j, e in enumerate(sl.ne) if j != remainder), sl


def test_even_split_uses_integer_arithmetic(synthetic):
    # no -ts: ne * (j+1) / n in integers, whatever the devices' free memory
    s = by_name(weight_slices(synthetic, 3, None))
    # FFN 640 / 3 = 213 -> 128, 2*640/3 = 426 -> 384: 128 | 256 | 256 (layer 0, rotation 0)
    assert s["blk.0.ffn_gate.weight"].ne == (128, 256, 256)
    # layer 1 rotation 1: the same widths shifted one device along
    assert s["blk.1.ffn_gate.weight"].ne == (256, 128, 256)


def test_kv_cache_split_by_whole_heads(synthetic):
    # 3 KV heads of 32 over 2 devices: granularity 32; int(96/2) = 48 -> 32: one head | two heads
    assert kv_slices(synthetic, 2, None, 0) == ((32, 64), (32, 64))
    assert kv_slices(synthetic, 2, None, 1) == ((64, 32), (64, 32))  # rotated


def test_rotation_counts_only_layers_of_the_same_kind(synthetic):
    # gemma-style: layers 0,1 sliding-window, 2 full, 3 sliding: layer 3 is the third SWA layer (rotation 2 % 2 = 0)
    hp = dataclasses.replace(synthetic.hparams, is_swa=(True, True, False, True))
    model = dataclasses.replace(synthetic, hparams=hp)
    s = by_name(weight_slices(model, 2, None))
    assert [s[f"blk.{il}.ffn_up.weight"].rotation for il in range(4)] == [0, 1, 0, 0]


def test_estimate_per_device_and_meta_figures(synthetic):
    settings = LlamaSettings(n_ctx=1024, flash_attn="on", binary="llama-completion", tensor_split=(1, 2))
    est = estimate_tensor(synthetic, rpc(2), settings)
    # KV per layer: 1024 cells x f16; K and V each; device 0 gets 1 head (32) in layers 0 and 2 (rotation 0) ...
    # layer 0: int(96 * 1/3) = 32 -> dev0 32, dev1 64; layer 1 rotated: int(96 * 2/3) = 64 for dev1 -> dev0 32
    k0 = sum(kv_slices(synthetic, 2, (1, 2), il)[0][0] for il in range(4))
    assert est.devices[0].context_bytes == k0 * 1024 * 2 * 2
    assert est.devices[0].context_bytes == 524288 and est.devices[1].context_bytes == 1048576  # what llama.cpp allocated
    assert est.meta_kv_bytes == (1048576,)
    # weights: what the two RPC workers allocated for exactly this model and -ts (test_tensor_split_real.py)
    assert [d.model_bytes for d in est.devices] == [2621952, 5827584]
    assert est.meta_model_bytes == 5827584
    # compute: what llama.cpp allocated for exactly this model and flags (llama-completion -m
    # <this model with an SPM vocab> --rpc <2 workers with GGML_RPC_DEBUG=1> -c 1024 -ngl 99 -ts 1,2
    # -sm tensor -fa on -t 1): each worker's third alloc_buffer was 6172672 bytes ("sched_reserve:
    # Meta() compute buffer size = 5.89 MiB") and the CPU's "compute buffer size = 1.76 MiB"
    assert [d.compute_bytes for d in est.devices] == [6172672, 6172672]
    assert est.meta_compute_bytes == 6172672
    assert f"{est.host.compute_bytes / MiB:.2f}" == "1.76"
    # the input embedding stays on the host
    assert est.host_mapped_bytes >= 1000 * 192 * 4


def test_cuda_slice_padding():
    # a Q4_K slice of 6912 columns: 6912 % 512 = 256, so one row of 256 more elements (144 bytes);
    # 10 rows of 6912/256*144 = 3888 bytes = 38880, + 144 = 39024, padded to 128: 39040
    assert device_alloc_bytes(int(Q.Q4_K), (6912, 10), "CUDA") == 39040
    assert device_alloc_bytes(int(Q.Q4_K), (6912, 10), "RPC") == 38880  # CPU alignment 32 divides it
    assert device_alloc_bytes(int(Q.Q4_K), (0, 10), "CUDA") == 0


def test_preconditions(synthetic):
    ok = LlamaSettings(flash_attn="on")
    assert check_tensor_mode(synthetic, rpc(2), ok).ok
    fa_off = check_tensor_mode(synthetic, rpc(2), ok.replace(flash_attn="off"))
    assert not fa_off.ok and "flash attention" in fa_off.reasons[0]
    cpu = [Device(id="cpu", name="CPU", description="cpu", backend="CPU", total_bytes=None, free_bytes=None)]
    assert any("non-CPU device" in r for r in check_tensor_mode(synthetic, cpu, ok).reasons)
    assert any("single device" in w for w in check_tensor_mode(synthetic, rpc(1), ok).warnings)
    for arch in ("mamba", "deepseek2", "olmoe"):
        assert arch in DENIED_ARCHS
        denied = check_tensor_mode(dataclasses.replace(synthetic, arch=arch), rpc(2), ok)
        assert not denied.ok and f"'{arch}'" in denied.reasons[0]
    gemma = check_tensor_mode(dataclasses.replace(synthetic, arch="gemma3"), rpc(2), ok)
    assert not gemma.ok and "GGML_ASSERT" in gemma.reasons[0]
    assert arch_status("qwen2")[0] == "untested"
    untested = check_tensor_mode(dataclasses.replace(synthetic, arch="qwen2"), rpc(2), ok)
    assert untested.ok and untested.warnings
    assert not check_tensor_mode(dataclasses.replace(synthetic, arch="qwen2"), rpc(2), ok, allow_untested=False).ok
    with pytest.raises(UsageError, match="flash"):
        estimate_tensor(synthetic, rpc(2), ok.replace(flash_attn="off"))


def test_quantised_cache_slices_must_fill_blocks(tmp_path):
    # head size 48 (n_embd 96, 2 heads, 1 KV head): a q4_0 K row of 48 is not a whole number of 32-blocks
    model = read_model(write_model(tmp_path / "h48.gguf", n_embd=96, n_head=2, n_head_kv=1, n_ff=128))
    bad = check_tensor_mode(model, rpc(2), LlamaSettings(flash_attn="on", type_k="q4_0", type_v="q4_0"))
    assert not bad.ok and "blocks of 32" in bad.reasons[0]


def test_row_mode_is_refused():
    with pytest.raises(UsageError, match="does not support split buffers"):
        refuse_row_mode(rpc(2))
    sycl = [dataclasses.replace(d, backend="SYCL") for d in rpc(2)]
    with pytest.raises(UsageError, match="only the SYCL backend"):
        refuse_row_mode(sycl)


# ---------------------------------------------------------------------------------------------
# communication


def test_allreduce_algorithm_by_backend():
    cuda = [Device(id=f"g{i}", name=f"CUDA{i}", description="x", backend="CUDA", total_bytes=1, free_bytes=1) for i in range(3)]
    assert comm.allreduce_algorithm(cuda)[0] is comm.Algorithm.NCCL_RING
    assert comm.allreduce_algorithm(cuda[:2], nccl=False)[0] is comm.Algorithm.CUDA_INTERNAL
    assert comm.allreduce_algorithm(cuda, nccl=False)[0] is comm.Algorithm.BUTTERFLY
    assert comm.allreduce_algorithm(rpc(3))[0] is comm.Algorithm.BUTTERFLY_HOST
    vk = [dataclasses.replace(d, backend="Vulkan") for d in cuda]
    assert comm.allreduce_algorithm(vk)[0] is comm.Algorithm.BUTTERFLY
    assert comm.allreduce_algorithm(cuda[:1])[0] is comm.Algorithm.NONE


def test_allreduce_seconds_arithmetic():
    link = links.LinkCost("nvlink", 10e-6, 100e9)
    # ring, 4 GPUs, 1000 floats (< 262144: F32): 6 steps x 10 us + 1.5 x 4000 bytes / 100 GB/s
    assert comm.allreduce_seconds(1000, 4, comm.Algorithm.NCCL_RING, link) == pytest.approx(60e-6 + 1.5 * 4000 / 100e9)
    # large: reduced as BF16, 2 bytes
    assert comm.allreduce_seconds(10**6, 4, comm.Algorithm.NCCL_RING, link) == pytest.approx(60e-6 + 1.5 * 2e6 / 100e9)
    # butterfly over 3: ceil(log2 3) = 2 steps plus the copy-back, each the whole tensor
    assert comm.allreduce_seconds(1000, 3, comm.Algorithm.BUTTERFLY, link) == pytest.approx(3 * (10e-6 + 4000 / 100e9))
    # RPC: 4 copies for 3 devices, each a get and a set through the client
    staged = links.LinkCost("rpc-loopback", 500e-6, 1e9, staged=True)
    assert comm.allreduce_seconds(576, 3, comm.Algorithm.BUTTERFLY_HOST, staged) == pytest.approx(4 * (500e-6 + 2 * 2304 / 1e9))
    assert comm.allreduce_seconds(576, 1, comm.Algorithm.BUTTERFLY_HOST, staged) == 0.0
    assert [comm.butterfly_steps(n) for n in (1, 2, 3, 4, 5, 8)] == [0, 1, 2, 2, 3, 3]
    assert comm.ring_factor(4) == 1.5 and comm.ring_factor(2) == 1.0


def test_worked_example_traffic():
    t = comm.Traffic(n_embd=4096, n_layer=32, tp=4, tokens=32 * 2048, dtype_bytes=2)
    assert t.activation_bytes == 32 * 2048 * 4096 * 2 == 536870912          # 0.537 GB
    assert t.layer_bytes == 1073741824                                      # 1.07 GB: two of them
    assert 2 * t.layer_bytes == 2147483648                                  # 2.15 GB: the design's factor of 2
    assert t.wire_bytes_per_device(t.ring_factor) == 1.5 * 1073741824      # exact ring 2(n-1)/n = 1.5
    assert t.model_bytes == 34359738368                                     # 32 layers
    assert t.butterfly_bytes_per_layer == 2 * 1073741824                    # ceil(log2 4) = 2 whole-tensor steps


def test_group_link_takes_the_slowest_pair():
    fleet = fleet_from_spec("2xh100-sxm,2xl4")
    h100 = links.group_link(fleet, fleet.devices[:2])
    assert h100.kind == "nvlink" and h100.bandwidth_bytes_s == 450e9
    mixed = links.group_link(fleet, fleet.devices)
    assert mixed.kind == "pcie-p2p" and mixed.bandwidth_bytes_s == pytest.approx(31.52e9)
    staged = Fleet(devices=fleet.devices[:2], links=(Link(fleet.devices[0].id, fleet.devices[1].id, LinkKind.SYS, 20.0),))
    cost = links.group_link(staged, staged.devices)
    assert cost.kind == "host-staged" and cost.staged and cost.seconds(1e6) == pytest.approx(25e-6 + 2e6 / 20e9)
    assert links.group_link(fleet, fleet.devices[:1]) is None


def test_loopback_rpc_link_comes_from_the_measured_record():
    link = links.group_link(None, rpc(3))
    cal = compat_record()["calibration"]["rpc_loopback"]
    assert link.kind == "rpc-loopback" and link.staged
    assert link.latency_s == pytest.approx(cal["latency_us"] * 1e-6) and link.subgraph_s == pytest.approx(cal["subgraph_us"] * 1e-6)
    lan = [dataclasses.replace(d, host=f"10.0.0.{i}:50052") for i, d in enumerate(rpc(2))]
    assert links.group_link(None, lan).kind == "network"


def test_unknown_speed_is_not_a_reason_to_call_an_option_infeasible(synthetic):
    # two CPU-backed RPC workers nobody measured: every option fits, none has a predicted speed
    fleet = Fleet(devices=tuple(dataclasses.replace(d, total_bytes=8 << 30, free_bytes=8 << 30) for d in rpc(2)))
    rec = R.recommend(synthetic, fleet, LlamaSettings(n_ctx=1024))
    kinds = {o.kind: o for o in rec.options}
    assert all(o.fits and not o.known for o in rec.options), [(o.kind, o.why_not) for o in rec.options]
    assert set(kinds) == {"single", "layer", "tensor", "data-parallel"}
    assert rec.best is not None and "speeds cannot be compared" in rec.verdict and "RPC0" in rec.verdict
    assert kinds["layer"].to_dict()["decode_tok_s"] is None and kinds["layer"].speed.unknown == ("RPC0", "RPC1")
    # once measured, the same fleet ranks by speed
    from llamasplit.devices.measured import MeasuredSpeed

    fast, slow = MeasuredSpeed(20.0, 100.0, 10.0, 500.0), MeasuredSpeed(5.0, 30.0, 10.0, 500.0)
    measured = Fleet(devices=(dataclasses.replace(fleet.devices[0], measured=slow),
                              dataclasses.replace(fleet.devices[1], measured=fast)))
    rec = R.recommend(synthetic, measured, LlamaSettings(n_ctx=1024))
    assert all(o.known for o in rec.options) and rec.best.kind == "single" and rec.best.devices == ("RPC1",)
    assert rec.best.speed.speed_basis == "measured"


def test_predict_arithmetic():
    # two devices of 1 GB/s and 1 GFLOP/s; one attention and one FFN stage
    work = speed.Workload("tensor", ("a", "b"), (((1e6, 1e6), (1e6, 1e6)), ((2e6, 0.0), (1e6, 0.0))), n_embd=100,
                         n_vocab=10, n_allreduce=2, algorithm=comm.Algorithm.BUTTERFLY_HOST, n_subgraphs=3)
    dev = speed.DeviceSpeed(1e9, 1e9)
    link = links.LinkCost("rpc-loopback", 1e-3, 1e9, staged=True, subgraph_s=1e-4)
    est = speed.predict(work, [dev, dev], link, prompt_tokens=10, n_ubatch=512)
    # decode: stages take max(1 ms, 1 ms) + max(2 ms, 1 ms) = 3 ms; 2 all-reduces x 2 copies x (1 ms + 800 B / 1 GB/s)
    # + 3 subgraphs x 0.1 ms
    comm_s = 2 * 2 * (1e-3 + 2 * 400 / 1e9) + 3e-4
    assert est.decode_comm_s == pytest.approx(comm_s)
    assert 1 / est.decode_tok_s == pytest.approx(3e-3 + comm_s)
    # one device computing at a time: a stage lasts the sum, 2 ms + 3 ms
    one = speed.predict(work, [dev, dev], link, prompt_tokens=10, parallel=1)
    assert 1 / one.decode_tok_s == pytest.approx(5e-3 + comm_s)
    # prefill of 10 tokens: 10 x 1e6 FLOPs on each device in parallel = 10 ms, all-reduces of 10 x 100 floats
    pre_comm = 2 * 2 * (1e-3 + 2 * 4000 / 1e9) + 3e-4
    assert 10 / est.prefill_tok_s == pytest.approx(10e-3 + pre_comm)


def test_fit_recovers_known_parameters(synthetic):
    truth_speed = speed.DeviceSpeed(8e9, 40e9)
    truth_link = links.LinkCost("rpc-loopback", 450e-6, 0.6e9, staged=True, subgraph_s=150e-6)
    obs = []
    for n in (1, 2, 3):
        for mode in ("layer", "tensor"):
            devices = rpc(n)
            names = [d.name for d in devices]
            s = LlamaSettings(n_ctx=1024, flash_attn="on", binary="llama-completion", tensor_split=(1.0,) * n)
            if mode == "tensor":
                work = speed.tensor_workload(synthetic, estimate_tensor(synthetic, devices, s), names,
                                            comm.Algorithm.BUTTERFLY_HOST, prompt_tokens=100)
            else:
                from llamasplit.memory.estimate import estimate

                work = speed.layer_workload(synthetic, estimate(synthetic, devices, s), names, prompt_tokens=100)
            cal = speed.Calibration(truth_speed, truth_link, 2.0, 0.0)
            p = speed.predict_calibrated(work, cal, prompt_tokens=100)
            obs.append(speed.Observation(work, 100, 1 / p.decode_tok_s, 100 / p.prefill_tok_s))
    fit = speed.fit_link(obs)
    assert fit.parallel == 2.0 and fit.residual < 1e-9
    assert fit.link.latency_s == pytest.approx(450e-6) and fit.link.subgraph_s == pytest.approx(150e-6)
    assert fit.link.bandwidth_bytes_s == pytest.approx(0.6e9) and fit.speed.bandwidth_bytes_s == pytest.approx(8e9)
    assert fit.speed.flops == pytest.approx(40e9)


def test_tensor_workload_counts_two_allreduces_per_layer(synthetic):
    s = LlamaSettings(n_ctx=1024, flash_attn="on", tensor_split=(1, 1))
    work = speed.tensor_workload(synthetic, estimate_tensor(synthetic, rpc(2), s), ["a", "b"], comm.Algorithm.BUTTERFLY_HOST)
    assert work.n_allreduce == 2 * 4 and work.n_subgraphs == 9
    assert len(work.stages) == 2 * 4 + 1  # attention and FFN of each layer, then the output


# ---------------------------------------------------------------------------------------------
# recommend


def test_recommend_tensor_on_nvlink_for_a_70b():
    rec = R.recommend(dense_profile(), fleet_from_spec("2xh100-sxm,2xl4"))
    kinds = {o.kind: o for o in rec.options}
    assert set(kinds) == {"single", "layer", "tensor", "data-parallel"}
    assert rec.best is kinds["tensor"] and rec.best.devices == ("CUDA0", "CUDA1")
    assert kinds["tensor"].decode_tok_s > kinds["layer"].decode_tok_s
    assert kinds["data-parallel"].replicas == 2  # the Q4_K_M 70B fits one H100, not one L4
    assert "\n" not in rec.verdict and rec.verdict.startswith("use tensor split over CUDA0,CUDA1")
    assert "-sm" in kinds["tensor"].argv and "tensor" in kinds["tensor"].argv


def test_recommend_small_model_stays_on_one_gpu():
    small = dense_profile(n_layer=16, n_embd=1024, n_head=16, n_head_kv=4, n_ff=4096, n_vocab=32000, name="small")
    rec = R.recommend(small, fleet_from_spec("2xh100-sxm"))
    assert rec.best.kind in ("single", "layer")
    tensor = next(o for o in rec.options if o.kind == "tensor")
    assert tensor.speed.decode_comm_share > 0.4  # latency-bound all-reduces: a large share of a small model's token
    assert "tensor split loses" in rec.verdict


def test_recommend_never_proposes_a_crashing_arch():
    gemma = dense_profile(arch="gemma3", name="gemma-shape")
    rec = R.recommend(gemma, fleet_from_spec("2xh100-sxm"))
    tensor = next(o for o in rec.options if o.kind == "tensor")
    assert not tensor.fits and "gemma3" in tensor.why_not
    assert rec.best.kind != "tensor"


# ---------------------------------------------------------------------------------------------
# CLI


def test_comm_cli_worked_example(capsys):
    assert main(["comm", "llama-7b", "--tp", "4", "--batch", "32", "--seq", "2048", "--dtype-bytes", "2"]) == 0
    out = capsys.readouterr()
    for figure in ("0.537 GB (536870912 bytes)", "1.074 GB", "ring 2(n-1)/n = 1.50: 1.611 GB",
                   "design's ring factor of 2:   2.147 GB", "activations 34.360 GB", "51.540 GB = 0.515 s at 100 GB/s",
                   '"~1 GB per layer, 32 GB total, 0.32 s at 100 GB/s"'):
        assert figure in out.out, figure
    assert out.err == ""


def test_comm_cli_json_and_gguf(capsys, synthetic):
    assert main(["comm", synthetic.path, "--tp", "3", "--seq", "8", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["activation_bytes"] == 8 * 192 * 2 and data["layer_bytes"] == 2 * 8 * 192 * 2
    assert data["ring_factor"] == pytest.approx(4 / 3) and data["decode_allreduces_per_token"] == 8
    assert data["butterfly_steps"] == 3  # ceil(log2 3) = 2, plus the copy-back


def test_comm_cli_rejects_unknown_model(capsys):
    assert main(["comm", "llama-9000b"]) == 2
    assert "neither a file nor a model shape" in capsys.readouterr().err


def test_recommend_cli(capsys):
    assert main(["recommend", "llama-70b", "--fleet", "2xh100-sxm,2xl4"]) == 0
    out = capsys.readouterr()
    lines = out.out.strip().splitlines()
    assert lines[-1].startswith("use tensor split over CUDA0,CUDA1")
    assert any(line.startswith("tensor") and "nccl-ring over nvlink" in line for line in lines)
    assert "simulated fleet" in out.err
    assert main(["recommend", "llama-70b", "--fleet", "2xh100-sxm", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["best"]["kind"] == "tensor" and math.isfinite(data["best"]["speed"]["decode_tok_s"])
