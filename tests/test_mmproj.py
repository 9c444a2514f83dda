"""The multimodal projector (``--mmproj``): exact arithmetic, figures recorded from real runs, the
device rule, the plan and argv, and bad input (one line each). No llama.cpp binary runs here;
``test_mmproj_real.py`` compares with llama-server itself.

The compute figures below were recorded from the pinned llama.cpp (GGML_RPC_DEBUG worker's
``alloc_buffer`` lines, bytes; the projector on the worker, the text model on the CPU)::

    GGML_RPC_DEBUG=1 ggml-rpc-server -p PORT &
    llama-server -m SmolLM2-135M-Instruct.Q4_1.gguf --mmproj MMPROJ --rpc 127.0.0.1:PORT -ngl 0 \
        -c 1024 -fit off -t 1 -lv 4 [-fa off]

``A`` = ``write_gemma3_mmproj`` defaults; ``B`` = ``n_embd=96, n_head=3, n_ff=200, n_layer=1,
image_size=512, patch_size=16, n_merge=2, matrix_type="Q8_0"``; ``I`` and ``I2`` are idefics3
(SmolVLM) projectors, ``I`` with a 30-patch side that the pixel shuffle pads to 32; ``L`` and
``L2`` are LLaVA-1.5 (``mlp``) projectors; ``P`` and ``P2`` Pixtral ones (2D rope, SwiGLU, ``P2`` with
Mistral-Small-3.1's 2 x 2 patch merger).
"""

from __future__ import annotations

import json

import pytest
from synth import write_gemma3_mmproj, write_model

import llamasplit
from llamasplit.devices.device import Device
from llamasplit.errors import ModelReadError, NoFeasiblePlan, UsageError
from llamasplit.memory.mmproj import estimate_projector, projector_device, weights_bytes
from llamasplit.model.projector import find_beside, read_projector

MiB = 1024 * 1024
B_SPEC = dict(n_embd=96, n_head=3, n_ff=200, n_layer=1, image_size=512, patch_size=16, n_merge=2, matrix_type="Q8_0")
I_SPEC = dict(proj_type="idefics3", n_merge=4, image_size=480, patch_size=16, n_embd=72, n_head=4, n_ff=160, n_layer=2)
L_SPEC = dict(proj_type="mlp", image_size=336, patch_size=14, n_embd=64, n_head=4, n_ff=256, n_layer=3)
L2_SPEC = dict(proj_type="mlp", image_size=224, patch_size=16, n_embd=96, n_head=2, n_ff=192, n_layer=2, matrix_type="Q8_0")
P_SPEC = dict(proj_type="pixtral", n_merge=1, image_size=512, patch_size=16, n_embd=64, n_head=4, n_ff=128, n_layer=2)
P2_SPEC = dict(proj_type="pixtral", n_merge=2, image_size=512, patch_size=14, n_embd=96, n_head=2, n_ff=160, n_layer=1)
I2_SPEC = dict(proj_type="idefics3", n_merge=4, image_size=512, patch_size=16, n_embd=64, n_head=2, n_ff=128, n_layer=1,
               matrix_type="Q8_0")


@pytest.fixture(scope="module")
def proj_a(tmp_path_factory):
    return write_gemma3_mmproj(tmp_path_factory.mktemp("mm") / "mmproj-a-f16.gguf")


@pytest.fixture(scope="module")
def proj_b(tmp_path_factory):
    return write_gemma3_mmproj(tmp_path_factory.mktemp("mm") / "mmproj-b-q8_0.gguf", **B_SPEC)


def _rpc(i: int = 0, serves: str | None = None) -> Device:
    ep = f"127.0.0.1:{5000 + i}"
    return Device(id=f"rpc:{ep}#0", name=f"RPC{i}", description=ep, backend="RPC", total_bytes=None,
                  free_bytes=None, host=ep, serves=serves)


def _cuda(i: int) -> Device:
    return Device(id=f"GPU-{i}", name=f"CUDA{i}", description="gpu", backend="CUDA", total_bytes=24 * 1024 * MiB,
                  free_bytes=24 * 1024 * MiB)


def test_weights_are_the_sum_of_padded_tensors(proj_a):
    p = read_projector(proj_a)
    assert (p.proj_type, p.n_embd, p.n_head, p.d_head, p.n_layer, p.image_size, p.patch_size, p.n_merge) == (
        "gemma3", 64, 4, 16, 2, 448, 14, 4)
    patch = 14 * 14 * 3 * 64 * 2 + 64 * 4            # F16 kernel + F32 bias: 75264 + 256
    pos = 64 * 1024 * 4                              # F32 position embeddings, 32 x 32 patches: 262144
    block = 4 * (64 * 64 * 2 + 64 * 4) + 4 * 64 * 4 + (64 * 128 * 2 + 128 * 4) + (128 * 64 * 2 + 64 * 4)  # 68352
    head = 2 * 64 * 4 + 576 * 64 * 2 + 64 * 4        # post_ln, input_projection (F16), soft_emb_norm: 74496
    want = patch + pos + 2 * block + head
    assert want == 548864  # every tensor a multiple of 128 bytes: no padding on the CPU (32) or CUDA (128)
    assert p.weight_bytes == want and weights_bytes(p, "CPU") == want and weights_bytes(p, "CUDA") == want


def test_q8_0_weights_pad_to_the_backend(proj_b):
    p = read_projector(proj_b)
    # recorded: the RPC (CPU) worker's alloc_buffer of the projector's weights
    assert weights_bytes(p, "CPU") == 703200
    # CUDA: each quantised matrix whose rows are not a multiple of 512 gets one padded row, and
    # every tensor is rounded up to 128 bytes (ggml-cuda.cu get_alloc_size, alignment)
    assert weights_bytes(p, "CUDA") > weights_bytes(p, "CPU")


@pytest.mark.parametrize("which, fa, weights, device, host", [
    ("a", "auto", 548864, 3612672, 2408448), ("a", "off", 548864, 18350080, 2408448),
    ("b", "on", 703200, 4718592, 3145728), ("b", "off", 703200, 14942208, 3145728),
    ("i", "auto", 1879328, 4147200, 2764800), ("i", "off", 1879328, 13996800, 2764800),
    ("i2", "auto", 1025536, 4718592, 3145728), ("i2", "off", 1025536, 9437184, 3145728),
    # llava: the image, then the positions (577 x i32) and patch rows (576 x i32), each padded to 32 bytes
    ("l", "auto", 859648, 2064384, 336 * 336 * 12 + 2336 + 2304), ("l", "off", 859648, 6686272, 1359392),
    ("l2", "auto", 529536, 904768, 224 * 224 * 12 + 800 + 800), ("l2", "off", 529536, 914208, 603712),
])
def test_compute_is_the_recorded_reservation(proj_a, proj_b, tmp_path, which, fa, weights, device, host):
    spec = {"i": I_SPEC, "i2": I2_SPEC, "l": L_SPEC, "l2": L2_SPEC}.get(which)
    path = write_gemma3_mmproj(tmp_path / "mmproj-x.gguf", **spec) if spec else proj_a if which == "a" else proj_b
    p = read_projector(path)
    # the image input stays on the CPU: image_size^2 x 3 channels x f32 (448: 2408448, 512: 3145728)
    assert host == p.image_size ** 2 * 3 * 4 or p.proj_type == "mlp"
    e = estimate_projector(p, [_rpc()], flash_attn=fa)
    assert (e.device_index, e.weights_bytes, e.compute_bytes, e.host_compute_bytes) == (0, weights, device, host)
    # on the CPU alone there is one buffer, the same as the worker's (both CPU backends)
    cpu = estimate_projector(p, [], flash_attn=fa)
    assert (cpu.device_index, cpu.compute_bytes, cpu.host_compute_bytes) == (None, device, 0)


def test_device_rule():
    rpc0, rpc1, cuda0, cuda1 = _rpc(0), _rpc(1), _cuda(0), _cuda(1)
    # ggml's registry lists local GPUs before the --rpc servers; the model's order puts RPC first
    assert projector_device([rpc0, rpc1, cuda0, cuda1]) == 2
    assert projector_device([rpc0, rpc1]) == 0
    assert projector_device([]) is None
    assert projector_device([rpc0, cuda0], offload=False) is None


FLEET = "3090"


def test_plan_puts_the_projector_on_cuda0_and_counts_it(smollm2_path, proj_a):
    base = llamasplit.plan(smollm2_path, FLEET, ctx=1024)
    with_mm = llamasplit.plan(smollm2_path, FLEET, ctx=1024, mmproj=str(proj_a))
    gpu, host = with_mm.devices[0], with_mm.host
    # CUDA runs no flash attention for 16-wide heads (fattn.cu): the f32 KQ of the 1024 patches
    assert gpu.companion_parts == {"mmproj_model": 548864, "mmproj_compute": 18350080}
    assert host.companion_parts == {"mmproj_compute": 2408448}
    assert gpu.total_bytes - base.devices[0].total_bytes == 548864 + 18350080
    assert host.total_bytes - base.host.total_bytes == 2408448
    assert with_mm.argv()[-2:] == ["--mmproj", str(proj_a)]
    assert with_mm.to_llama_env()["LLAMA_ARG_MMPROJ"] == str(proj_a)
    assert "projector: CUDA0 536.00 KiB model + 17.50 MiB compute; Host 2.30 MiB compute" in with_mm.summary()
    # --no-mmproj-offload: all of it on the CPU, which runs flash attention
    cpu = llamasplit.plan(smollm2_path, FLEET, ctx=1024, mmproj=str(proj_a), mmproj_offload=False)
    assert cpu.devices[0].companion_parts is None
    assert cpu.host.companion_parts == {"mmproj_model": 548864, "mmproj_compute": 3612672}
    assert cpu.argv()[-3:] == ["--mmproj", str(proj_a), "--no-mmproj-offload"]
    assert cpu.to_llama_env()["LLAMA_ARG_MMPROJ_OFFLOAD"] == "0"
    data = json.loads(cpu.to_json())
    assert (data["settings"]["mmproj"], data["settings"]["mmproj_offload"]) == (str(proj_a), False)
    assert data["host"]["companion_parts"]["mmproj_compute"] == 3612672


def test_the_fit_check_includes_the_projector(smollm2_path, tmp_path):
    # 2240 / 14 = 160 x 160 = 25600 patches, 16 heads of 4: without flash attention the f32 KQ
    # alone is 25600^2 x 16 x 4 bytes = 39 GiB, on CUDA0 whatever the layers do
    big = write_gemma3_mmproj(tmp_path / "mmproj-big.gguf", n_embd=64, n_head=16, image_size=2240, n_layer=1)
    with pytest.raises(NoFeasiblePlan, match="CUDA0"):
        llamasplit.plan(smollm2_path, FLEET, ctx=1024, mmproj=str(big), fa="off")
    fits = llamasplit.plan(smollm2_path, FLEET, ctx=1024, mmproj=str(big), fa="off", mmproj_offload=False)
    assert fits.host.companion_parts["mmproj_compute"] > 39 * 1024 * MiB


def test_auto_finds_the_projector_beside_the_model(tmp_path):
    model = write_model(tmp_path / "m-Q4_0.gguf")
    for name in ("mmproj-m-f16.gguf", "mmproj-m-Q8_0.gguf", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    # llama.cpp's find_best_mmproj: the quantization bits closest to the model's (8 is nearer 4 than 16)
    assert find_beside(model) == tmp_path / "mmproj-m-Q8_0.gguf"
    (tmp_path / "mmproj-m-Q4_K_M.gguf").write_bytes(b"")
    assert find_beside(model) == tmp_path / "mmproj-m-Q4_K_M.gguf"


def test_auto_plans_with_the_projector_beside(smollm2_path, tmp_path):
    import shutil

    model = tmp_path / "smollm2-Q4_1.gguf"
    shutil.copy(smollm2_path, model)
    write_gemma3_mmproj(tmp_path / "mmproj-smollm2-f16.gguf")
    p = llamasplit.plan(model, FLEET, ctx=1024, mmproj="auto")
    assert p.settings.mmproj == str(tmp_path / "mmproj-smollm2-f16.gguf")
    assert p.devices[0].companion_parts["mmproj_model"] == 548864


def test_a_url_projector_goes_to_llama_cpp_as_mmproj_url():
    from llamasplit.memory.settings import LlamaSettings

    assert LlamaSettings(mmproj="https://h/mmproj.gguf").to_args()[-2:] == ["-mmu", "https://h/mmproj.gguf"]


# -- bad input: one line, no traceback --------------------------------------------------------------

def _cli(capsys, *args: str) -> tuple[int, str, str]:
    from llamasplit.cli import main

    rc = main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


def _bad(tmp_path, kind: str):
    if kind == "truncated":
        good = write_gemma3_mmproj(tmp_path / "good.gguf")
        bad = tmp_path / "mmproj-truncated.gguf"
        bad.write_bytes(good.read_bytes()[:3000])
        return bad, "mmproj-truncated.gguf: tensor 'v.patch_embd.weight' data ends at offset"
    if kind == "no-image-size":
        from gguf import GGUFWriter

        path = tmp_path / "mmproj-noimage.gguf"
        w = GGUFWriter(str(path), "clip")
        w.add_string("clip.projector_type", "gemma3")
        w.add_bool("clip.has_vision_encoder", True)
        for key in ("embedding_length", "feed_forward_length", "block_count", "attention.head_count"):
            w.add_uint32(f"clip.vision.{key}", 64)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        return path, "not a usable multimodal projector: missing clip.vision.image_size"
    if kind == "width":
        path = write_gemma3_mmproj(tmp_path / "mmproj-narrow.gguf", n_embd_text=64)
        return path, "the projector makes 64-wide embeddings, the model takes 576"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["truncated", "no-image-size", "width"])
def test_bad_projector_is_one_line(smollm2_path, capsys, tmp_path, kind):
    path, line = _bad(tmp_path, kind)
    rc, out, err = _cli(capsys, "plan", str(smollm2_path), "--fleet", FLEET, "-c", "1024", "--mmproj", str(path))
    assert rc == 1 and out == "" and len(err.splitlines()) == 1
    assert err.startswith("llamasplit: error: ") and line in err


def test_a_text_model_given_as_projector_is_one_line(smollm2_path, capsys):
    rc, out, err = _cli(capsys, "plan", str(smollm2_path), "--fleet", FLEET, "--mmproj", str(smollm2_path))
    assert rc == 1 and out == "" and len(err.splitlines()) == 1
    assert "not a usable multimodal projector: its architecture is 'llama', not 'clip'" in err


def test_projector_flags_need_a_binary_that_takes_them(smollm2_path, proj_a, capsys):
    rc, out, err = _cli(capsys, "plan", str(smollm2_path), "--fleet", FLEET, "--mmproj", str(proj_a),
                        "--binary", "llama-completion")
    assert (rc, out) == (2, "")
    assert err == "llamasplit: error: --mmproj is not a flag of llama-completion; plan for llama-server or llama-cli\n"


def test_auto_without_a_projector_is_one_line(smollm2_path, capsys):
    rc, out, err = _cli(capsys, "plan", str(smollm2_path), "--fleet", FLEET, "--mmproj", "auto")
    assert rc == 1 and out == "" and len(err.splitlines()) == 1
    assert "no *mmproj*.gguf in its folder; give the projector with --mmproj FILE" in err


def test_read_errors_are_model_read_errors(tmp_path, smollm2_path):
    with pytest.raises(ModelReadError, match="architecture is 'llama'"):
        read_projector(smollm2_path)
    with pytest.raises(ModelReadError, match="no such file"):
        read_projector(tmp_path / "absent.gguf")
    with pytest.raises(UsageError):
        llamasplit.plan(smollm2_path, FLEET, mmproj="x.gguf", binary="llama-completion")


# -- run --check: the projector's log lines are its own -----------------------------------------

def test_check_reads_the_projector_lines_apart(smollm2_path, proj_a):
    from llamasplit.runner.verify import verify

    p = llamasplit.plan(smollm2_path, [], ctx=1024, mmproj=str(proj_a), fa="off")  # no GPU: the CPU
    host = p.host
    log = "\n".join([
        f"load_tensors:   CPU_Mapped model buffer size = {host.model_bytes / MiB:8.2f} MiB",
        f"llama_kv_cache:        CPU KV buffer size = {host.context_bytes / MiB:8.2f} MiB",
        f"sched_reserve:        CPU compute buffer size = {host.compute_bytes / MiB:8.2f} MiB",
        "clip_ctx: CLIP using CPU backend",
        "load_hparams: model size:         0.52 MiB",
        "reserve_compute_meta:        CPU compute buffer size =    17.50 MiB",
    ])
    v = verify(p, log)
    assert v.ok
    rows = {(r.device, r.kind): r for r in v.rows}
    assert rows[("Host", "compute")].actual_bytes == round(float(f"{host.compute_bytes / MiB:.2f}") * MiB)
    assert rows[("Host", "mmproj_compute")].actual_bytes == round(17.50 * MiB)
    assert rows[("Host", "mmproj_model")].actual_bytes == round(0.52 * MiB)


def test_auto_with_hf_takes_the_projector_llama_cpp_downloads(smollm2_path, proj_a, proj_b, tmp_path, monkeypatch):
    from http_servers import HubServer

    from llamasplit.model.projector import locate_projector

    monkeypatch.setenv("LLAMASPLIT_CACHE", str(tmp_path / "ls-cache"))
    with HubServer() as hub:
        repo = "org/mm-GGUF"
        hub.add(repo, "m-Q4_1.gguf", smollm2_path)
        hub.add(repo, "mmproj-m-f16.gguf", proj_a)
        hub.add(repo, "mmproj-m-Q8_0.gguf", proj_b)
        hub.add(repo, "deeper/mmproj-m-Q4_0.gguf", proj_a)  # not in the model's folder or above it: never taken
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        where, p = locate_projector("auto", f"{hub.endpoint}/{repo}/resolve/main/m-Q4_1.gguf", hf=repo)
    # find_best_mmproj: 8 bits is closer to the model's 4 than 16 is; read from its remote header
    assert where == f"{hub.endpoint}/{repo}/resolve/main/mmproj-m-Q8_0.gguf"
    assert (p.proj_type, p.n_embd, p.image_size) == ("gemma3", 96, 512)
    assert weights_bytes(p, "CPU") == 703200


def test_types_not_replayed_get_a_guide_at_their_largest_image(tmp_path):
    from llamasplit.memory.mmproj import largest_image

    # Qwen2.5-VL: up to 4096 tokens of 2 x 2 merged 14-pixel patches (set_limit_image_tokens(8, 4096)):
    # sqrt(4096 x 28^2) = 64 x 28 = 1792 pixels a side, 128 x 128 = 16384 patches
    path = write_gemma3_mmproj(tmp_path / "mmproj-qwen.gguf", proj_type="qwen2.5vl_merger", n_layer=1, n_head=4,
                               image_size=448, patch_size=14)
    p = read_projector(path)
    assert largest_image(p) == 1792
    e = estimate_projector(p, [_rpc()], flash_attn="off")
    assert e.estimated and e.image_size == 1792
    # at least one layer's f32 KQ: 16384^2 x 4 heads x 4 bytes = 4 GiB; the image itself on the CPU
    assert e.compute_bytes >= 16384 ** 2 * 4 * 4
    assert e.host_compute_bytes == 1792 ** 2 * 3 * 4
    # in a plan the guide is its own part (run --check holds no guide to a tolerance)
    from llamasplit.memory.companions import CompanionEstimate, with_companions
    from llamasplit.memory.estimate import DeviceEstimate, Estimate

    est = Estimate(devices=(DeviceEstimate("RPC0"),), host=DeviceEstimate("Host"), n_ctx=512, layer_device=(),
                   flash_attn=False)
    parts = with_companions(est, CompanionEstimate(mmproj=e, mmproj_device_name="RPC0")).devices[0].companion_parts
    assert parts == {"mmproj_model": e.weights_bytes, "mmproj_compute_estimate": e.compute_bytes}
    # a fixed-size type is planned at its image_size
    assert largest_image(read_projector(write_gemma3_mmproj(tmp_path / "mmproj-x.gguf", proj_type="janus_pro"))) == 448


def test_runner_argv_carries_the_projector_and_guards_it(smollm2_path, proj_a):
    from llamasplit.runner.launch import LaunchOptions, build_argv, child_env, conflicting_args

    p = llamasplit.plan(smollm2_path, [], ctx=1024, mmproj=str(proj_a), mmproj_offload=False)
    argv = build_argv(p, LaunchOptions(binary="llama-server", port=8099))
    assert argv == ["llama-server", "-m", str(smollm2_path), "-ngl", "0", "-c", "1024", "--mmproj", str(proj_a),
                    "--no-mmproj-offload", "-fit", "off", "-lv", "4", "--host", "127.0.0.1", "--port", "8099"]
    # an environment that names another projector, or moves it, is left out of the child's
    env = child_env(p, {"LLAMA_ARG_MMPROJ": "other.gguf", "MTMD_BACKEND_DEVICE": "CUDA1", "HOME": "/h"})
    assert "LLAMA_ARG_MMPROJ" not in env and "MTMD_BACKEND_DEVICE" not in env and env["HOME"] == "/h"
    warned = conflicting_args(p, LaunchOptions(extra_args=("-mmdev", "CUDA1", "-mm", "x.gguf")))
    assert len(warned) == 2 and "overrides the plan's --mmproj" in warned[1]


def test_plan_sm_auto_says_it_plans_the_model_alone(smollm2_path, proj_a, capsys):
    rc, out, err = _cli(capsys, "plan", str(smollm2_path), "--fleet", "2x3090", "-sm", "auto", "--mmproj", str(proj_a))
    assert (rc, out) == (2, "") and len(err.splitlines()) == 1
    assert "a draft model, LoRA or projector is planned with -sm layer, none or tensor" in err


def test_a_projector_given_as_the_model_is_one_line(proj_a, capsys):
    rc, out, err = _cli(capsys, "plan", str(proj_a), "--fleet", FLEET)
    assert (rc, out) == (1, "")
    assert err == (f"llamasplit: error: {proj_a}: a multimodal projector (arch clip), not a model; "
                   "plan the text model and give this file with --mmproj\n")


def test_mutated_projector_headers_end_in_our_errors(proj_a, tmp_path):
    """A seeded slice of the header fuzzer on a projector: read, placed and replayed, nothing but
    our own errors may come out, and nothing may run away."""
    import random
    import time

    import fuzzgguf

    from llamasplit.errors import LlamasplitError
    from llamasplit.model.gguf_reader import read_header
    from llamasplit.model.projector import projector_from_header

    seeds = [fuzzgguf.header_of_file(proj_a)]
    path = tmp_path / "case.gguf"
    planned = failed = 0
    for i in range(CASES_FUZZ):
        path.write_bytes(fuzzgguf.case(seeds, random.Random(20261202 * 1_000_003 + i)))
        t0 = time.monotonic()
        try:
            p = projector_from_header(read_header(path, require_data=False))
            for devices, fa in (([], "off"), ([_rpc()], "auto"), ([_cuda(0)], "auto")):
                e = estimate_projector(p, devices, flash_attn=fa)
                assert e.weights_bytes >= 0 and (e.compute_bytes is None or e.compute_bytes >= 0)
            planned += 1
        except LlamasplitError:
            failed += 1
        assert time.monotonic() - t0 < 10.0, f"case {i} ran away"
    assert planned + failed == CASES_FUZZ and planned and failed


CASES_FUZZ = 400


@pytest.mark.parametrize("spec, fa, warmup, device, grown", [
    (P_SPEC, "auto", 256, 1515520, 5914624), (P_SPEC, "off", 256, 1873920, None),
    (P2_SPEC, "auto", 448, 3657728, None), (P2_SPEC, "off", 448, 10391552, 142155776),
])
def test_pixtral_warmup_and_its_largest_image(tmp_path, spec, fa, warmup, device, grown):
    # warmup: set_warmup_n_tokens(256) = 16 x 16 merged patches; the largest image: 1024 tokens, 32 x 32
    p = read_projector(write_gemma3_mmproj(tmp_path / "mmproj-p.gguf", **spec))
    e = estimate_projector(p, [_rpc()], flash_attn=fa)
    assert (e.image_size, e.largest_image, e.compute_bytes) == (warmup, 2 * warmup, device)
    if grown is not None:
        # recorded: the worker's third alloc_buffer after one chat request with a largest-size PNG
        # (benchmarks/mmproj_accuracy.py --growth): the warmup's buffer grown to that image's graph
        assert e.compute_bytes + e.growth_bytes == grown


def test_plan_counts_pixtral_growth_apart(smollm2_path, tmp_path):
    path = write_gemma3_mmproj(tmp_path / "mmproj-p.gguf", **P_SPEC)
    p = llamasplit.plan(smollm2_path, [], ctx=1024, mmproj=str(path), fa="auto")
    parts = p.host.companion_parts
    # on the CPU alone (flash attention on): the warmup reservation, then what the largest image adds
    e = estimate_projector(read_projector(path), [], flash_attn="auto")
    assert parts == {"mmproj_model": e.weights_bytes, "mmproj_compute": e.compute_bytes,
                     "mmproj_compute_growth": e.growth_bytes}
    assert e.growth_bytes > 0 and "compute_growth" in p.summary()
