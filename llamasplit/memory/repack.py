"""The CPU's extra buffer types: which weights llama.cpp repacks for the CPU, into which buffer, how big.

Weights that stay on the CPU are not all in ``CPU``/``CPU_Mapped``. ``make_cpu_buft_list``
(src/llama-model.cpp) lists, in order: the host buffer type of the first device that has one
(``CUDA_Host``; RPC devices have none), then the CPU backend's *extra* buffer types
(``ggml_backend_cpu_get_extra_buffer_types``, ggml-cpu.cpp: ``AMX`` when ggml was built with
AMX-INT8 and AVX512-VNNI and the kernel grants AMX, then ``CPU_REPACK``), then ``CPU``.
``select_weight_buft`` (src/llama-model-loader.cpp) takes the first type whose device supports
the weight's op (``weight_buft_supported`` builds it: ``MUL_MAT`` against an F32 ``[ne0, 512]``,
``MUL_MAT_ID`` for experts). A host buffer type under mmap becomes plain ``CPU``, so with a CUDA
device the CPU's weights stay mapped; without one (CPU only, RPC workers), the extra types take:

- ``AMX`` (ggml-cpu/amx/amx.cpp ``extra_buffer_type::supports_op``): ``MUL_MAT`` only, ``ne1 %
  32 == 0``, type Q4_0/Q4_1/Q8_0 (``ne0 % 32``), Q4_K/Q5_K/Q6_K/IQ4_XS (``ne0 % 256``) or F16
  (``ne0 % 16``). Size (amx/mmq.cpp ``ggml_backend_amx_get_alloc_size``): the quantised types are
  repacked into VNNI tiles, ``ne1`` rows of ``KB * sizeof(block)`` plus 4 bytes per block for Q8_0
  (its s8s8 compensation), Q4_K and Q5_K, 2 for IQ4_XS; F16 keeps ``ggml_nbytes``.
- ``CPU_REPACK`` (ggml-cpu/repack.cpp ``ggml_repack_get_optimal_repack_type``): 2-D ``MUL_MAT``
  or 3-D ``MUL_MAT_ID`` weights of a type the CPU has an interleaved kernel for: on x86 with AVX2
  Q4_0, Q4_K, IQ4_NL and MXFP4 (``ne1 % 8``), Q2_K with AVX-512; on ARM with NEON and dotprod /
  i8mm Q4_0, Q4_K, Q5_K, Q6_K, IQ4_NL, MXFP4, Q8_0 and Q1_0 (``ne1 % 4`` or ``% 8``; SVE-256 is not
  modelled). Same bytes as the tensor (no ``get_alloc_size``).

Both align tensors to 32 bytes (``TENSOR_ALIGNMENT``), and neither is a host buffer, so
``llama-fit-params``' Host row leaves them out; the real allocation (``load_tensors: AMX model
buffer size`` / ``CPU_REPACK model buffer size``) has them. ``-nr/--no-repack`` turns both off.

``CpuFeatures`` reads ``/proc/cpuinfo``'s flags. ggml tests the features it was *compiled* for
(``ggml_cpu_has_avx2`` is ``#if defined(__AVX2__)``); for a ``-march=native`` build (ours) those
are the CPU's, except AMX, which our build turns off on x86 unless asked for
(``llamacpp.binaries.want_amx``): ``amx_built`` says whether the build has it.
"""

from __future__ import annotations

from dataclasses import dataclass

from llamasplit.gguf_constants import GGML_QUANT_SIZES, GGMLQuantizationType as Q

from llamasplit.model.profile import Block, Role, TensorInfo

AMX = "AMX"
CPU_REPACK = "CPU_REPACK"
TENSOR_ALIGNMENT = 32


@dataclass(frozen=True)
class CpuFeatures:
    """The CPU features ggml's extra buffer types test (a snapshot of ``/proc/cpuinfo`` flags)."""

    flags: frozenset[str]
    machine: str = "x86_64"
    """``x86_64`` or ``aarch64``: which of ggml's kernel families apply."""
    amx_built: bool = False
    """Whether the llama.cpp build compiled ggml-cpu's AMX kernels (``-march=native`` without
    ``-mno-amx-int8``)."""

    @classmethod
    def from_cpuinfo(cls, text: str, *, amx_built: bool = False) -> CpuFeatures:
        """The flags of the first CPU listed (``flags`` on x86, ``Features`` on ARM).

        >>> sorted(CpuFeatures.from_cpuinfo("flags : fpu avx2 avx512f\\n").flags)
        ['avx2', 'avx512f', 'fpu']
        >>> CpuFeatures.from_cpuinfo("Features : fp asimd asimddp i8mm\\n").machine
        'aarch64'
        """
        for line in text.splitlines():
            key, _, value = line.partition(":")
            key = key.strip().lower()
            if key in ("flags", "features"):
                return cls(frozenset(value.split()), "x86_64" if key == "flags" else "aarch64", amx_built)
        return cls(frozenset(), amx_built=amx_built)

    @classmethod
    def local(cls, *, amx_built: bool, path: str = "/proc/cpuinfo") -> CpuFeatures | None:
        """This machine's CPU, or ``None`` where ``/proc/cpuinfo`` cannot be read (read at the edge)."""
        try:
            with open(path, encoding="utf-8", errors="replace") as fh:
                return cls.from_cpuinfo(fh.read(), amx_built=amx_built)
        except OSError:
            return None

    def has(self, flag: str) -> bool:
        return flag in self.flags

    @property
    def amx(self) -> bool:
        """ggml-cpu.cpp adds the AMX buffer type under ``__AMX_INT8__ && __AVX512VNNI__``."""
        return self.amx_built and self.has("amx_int8") and self.has("avx512_vnni")

    @property
    def avx2(self) -> bool:
        return self.machine == "x86_64" and self.has("avx2")

    @property
    def neon_dotprod(self) -> bool:
        return self.machine == "aarch64" and self.has("asimddp")

    @property
    def neon_i8mm(self) -> bool:
        return self.machine == "aarch64" and self.has("i8mm")


def weight_op(t: TensorInfo, *, tied_output: bool = False) -> str | None:
    """The op llama.cpp tests a weight's buffer type with (its ``LLM_TENSOR_INFOS`` entry), as far
    as the extra buffer types care: ``MUL_MAT``, ``MUL_MAT_ID``, or ``None`` for anything else.
    ``tied_output``: the output layer's copy of ``token_embd`` (TENSOR_DUPLICATED loads it as
    LLM_TENSOR_OUTPUT, llama-model-loader.cpp ``create_tensor``), a ``MUL_MAT``."""
    if tied_output:
        return "MUL_MAT"
    if t.name.endswith(".bias") or t.block is Block.INPUT or t.role in (Role.NORM, Role.ROPE):
        return None
    if t.role is Role.EXPERTS:
        return "MUL_MAT_ID"
    if t.role in (Role.ATTN_Q, Role.ATTN_K, Role.ATTN_V, Role.ATTN_QKV, Role.ATTN_OUT, Role.ATTN_MLA,
                  Role.FFN_GATE, Role.FFN_UP, Role.FFN_DOWN, Role.FFN_GATE_UP, Role.SHARED_EXPERT, Role.OUTPUT):
        return "MUL_MAT"
    if t.role is Role.ROUTER and t.name.endswith("ffn_gate_inp.weight"):
        return "MUL_MAT"
    if t.role is Role.SSM and t.name.endswith(("ssm_in.weight", "ssm_out.weight")):
        return "MUL_MAT"
    return None


_AMX_K_ALIGN = {Q.Q4_0: 32, Q.Q4_1: 32, Q.Q8_0: 32, Q.Q4_K: 256, Q.Q5_K: 256, Q.Q6_K: 256, Q.IQ4_XS: 256, Q.F16: 16}
_AMX_EXTRA_PER_BLOCK = {Q.Q8_0: 4, Q.Q4_K: 4, Q.Q5_K: 4, Q.IQ4_XS: 2}


def _repack_x86(typ: Q, ne1: int, cpu: CpuFeatures) -> bool:
    if typ in (Q.Q4_0, Q.Q4_K, Q.IQ4_NL, Q.MXFP4):
        return cpu.avx2 and ne1 % 8 == 0
    if typ is Q.Q2_K:
        return cpu.has("avx512f") and ne1 % 8 == 0
    return False


def _repack_arm(typ: Q, ne1: int, cpu: CpuFeatures) -> bool:
    if typ in (Q.Q4_K,):
        return (cpu.neon_i8mm or cpu.neon_dotprod) and ne1 % 8 == 0
    if typ in (Q.Q5_K, Q.Q6_K):
        return (cpu.neon_i8mm or cpu.neon_dotprod) and ne1 % 8 == 0
    if typ in (Q.Q4_0, Q.Q8_0, Q.IQ4_NL, Q.MXFP4):
        return (cpu.neon_i8mm or cpu.neon_dotprod) and ne1 % 4 == 0
    return False


def extra_buffer(t: TensorInfo, cpu: CpuFeatures, *, tied_output: bool = False) -> str | None:
    """The extra buffer type llama.cpp puts CPU weight ``t`` in (``AMX``, ``CPU_REPACK``), or ``None``."""
    op = weight_op(t, tied_output=tied_output)
    if op is None or len(t.shape) < 2:
        return None
    try:
        typ = Q(t.ggml_type)
    except ValueError:
        return None
    ne0, ne1 = t.shape[0], t.shape[1]
    n_dims = max((i + 1 for i, d in enumerate(t.shape) if d != 1), default=1)  # ggml_n_dims
    if op == "MUL_MAT" and cpu.amx and typ in _AMX_K_ALIGN and ne1 % 32 == 0 and ne0 % _AMX_K_ALIGN[typ] == 0:
        return AMX
    if (op == "MUL_MAT" and n_dims == 2) or (op == "MUL_MAT_ID" and n_dims == 3):
        if (_repack_x86 if cpu.machine == "x86_64" else _repack_arm)(typ, ne1, cpu):
            return CPU_REPACK
    return None


def extra_alloc_bytes(t: TensorInfo, buft: str) -> int:
    """The tensor's allocation in that buffer type, padded to its 32-byte alignment."""
    size = t.n_bytes
    if buft == AMX:
        typ = Q(t.ggml_type)
        if typ is not Q.F16:
            block, block_bytes = GGML_QUANT_SIZES[typ]
            kb = t.shape[0] // block
            rows = t.n_bytes // (kb * block_bytes) if kb else 0
            size = rows * kb * (block_bytes + _AMX_EXTRA_PER_BLOCK.get(typ, 0))
    return (size + TENSOR_ALIGNMENT - 1) // TENSOR_ALIGNMENT * TENSOR_ALIGNMENT
