"""CUDA's allocation rules and overheads (memory/cuda_rules.py), each against its arithmetic by hand,
and the estimator using them for local CUDA devices and RPC workers that serve one."""

from __future__ import annotations

import dataclasses

import pytest

from llamasplit.devices.device import Device
from llamasplit.devices.fleet import fleet_from_spec
from llamasplit.gguf_constants import GGMLQuantizationType as Q
from llamasplit.model.profile import read_model
from llamasplit.memory import cuda_rules as R
from llamasplit.memory.estimate import estimate
from llamasplit.memory.settings import LlamaSettings

MiB = 1024 * 1024


def test_row_padding_and_alignment():
    # Q4_K: 256 values in 144 bytes. A 576-wide row lacks 448 values to the next multiple of 512:
    # ggml_row_size(Q4_K, 448) = 144 * 448 / 256 = 252 bytes.
    assert R.row_padding_bytes(int(Q.Q4_K), 576) == 252
    assert R.row_padding_bytes(int(Q.Q4_K), 1024) == 0  # already a multiple of 512
    assert R.row_padding_bytes(int(Q.F16), 577) == 0  # not quantised: no padding
    # Q8_0 (32 values in 34 bytes), a 576 x 2 tensor: 1224 bytes + 448/32*34 = 476 -> 1700 -> 1792 (14 x 128)
    assert R.tensor_alloc_bytes(int(Q.Q8_0), 576, 2 * 18 * 34) == 1792
    assert R.tensor_alloc_bytes(int(Q.F32), 3, 12) == 128


@pytest.mark.parametrize(("cc", "n_tokens", "tk", "tv", "kernel", "copies"), [
    # a prompt ubatch on Turing+ runs the MMA kernel: f16 copies of any K/V that is not f16
    (860, 512, Q.Q8_0, Q.Q8_0, R.FattnKernel.MMA_F16, (True, True)),
    (860, 512, Q.F16, Q.F16, R.FattnKernel.MMA_F16, (True, True)),
    # one token, a quantised cache: the vector kernel reads q8_0 directly (compiled by default) ...
    (860, 1, Q.Q8_0, Q.Q8_0, R.FattnKernel.VEC, (False, False)),
    # ... but q8_0-f16 has no compiled vector instance (GGML_CUDA_FA_QUANTS): both converted
    (860, 1, Q.Q8_0, Q.F16, R.FattnKernel.VEC, (True, True)),
    # Ada decodes two tokens with the vector kernel on a quantised cache, Ampere only one
    (890, 2, Q.Q4_0, Q.Q4_0, R.FattnKernel.VEC, (False, False)),
    (860, 2, Q.Q4_0, Q.Q4_0, R.FattnKernel.MMA_F16, (True, True)),
    # Pascal: no tensor cores, the tile kernel (f16 copies)
    (610, 512, Q.Q8_0, Q.Q8_0, R.FattnKernel.TILE, (True, True)),
    # iq4_nl cache: no CUDA flash attention at all
    (860, 512, Q.IQ4_NL, Q.IQ4_NL, R.FattnKernel.NONE, (False, False)),
])
def test_flash_attention_kernel_and_its_f16_copies(cc, n_tokens, tk, tv, kernel, copies):
    got = R.best_fattn_kernel(cc, head_k=128, head_v=128, n_tokens=n_tokens, gqa_ratio=4, n_kv=4096,
                              type_k=int(tk), type_v=int(tv))
    assert got is kernel
    assert R.fattn_needs_f16(got, 128, int(tk), int(tv)) == copies


def test_flash_attention_head_size_rules():
    kw = dict(n_tokens=512, n_kv=4096, type_k=int(Q.F16), type_v=int(Q.F16))
    assert R.best_fattn_kernel(860, head_k=576, head_v=512, gqa_ratio=16, **kw) is R.FattnKernel.MMA_F16  # MLA
    assert R.best_fattn_kernel(860, head_k=576, head_v=512, gqa_ratio=1, **kw) is R.FattnKernel.NONE  # needs GQA
    assert R.best_fattn_kernel(860, head_k=100, head_v=100, gqa_ratio=4, **kw) is R.FattnKernel.NONE
    assert R.best_fattn_kernel(860, head_k=128, head_v=64, gqa_ratio=4, **kw) is R.FattnKernel.NONE


def test_flash_attention_alloc_size():
    # output 1000 bytes; K copy at pad(1000, 128) = 1024, 64 elements x 2 -> 1152; V at 1152 + 128 = 1280
    assert R.fattn_alloc_bytes(1000, True, True, int(Q.Q8_0), int(Q.Q8_0), 64, 64, False) == 1280
    # V a view of K (MLA): one copy serves both
    assert R.fattn_alloc_bytes(1000, True, True, int(Q.Q8_0), int(Q.Q8_0), 64, 64, True) == 1152
    # f16 K/V: nothing added whatever the kernel
    assert R.fattn_alloc_bytes(1000, True, True, int(Q.F16), int(Q.F16), 64, 64, False) == 1000


def test_pool_cublas_context_nccl_arithmetic():
    # MMQ q8_1 copy of an 8B model's ffn_down input (14336 wide) for 512 tokens:
    # 512 * 14336 * 144 / 128 = 8257536, + 128 * 144 = 18432
    assert R.mmq_src1_bytes(14336, 512) == 8257536 + 18432
    # a width that is not a multiple of 512 is padded: 576 -> 1024; 4 tokens -> J_max 4
    assert R.mmq_src1_bytes(576, 4) == 4 * 1024 * 144 // 128 + 4 * 144
    # the VMM pool maps whole 2 MiB granules: 8275968 bytes -> 4 granules
    assert R.pool_reserved_bytes(8275968) == 8 * MiB
    assert R.pool_reserved_bytes(0) == 0
    # the legacy pool looks ahead 5 % and rounds to 256: 10000 -> 10500 -> 10752
    assert R.pool_reserved_bytes(10000, vmm=False) == 10752
    assert R.cublas_workspace_bytes(890) == 4 * MiB and R.cublas_workspace_bytes(900) == 32 * MiB
    assert R.cublas_workspace_bytes(None) == 4 * MiB
    # the context: 8 MiB + 2.91 MiB per SM (fitted to 555 MiB at 188 SMs and 107 MiB at 34 SMs)
    per_sm = 3051356  # 2.91 MiB = 3051356.16 bytes
    assert R.context_bytes(1200, 188) == 8 * MiB + per_sm * 188  # 555.08 MiB
    assert R.context_bytes(890, 34) == 8 * MiB + per_sm * 34  # 106.94 MiB
    assert R.context_bytes(750) == 8 * MiB + per_sm * 68  # no SM count: a 2080 Ti's 68
    # two ranks, 2 channels x (send + receive) x (Simple + LL128 at 4 MiB) + 32 MiB of state
    assert R.nccl_bytes(2) == 2 * 2 * 8 * MiB + 32 * MiB
    o = R.overhead(860, pool_high_water_bytes=8275968, sm_count=82)
    ctx = 8 * MiB + 3051356 * 82
    assert (o.context_bytes, o.cublas_bytes, o.pool_bytes, o.total_bytes) == (ctx, 4 * MiB, 8 * MiB, ctx + 12 * MiB)
    assert R.overhead(860, pool_high_water_bytes=1, context_in_free=True).total_bytes == 4 * MiB + 2 * MiB


def _rpc_serving(device: Device, endpoint: str = "10.0.0.2:50052") -> Device:
    """How an RPC worker serving ``device`` appears once described: an RPC device that serves CUDA."""
    return dataclasses.replace(
        device, id=f"rpc:{endpoint}#0", name="RPC0", backend="RPC", host=endpoint, cuda_index=None,
        serves="CUDA", serves_source="described",
    )


def test_rpc_worker_serving_cuda_gets_the_same_model_bytes_as_a_local_cuda_device(smollm2_path):
    """The done-when of issue 13: same layers, same model bytes, whether the 3090 is local or behind RPC."""
    model = read_model(smollm2_path)
    local = fleet_from_spec("3090").devices[0]
    s = LlamaSettings(n_ctx=4096, binary="llama-completion", flash_attn="on", type_k="q8_0", type_v="q8_0")
    on_cuda = estimate(model, [local], s)
    on_rpc = estimate(model, [_rpc_serving(local)], s)
    assert on_rpc.layer_device == on_cuda.layer_device
    assert on_rpc.devices[0].model_bytes == on_cuda.devices[0].model_bytes
    assert on_rpc.devices[0].context_bytes == on_cuda.devices[0].context_bytes
    # the CUDA rules differ from a CPU's: SmolLM2's 576-wide Q4_1 rows are padded to 1024 on CUDA
    as_cpu = estimate(model, [dataclasses.replace(_rpc_serving(local), serves=None)], s)
    assert as_cpu.devices[0].model_bytes < on_cuda.devices[0].model_bytes
    # the compute buffer has the same FA f16 copies (the RPC worker answers GET_ALLOC_SIZE with CUDA's)
    assert on_rpc.devices[0].compute_bytes >= as_cpu.devices[0].compute_bytes
    # the worker's context is already in the free memory its listing reports: only cuBLAS + pool remain
    assert local.sm_count == 82  # the catalog's RTX 3090
    assert on_cuda.devices[0].overhead_bytes - on_rpc.devices[0].overhead_bytes == R.context_bytes(860, 82)
    assert on_cuda.devices[0].overhead_parts["cuda_context"] == R.context_bytes(860, 82)
    assert "cuda_context" not in on_rpc.devices[0].overhead_parts
    assert sum(on_cuda.devices[0].overhead_parts.values()) == on_cuda.devices[0].overhead_bytes
    assert as_cpu.devices[0].overhead_bytes == 0


def test_weight_bytes_on_cuda_follow_the_rules(smollm2_path):
    """Model bytes on one CUDA device holding everything = sum of cuda_rules.tensor_alloc_bytes over
    the offloaded tensors (the input layer stays on the CPU; the tied embedding gets a copy)."""
    model = read_model(smollm2_path)
    dev = fleet_from_spec("3090").devices[0]
    got = estimate(model, [dev], LlamaSettings(n_ctx=4096)).devices[0].model_bytes
    want = 0
    for t in model.loaded_tensors if hasattr(model, "loaded_tensors") else model.tensors:
        if t.name.startswith("token_embd"):
            if model.tied_embeddings:
                want += R.tensor_alloc_bytes(t.ggml_type, t.shape[0], t.n_bytes)
            continue
        want += R.tensor_alloc_bytes(t.ggml_type, t.shape[0], t.n_bytes)
    assert got == want


def test_estimator_adds_fa_f16_copies_only_when_the_chosen_kernel_needs_them(smollm2_path):
    """One token on an RTX 3090 (cc 8.6): the vector kernel reads a q8_0 cache as it is (q8_0-q8_0 is
    compiled by default), so the compute buffer is the f16 cache's; a q8_0 K with an f16 V has no
    compiled vector instance, so K and V are converted and the FLASH_ATTN_EXT node grows by their
    f16 copies. A 512-token prompt runs the MMA kernel: copies of the q8_0 cache either way."""
    model = read_model(smollm2_path)
    dev = fleet_from_spec("3090").devices[0]

    def compute(ub: int, tk: str, tv: str) -> int:
        s = LlamaSettings(n_ctx=4096, flash_attn="on", type_k=tk, type_v=tv, n_ubatch=ub, binary="llama-completion")
        return estimate(model, [dev], s).devices[0].compute_bytes

    assert compute(1, "q8_0", "q8_0") == compute(1, "f16", "f16")
    assert compute(1, "q8_0", "f16") > compute(1, "f16", "f16")
    # the same copies on a CPU-backed RPC worker would not exist: its get_alloc_size is ggml_nbytes
    rpc_cpu = dataclasses.replace(_rpc_serving(dev), serves="CPU")
    s = LlamaSettings(n_ctx=4096, flash_attn="on", type_k="q8_0", type_v="f16", n_ubatch=1, binary="llama-completion")
    assert estimate(model, [rpc_cpu], s).devices[0].compute_bytes < compute(1, "q8_0", "f16")


def test_flash_attention_pool_bound_and_its_place_in_the_overhead(smollm2_path):
    # MMA: 2 blocks x 132 SMs x 64 columns x (2 + 128/2) floats for the stream-k fixup
    assert R.fattn_pool_bytes(R.FattnKernel.MMA_F16, head_v=128, n_head=32, n_tokens=512, n_kv=4096) == 264 * 64 * 66 * 4
    # vector kernel, one token, 32 heads: ceil(4 x 132 / 32) = 17 parallel blocks, each a copy of the
    # output (128 x 32 floats) plus one float2 per row
    assert R.fattn_pool_bytes(R.FattnKernel.VEC, head_v=128, n_head=32, n_tokens=1, n_kv=4096) == 17 * (128 * 32 * 4 + 32 * 8)
    # 256 cells are two 128-cell KV tiles: at most 2 parallel blocks; one tile: none, no dst_tmp
    assert R.fattn_pool_bytes(R.FattnKernel.VEC, head_v=128, n_head=32, n_tokens=1, n_kv=256) == 2 * (128 * 32 * 4 + 32 * 8)
    assert R.fattn_pool_bytes(R.FattnKernel.VEC, head_v=128, n_head=32, n_tokens=1, n_kv=128) == 0
    model = read_model(smollm2_path)
    dev = fleet_from_spec("3090").devices[0]
    on = estimate(model, [dev], LlamaSettings(n_ctx=4096, flash_attn="on")).devices[0].overhead_parts["pool"]
    off = estimate(model, [dev], LlamaSettings(n_ctx=4096, flash_attn="off")).devices[0].overhead_parts["pool"]
    # SmolLM2 (576 wide, 1536 FFN): MMQ's q8_1 copy at 512 tokens is 512 x 1536 x 144/128 + 128 x 144 bytes
    # = 903168 -> one 2 MiB granule; flash attention's MMA bound (head 64: 2 x 132 x 64 x 34 x 4 = 2297856) -> two
    assert off == 2 * MiB and on == 4 * MiB


def test_cublas_workspace_only_where_cublas_runs(smollm2_path, tmp_path):
    """SmolLM2 is quantised throughout (MMQ/MMVQ): with flash attention no mat-mul reaches cuBLAS, so
    no handle and no workspace; without it K*Q goes through cuBLAS; an F16 model always does."""
    from synth import write_llama_dense

    dev = fleet_from_spec("3090").devices[0]

    def parts(model, fa: str) -> dict[str, int]:
        return estimate(model, [dev], LlamaSettings(n_ctx=4096, flash_attn=fa)).devices[0].overhead_parts

    smol = read_model(smollm2_path)
    assert "cublas_workspace" not in parts(smol, "on")
    assert parts(smol, "off")["cublas_workspace"] == 4 * MiB
    f16 = read_model(write_llama_dense(tmp_path / "f16.gguf"))
    assert parts(f16, "on")["cublas_workspace"] == 4 * MiB
    h100 = fleet_from_spec("h100-sxm").devices[0]
    assert estimate(f16, [h100], LlamaSettings(n_ctx=4096)).devices[0].overhead_parts["cublas_workspace"] == 32 * MiB
