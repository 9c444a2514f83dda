"""Exact arithmetic of the estimator on synthetic cases (CUDA padding, float32 split rule, KV cells)."""

from __future__ import annotations

import pytest
from gguf.constants import GGMLQuantizationType as Q

from llamasplit.model.profile import Block, HParams, Role, TensorInfo, swa_layers
from llamasplit.memory import kv
from llamasplit.memory.estimate import layer_devices
from llamasplit.memory.weights import alloc_bytes


def _t(shape, qtype, n_bytes):
    return TensorInfo("blk.0.ffn_down.weight", int(qtype), shape, n_bytes, Block.LAYER, 0, Role.FFN_DOWN)


def test_cuda_pads_quantised_rows_to_512_and_aligns_to_128():
    # Q4_K: 256-element blocks of 144 bytes. A 2816 x 4 tensor: 2816/256*144*4 = 6336 bytes.
    # 2816 % 512 = 256, so one extra row of 256 elements = 144 bytes: 6480, padded to 128 -> 6528.
    t = _t((2816, 4), Q.Q4_K, 6336)
    assert alloc_bytes(t, "CUDA") == 6528
    # CPU/RPC: 32-byte alignment only: 6336 is already a multiple of 32.
    assert alloc_bytes(t, "CPU") == 6336
    # ne0 = 4096 is a multiple of 512: no extra row; 4096/256*144 = 2304 bytes = 18 * 128.
    assert alloc_bytes(_t((4096, 1), Q.Q4_K, 2304), "CUDA") == 2304


def test_unquantised_tensors_get_no_row_padding_on_cuda():
    # F32 norm of 576 elements = 2304 bytes = 18 * 128: unchanged.
    assert alloc_bytes(_t((576,), Q.F32, 2304), "CUDA") == 2304
    # F32 of 100 elements = 400 bytes -> 512 with 128-byte alignment, 416 with 32.
    assert alloc_bytes(_t((100,), Q.F32, 400), "CUDA") == 512
    assert alloc_bytes(_t((100,), Q.F32, 400), "CPU") == 416


def test_layer_split_follows_llama_cpp_float32_prefix_sums():
    # 30 blocks + output over -ts 1,2: layer il goes to upper_bound([1/3, 1], il/31):
    # il/31 < 1/3 for il <= 10, so 11 layers on device 0 and 20 (with the output) on device 1.
    devs = layer_devices(30, 2, None, [1, 2])
    assert devs.count(0) == 11 and devs.count(1) == 20 and devs[-1] == 1


def test_partial_offload_keeps_the_first_layers_on_cpu():
    # -ngl 5 of 30 blocks: the output layer and the last 4 blocks go to the GPU.
    devs = layer_devices(30, 1, 5, [1])
    assert devs[:26] == [None] * 26 and devs[26:] == [0] * 5


def test_split_boundary_uses_float32_not_float64():
    # 3 devices split 1,1,1 over 3 layers + output = 4 slots; fractions 0, .25, .5, .75 against
    # float32 prefix sums (0.33333334, 0.6666667, 1.0): devices 0, 0, 1, 2.
    assert layer_devices(3, 3, None, [1, 1, 1]) == [0, 0, 1, 2]


def _hp(n_layer=4, swa=(), n_swa=0):
    return HParams(
        n_layer=n_layer, n_embd=64, n_vocab=100, n_ctx_train=4096, n_head=(4,) * n_layer,
        n_head_kv=(2,) * n_layer, n_embd_head_k=16, n_embd_head_v=16, n_embd_head_k_swa=16,
        n_embd_head_v_swa=16, n_ff=(128,) * n_layer, n_swa=n_swa,
        is_swa=tuple(swa) or (False,) * n_layer, is_recurrent=(False,) * n_layer,
    )


def test_kv_bytes_per_layer_exact():
    hp = _hp()
    layout = kv.kv_layout(hp, n_ctx=1000, n_seq=1, n_ubatch=512, kv_unified=True, swa_full=False)
    # n_ctx pads to 1024 cells; K and V rows are 16 * 2 = 32 f16 elements = 64 bytes each.
    assert layout.kv_size == 1024
    assert kv.kv_layer_bytes(hp, 0, layout) == 2 * 64 * 1024
    # q8_0: 32 elements = one 34-byte block.
    assert kv.kv_layer_bytes(hp, 0, layout, "q8_0", "q8_0") == 2 * 34 * 1024


def test_swa_cache_cells_follow_iswa_padding():
    hp = _hp(n_layer=6, swa=swa_layers(6, 6), n_swa=512)
    # SWA cells: pad(min(4096, 512 * 1 + 512), 256) = 1024; full layers keep 4096.
    layout = kv.kv_layout(hp, n_ctx=4096, n_seq=1, n_ubatch=512, kv_unified=True, swa_full=False)
    assert (layout.kv_size, layout.swa_size) == (4096, 1024)
    # four parallel sequences on a unified cache: pad(min(4096, 512 * 4 + 512), 256) = 2560
    layout4 = kv.kv_layout(hp, n_ctx=4096, n_seq=4, n_ubatch=512, kv_unified=True, swa_full=False)
    assert layout4.swa_size == 2560
    # --swa-full: every layer keeps the whole context
    assert kv.kv_layout(hp, n_ctx=4096, n_seq=1, n_ubatch=512, kv_unified=True, swa_full=True).swa_size == 4096


def test_non_unified_cache_splits_context_per_stream():
    hp = _hp()
    layout = kv.kv_layout(hp, n_ctx=4096, n_seq=3, n_ubatch=512, kv_unified=False, swa_full=False)
    # n_ctx_seq = pad(4096 / 3, 256) = pad(1365, 256) = 1536 cells per stream, 3 streams
    assert (layout.kv_size, layout.n_stream) == (1536, 3)


def test_quantised_cache_row_must_fill_blocks():
    with pytest.raises(Exception, match="does not fit"):
        kv.row_bytes(Q.Q4_0, 48)
