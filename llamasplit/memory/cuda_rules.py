"""CUDA's allocation rules and overheads, one function or constant each, with where it comes from.

Paths are in the pinned llama.cpp (the tree vendored in llama-cpp-python 0.3.36), under
``ggml/src/ggml-cuda/``. Two kinds of figure live here:

- **rules** read off the source, exact given their inputs: the buffer alignment, the row padding of
  quantised tensors, which flash-attention kernel runs and which f16 copies of K/V it needs, the
  size of the q8_1 copy of the activations that the quantised mat-mul (MMQ) takes from the pool,
  the cuBLAS workspace;
- **estimates**, marked as such, for what the source does not fix: the CUDA context (driver and
  module memory, a function of the GPU and the driver), the pool's high-water mark (it depends on
  the order kernels run in), NCCL's buffers (NCCL's own defaults). ``benchmarks/gpu_check.py``
  measures them on a GPU (NVML's per-process memory minus llama.cpp's buffers).

None of these overheads are in llama.cpp's memory breakdown (``llama_memory_breakdown``: model,
context, compute per buffer type); the plan shows them in their own "overhead" column.

Compute capabilities are ggml's integers: ``100 * major + 10 * minor`` (8.6 -> 860).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from llamasplit.gguf_constants import GGML_QUANT_SIZES, GGMLQuantizationType as Q

MiB = 1024 * 1024

# -- buffers ------------------------------------------------------------------------------------

ALIGNMENT = 128
"""ggml-cuda.cu, ``ggml_backend_cuda_buffer_type_get_alignment``: ``return 128``."""

MATRIX_ROW_PADDING = 512
"""common.cuh ``MATRIX_ROW_PADDING``: the last row of a quantised matrix is padded to a multiple of
512 elements; ``ggml_backend_cuda_buffer_type_get_alloc_size`` adds
``ggml_row_size(type, 512 - ne0 % 512)`` bytes to every quantised tensor with ``ne0 % 512 != 0``."""


def is_quantized(ggml_type: int) -> bool:
    """ggml's ``ggml_is_quantized``: block size above 1 (F32/F16/BF16 and the integer types are not)."""
    block, _ = GGML_QUANT_SIZES[Q(ggml_type)]
    return block > 1


def row_padding_bytes(ggml_type: int, ne0: int) -> int:
    """ggml-cuda.cu ``ggml_backend_cuda_buffer_type_get_alloc_size`` [TAG_ALLOC_SIZE_EXPAND]: the bytes
    added to a tensor whose rows are ``ne0`` elements of ``ggml_type``.

    >>> row_padding_bytes(int(Q.Q4_K), 576)  # 448 more elements: ggml_row_size = 144 * 448 / 256
    252
    >>> row_padding_bytes(int(Q.Q4_K), 4096), row_padding_bytes(int(Q.F16), 576)
    (0, 0)
    """
    if not is_quantized(ggml_type) or ne0 % MATRIX_ROW_PADDING == 0:
        return 0
    block, type_size = GGML_QUANT_SIZES[Q(ggml_type)]
    return type_size * (MATRIX_ROW_PADDING - ne0 % MATRIX_ROW_PADDING) // block


def tensor_alloc_bytes(ggml_type: int, ne0: int, nbytes: int) -> int:
    """One weight's bytes in a CUDA buffer: ``get_alloc_size`` padded to ``ALIGNMENT`` (ggml-alloc.c,
    ``ggml_backend_alloc_ctx_tensors_from_buft`` pads each tensor to the buffer type's alignment).

    >>> tensor_alloc_bytes(int(Q.Q8_0), 576, 576 // 32 * 34)  # 612 + 448/32*34 = 1088, padded to 128: 1152
    1152
    """
    size = nbytes + row_padding_bytes(ggml_type, ne0)
    return -(-size // ALIGNMENT) * ALIGNMENT


# -- flash attention ----------------------------------------------------------------------------

FATTN_KQ_STRIDE = 256
"""fattn-common.cuh ``FATTN_KQ_STRIDE``: the vector kernel and the GQA optimisation need
``n_kv % 256 == 0`` (llama.cpp pads the KV cache to 256 cells, so this holds)."""

CC_VOLTA, CC_TURING, CC_ADA_LOVELACE, CC_HOPPER = 700, 750, 890, 900
"""common.cuh ``GGML_CUDA_CC_*``."""


class FattnKernel(str, Enum):
    """fattn.cu ``best_fattn_kernel``."""

    NONE = "none"
    VEC = "vec"
    TILE = "tile"
    MMA_F16 = "mma_f16"


FATTN_KV_TYPES = frozenset({Q.F32, Q.F16, Q.BF16, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0})
"""fattn.cu ``ggml_cuda_fattn_kv_type_supported``: K/V types any kernel takes (others: no CUDA FA)."""

FATTN_VEC_COMPILED = frozenset({(Q.Q4_0, Q.Q4_0), (Q.Q8_0, Q.Q8_0), (Q.F16, Q.F16), (Q.BF16, Q.BF16)})
"""ggml/CMakeLists.txt ``GGML_CUDA_FA_QUANTS`` default ``q4_0-q4_0;q8_0-q8_0;f16-f16;bf16-bf16``
(``GGML_CUDA_FA_ALL_QUANTS`` OFF): the vector kernels compiled; F32 K/V use the F16 instance
(fattn.cu ``FATTN_VEC_CASE``). A pair with no instance falls back to f16 copies."""

FATTN_HEAD_SIZES = {40: None, 64: None, 72: None, 80: None, 96: None, 112: None, 128: None, 256: None,
                    192: 128, 320: 256, 512: 512, 576: 512}
"""fattn.cu ``ggml_cuda_get_best_fattn_kernel``'s switch on K->ne[0]: ``None`` = V's head must equal K's,
else the V head size required (192/128 and 320/256 need the GQA optimisation and a GQA ratio
multiple of 8 and 32; 512 and 576 need the GQA optimisation)."""


def best_fattn_kernel(
    cc: int, *, head_k: int, head_v: int, n_tokens: int, gqa_ratio: int, n_kv: int, type_k: int, type_v: int,
    has_mask: bool = True, max_bias: float = 0.0, mask_ne2: int = 1, n_seq_q: int = 1,
) -> FattnKernel:
    """fattn.cu ``ggml_cuda_get_best_fattn_kernel`` for an NVIDIA GPU (``Q->ne[1] = n_tokens``,
    ``Q->ne[3] = n_seq_q``).

    Simplifications: the 16-byte stride check of ``gqa_opt_applies`` is assumed to hold (it does
    for the caches llama.cpp makes), and the sparse-decode MMA path (only for unquantised K/V at one
    token with GQA > 4) is not modelled: it changes speed, not the f16 copies of f16 K/V.

    >>> best_fattn_kernel(860, head_k=128, head_v=128, n_tokens=512, gqa_ratio=4, n_kv=4096, type_k=8, type_v=8).value
    'mma_f16'
    >>> best_fattn_kernel(890, head_k=128, head_v=128, n_tokens=1, gqa_ratio=4, n_kv=4096, type_k=8, type_v=8).value
    'vec'
    """
    tk, tv = Q(type_k), Q(type_v)
    gqa_opt = gqa_ratio >= 2 and has_mask and max_bias == 0.0 and n_kv % FATTN_KQ_STRIDE == 0
    if head_k not in FATTN_HEAD_SIZES:
        return FattnKernel.NONE
    need_v = FATTN_HEAD_SIZES[head_k]
    if head_v != (head_k if need_v is None else need_v):
        return FattnKernel.NONE
    if head_k in (192, 320, 512, 576) and not gqa_opt:
        return FattnKernel.NONE
    if head_k == 192 and gqa_ratio % 8 or head_k == 320 and gqa_ratio % 32:
        return FattnKernel.NONE
    if tk not in FATTN_KV_TYPES or tv not in FATTN_KV_TYPES:
        return FattnKernel.NONE
    if has_mask and mask_ne2 != 1:
        return FattnKernel.NONE
    can_vec = head_k <= 256 and head_k % 64 == 0 and head_k != 192 and n_kv % FATTN_KQ_STRIDE == 0
    quantized = is_quantized(type_k) or is_quantized(type_v)
    if cc >= CC_TURING and head_k not in (40, 72):
        if can_vec:
            if not quantized:
                if cc >= CC_ADA_LOVELACE and n_tokens == 1 and n_seq_q == 1 and not (
                        gqa_ratio > 4 and (head_k >= 256 or n_kv >= 8192)):
                    return FattnKernel.VEC
            elif n_tokens <= (2 if cc >= CC_ADA_LOVELACE else 1):
                return FattnKernel.VEC
            if not gqa_opt and n_tokens == 1:
                return FattnKernel.VEC
        return FattnKernel.MMA_F16
    ncols2_max = 32 if head_k == 320 else (16 if head_k in (576, 192) else 8)
    eff = 1
    while gqa_ratio % (2 * eff) == 0 and eff < ncols2_max:
        eff *= 2
    if cc == CC_VOLTA and head_k not in (40, 72):
        if can_vec and n_tokens * eff <= 2:
            return FattnKernel.VEC
        return FattnKernel.TILE if n_tokens * eff <= 16 else FattnKernel.MMA_F16
    if can_vec:
        if not quantized:
            if n_tokens == 1 and not gqa_opt:
                return FattnKernel.VEC
        elif n_tokens <= 2:
            return FattnKernel.VEC
    return FattnKernel.TILE


def fattn_needs_f16(kernel: FattnKernel, head_k: int, type_k: int, type_v: int) -> tuple[bool, bool]:
    """fattn.cu ``ggml_cuda_flash_attn_ext_get_alloc_size``: whether the kernel reads f16 copies of
    (K, V). Tile and MMA always do; the vector kernel only for F32 or a K/V pair with no compiled
    instance. A copy is made only of a K/V that is not F16 already (fattn-common.cuh,
    ``ggml_cuda_flash_attn_ext_get_f16_extra_data``).

    >>> fattn_needs_f16(FattnKernel.VEC, 128, int(Q.Q8_0), int(Q.Q8_0)), fattn_needs_f16(FattnKernel.VEC, 128, int(Q.Q8_0), int(Q.F16))
    ((False, False), (True, True))
    """
    if kernel in (FattnKernel.TILE, FattnKernel.MMA_F16):
        return True, True
    if kernel is FattnKernel.NONE:
        return False, False
    tk, tv = Q(type_k), Q(type_v)
    as16 = lambda t: Q.F16 if t == Q.F32 else t  # noqa: E731  FATTN_VEC_CASE: F32 runs the F16 instance
    fallback = head_k not in (64, 128, 256) or (as16(tk), as16(tv)) not in FATTN_VEC_COMPILED
    return tk == Q.F32 or fallback, tv == Q.F32 or fallback


def fattn_alloc_bytes(dst_nbytes: int, need_k: bool, need_v: bool, type_k: int, type_v: int,
                      k_elements: int, v_elements: int, v_is_k_view: bool) -> int:
    """fattn-common.cuh ``ggml_cuda_flash_attn_ext_get_f16_extra_data``: the FLASH_ATTN_EXT node's
    allocation = its output, then (each 128-aligned) an f16 copy of K and of V where needed and
    not F16; V shares K's copy when V is a view of K (MLA).

    >>> fattn_alloc_bytes(1000, True, True, int(Q.Q8_0), int(Q.Q8_0), 64, 64, False)  # pad(1000,128)=1024 +128, pad=1152 +128
    1280
    """
    end = dst_nbytes
    k_done = False
    if need_k and Q(type_k) != Q.F16:
        end = -(-end // 128) * 128 + k_elements * 2
        k_done = True
    if need_v and Q(type_v) != Q.F16 and not (v_is_k_view and k_done):
        end = -(-end // 128) * 128 + v_elements * 2
    return end


# -- the pool and cuBLAS ------------------------------------------------------------------------

def cublas_workspace_bytes(cc: int | None) -> int:
    """common.cuh ``ggml_backend_cuda_context::cublas_handle``: ``cudaMalloc`` of a workspace of
    32 MiB when ``cc >= GGML_CUDA_CC_HOPPER`` else 4 MiB, once per device and stream, the first time a
    mat-mul goes through cuBLAS (f16/f32 weights, K*Q without flash attention; MMQ does not).

    >>> cublas_workspace_bytes(860) // MiB, cublas_workspace_bytes(900) // MiB
    (4, 32)
    """
    return 32 * MiB if cc is not None and cc >= CC_HOPPER else 4 * MiB


MMQ_BLOCK_BYTES = 144
"""mmq.cuh ``block_q8_1_mmq``: ``static_assert(sizeof(block_q8_1_mmq) == QK8_1_MMQ + 4*sizeof(half2))`` = 128 + 16."""
MMQ_BLOCK_VALUES = 128
"""mmq.cuh ``QK8_1_MMQ = 4*QK8_1``."""


def mmq_src1_bytes(ne10: int, ne11: int, j_max: int = 128) -> int:
    """mmq.cu ``ggml_cuda_mul_mat_q`` (no ids): the pool allocation for the activations quantised to
    q8_1: ``ne11 * pad(ne10, 512) * 144 / 128 + J_max * 144`` (``J_max`` <= min(ne11, 512), from the
    tile configuration; 128 assumed).

    >>> mmq_src1_bytes(14336, 512)  # ffn_down of an 8B model at ubatch 512
    8275968
    """
    ne10_padded = -(-ne10 // MATRIX_ROW_PADDING) * MATRIX_ROW_PADDING
    return ne11 * ne10_padded * MMQ_BLOCK_BYTES // MMQ_BLOCK_VALUES + min(j_max, ne11) * MMQ_BLOCK_BYTES


def cublas_src_f16_bytes(ne10: int, ne11: int, ne01: int) -> int:
    """ggml-cuda.cu ``ggml_cuda_op_mul_mat_cublas`` with f16 weights: pool copies of the activations in
    f16 (``ne10 * ne11 * 2``) and of the f16 result (``ne01 * ne11 * 2``) before it is converted to f32.

    >>> cublas_src_f16_bytes(4096, 512, 14336)
    18874368
    """
    return ne10 * ne11 * 2 + ne01 * ne11 * 2


FATTN_NSM_BOUND = 132
"""[estimate] SMs assumed when bounding flash attention's pool temporaries (H100 SXM's count; NVML
gives no SM count): more SMs, more parallel blocks, larger temporaries."""


def fattn_pool_bytes(kernel: FattnKernel, *, head_v: int, n_head: int, n_tokens: int, n_kv: int,
                     nsm: int = FATTN_NSM_BOUND) -> int:
    """[estimate, an upper bound] flash attention's pool temporaries, fattn-common.cuh ``launch_fattn``:

    - MMA (stream-k): ``dst_tmp_meta`` of ``blocks x ncols x (2 + DV/2)`` floats when the SMs share
      output tiles, ``blocks <= max_blocks_per_sm x nsm`` (2 per SM assumed), ``ncols <= 64``;
    - vector/tile: ``dst_tmp`` of ``parallel_blocks x nelements(KQV)`` floats and ``dst_tmp_meta`` of
      ``parallel_blocks x nrows(KQV)`` float2, ``parallel_blocks <= ntiles_KV = n_kv / 128``, chosen to
      fill the SMs: bounded here by two waves of ``2 x nsm`` blocks over ``n_head x n_tokens`` tiles.

    >>> fattn_pool_bytes(FattnKernel.MMA_F16, head_v=128, n_head=32, n_tokens=512, n_kv=4096)  # 264 x 64 x 66 x 4
    4460544
    >>> fattn_pool_bytes(FattnKernel.VEC, head_v=128, n_head=32, n_tokens=1, n_kv=4096)  # ceil(4 x 132 / 32) = 17 blocks x 16640
    282880
    """
    if kernel is FattnKernel.NONE:
        return 0
    if kernel is FattnKernel.MMA_F16:
        return 2 * nsm * 64 * (2 + head_v // 2) * 4
    ntiles_kv = max(1, n_kv // 128)
    ntiles_dst = max(1, n_head * n_tokens)
    parallel = max(1, min(ntiles_kv, -(-2 * 2 * nsm // ntiles_dst)))
    if parallel == 1:
        return 0  # launch_fattn allocates dst_tmp only for parallel_blocks > 1
    return parallel * (head_v * n_head * n_tokens * 4 + n_head * n_tokens * 8)


def uses_cublas(*, float_matmul_weight: bool, flash_attn: bool) -> bool:
    """Whether llama.cpp creates a cuBLAS handle (and its workspace) on the device, ggml-cuda.cu
    ``ggml_cuda_mul_mat``: quantised weights go through MMVQ/MMQ (never cuBLAS on NVIDIA with MMQ
    support, ``ggml_cuda_should_use_mmq``); F16/BF16/F32 weights (an MoE router, an unquantised
    model) take cuBLAS at prompt batch sizes (above MMVF/MMF's); without flash attention K*Q and
    KQ*V are mat-muls of the f16 cache, through cuBLAS too.

    >>> uses_cublas(float_matmul_weight=False, flash_attn=True), uses_cublas(float_matmul_weight=False, flash_attn=False)
    (False, True)
    """
    return float_matmul_weight or not flash_attn


VMM_GRANULARITY_BYTES = 2 * MiB
"""ggml-cuda.cu ``ggml_cuda_pool_vmm::alloc`` grows the pool's physical memory in multiples of
``cuMemGetAllocationGranularity(..., CU_MEM_ALLOC_GRANULARITY_RECOMMENDED)``: a runtime value,
2 MiB on current NVIDIA GPUs [estimate: not in the source]."""


def pool_reserved_bytes(high_water_bytes: int, *, vmm: bool = True) -> int:
    """What the CUDA pool holds for a high-water mark of temporaries.

    VMM pool (default where the device supports it; ``GGML_CUDA_NO_VMM`` off): requests rounded up
    to 128 bytes, physical memory mapped in granularity steps (``ggml_cuda_pool_vmm::alloc``).
    Legacy pool: ``look_ahead_size = 1.05 * size`` rounded up to 256 (``ggml_cuda_pool_leg::alloc``).

    >>> pool_reserved_bytes(8275968) // MiB, pool_reserved_bytes(1000, vmm=False)
    (8, 1280)
    """
    if high_water_bytes <= 0:
        return 0
    if vmm:
        size = -(-high_water_bytes // 128) * 128
        return -(-size // VMM_GRANULARITY_BYTES) * VMM_GRANULARITY_BYTES
    look_ahead = int(1.05 * high_water_bytes)
    return 256 * ((look_ahead + 255) // 256)


# -- estimates: the context, NCCL -----------------------------------------------------------------

CONTEXT_BASE_BYTES = 8 * MiB
CONTEXT_PER_SM_BYTES = 3051356
"""2.91 MiB per SM, in bytes (see below)."""
"""[estimate] The CUDA primary context a process creates on a device (the driver's state and the
local-memory reservation for every resident thread: it grows with the SMs). Not in llama.cpp's
breakdown; NVIDIA documents no figure. Fitted to the two measurements in llama.cpp PR #23604
("cuda: read memory through NVML if available", 2026-05), where ``cudaMemGetInfo`` alone
permanently took 555 MiB on an RTX PRO 6000 Blackwell (188 SMs) and 107 MiB on an RTX 4060 Ti
(34 SMs): (555 - 107) / (188 - 34) = 2.91 MiB per SM, 8 MiB at none. Ollama's notes put a primary
context at about 300 MB (ollama llama/patches/0024), this rule's figure for 100 SMs. The kernel
modules llama.cpp then loads (lazily, ``CUDA_MODULE_LOADING=LAZY``, the default since CUDA 12.2)
come on top and are not counted; ``scripts/gpu-check.sh`` measures the whole."""

CONTEXT_SMS_BY_CC: tuple[tuple[int, int], ...] = ((1000, 170), (900, 132), (800, 84), (700, 68), (0, 30))
"""[estimate] SMs assumed when the catalog does not know the GPU: a large part of its generation
(RTX 5090, H100, RTX 3090/A6000, RTX 2080 Ti, P40), so the context is rather over- than under-counted."""


def context_bytes(cc: int | None, sm_count: int | None = None) -> int:
    """[estimate] One process's CUDA context on a device: ``8 MiB + 2.91 MiB x SMs`` (``CONTEXT_PER_SM_BYTES``),
    with the SM count from the catalog, else assumed from the compute capability (None: Ampere's).

    >>> context_bytes(860, 82) // MiB, context_bytes(890, 34) // MiB, context_bytes(1200, 188) // MiB
    (246, 106, 555)
    >>> context_bytes(900) // MiB, context_bytes(None) // MiB
    (392, 252)
    """
    if sm_count is None:
        cc = 800 if cc is None else cc
        sm_count = next(sms for floor, sms in CONTEXT_SMS_BY_CC if cc >= floor)
    return CONTEXT_BASE_BYTES + CONTEXT_PER_SM_BYTES * sm_count


NCCL_BUFFSIZE_BYTES = 4 * MiB
"""NCCL's ``NCCL_BUFFSIZE`` default (the Simple protocol's buffer per channel and peer); LL128 adds
about as much again and LL a few hundred KiB [estimate: NCCL's defaults, not llama.cpp's]."""
NCCL_DEFAULT_CHANNELS = 2
"""[estimate] Channels NCCL opens between two PCIe GPUs; NVLink/NVSwitch rings open more."""


def nccl_bytes(n_devices: int, n_channels: int = NCCL_DEFAULT_CHANNELS) -> int:
    """[estimate] Device memory NCCL takes per GPU for ``-sm tensor``'s communicator:
    ggml-cuda.cu ``ggml_backend_cuda_comm_init_nccl`` calls ``ncclCommInitAll`` over the Meta
    device's GPUs once; a ring gives each rank one send and one receive peer per channel, each with
    a Simple and an LL128 buffer (``2 x NCCL_BUFFSIZE``) plus NCCL's own state (assumed 32 MiB).

    >>> nccl_bytes(2) // MiB, nccl_bytes(1)
    (64, 0)
    """
    if n_devices < 2:
        return 0
    return n_channels * 2 * (2 * NCCL_BUFFSIZE_BYTES) + 32 * MiB


def cc_of(compute_capability: tuple[int, int] | None) -> int | None:
    """ggml's integer for a ``(major, minor)`` pair.

    >>> cc_of((8, 6)), cc_of(None)
    (860, None)
    """
    return None if compute_capability is None else 100 * compute_capability[0] + 10 * compute_capability[1]


@dataclass(frozen=True)
class Overhead:
    """A CUDA device's memory outside llama.cpp's breakdown, by part (bytes)."""

    context_bytes: int
    cublas_bytes: int
    pool_bytes: int
    nccl_bytes: int = 0

    @property
    def total_bytes(self) -> int:
        return self.context_bytes + self.cublas_bytes + self.pool_bytes + self.nccl_bytes

    def parts(self) -> dict[str, int]:
        """The non-zero parts by name, for the plan's JSON (``context`` and ``nccl`` are estimates).

        >>> Overhead(0, 4, 2).parts()
        {'cublas_workspace': 4, 'pool': 2}
        """
        named = {"cuda_context": self.context_bytes, "cublas_workspace": self.cublas_bytes,
                 "pool": self.pool_bytes, "nccl": self.nccl_bytes}
        return {k: v for k, v in named.items() if v}


def overhead(cc: int | None, *, pool_high_water_bytes: int, context_in_free: bool = False,
             tensor_peers: int = 0, sm_count: int | None = None, cublas: bool = True) -> Overhead:
    """The CUDA overhead of one device: context (unless the free memory the plan splits by was read
    in a process that already holds it: an RPC worker's listing), cuBLAS workspace (when a mat-mul
    goes through cuBLAS: ``uses_cublas``), the pool, and NCCL's buffers under ``-sm tensor`` with
    ``tensor_peers`` GPUs.

    >>> overhead(860, pool_high_water_bytes=8275968, sm_count=82).total_bytes // MiB  # 246.6 + 4 + 8
    258
    """
    return Overhead(
        context_bytes=0 if context_in_free else context_bytes(cc, sm_count),
        cublas_bytes=cublas_workspace_bytes(cc) if cublas else 0,
        pool_bytes=pool_reserved_bytes(pool_high_water_bytes),
        nccl_bytes=nccl_bytes(tensor_peers),
    )
