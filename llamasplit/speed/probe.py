"""Probe models for ``llamasplit bench``: llama-architecture GGUFs of chosen shapes, written with
gguf's own writer, whose weights look to llama.cpp's kernels like a trained model's: random quants,
block scales spread as a real model's (``SCALE_SPREAD_LOG2``: the CPU kernels' speed depends on it)
and norms of one, so that activations flow (``_blocks``).

Two shapes with the same layer count and very different bytes per token separate a device's
bandwidth from its fixed costs; a shape with few, wide layers separates the per-layer from the
per-token cost. No tokenizer (``tokenizer.ggml.model = "no_vocab"``): llama-bench feeds random
token ids and never needs one.
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class ProbeShape:
    """A llama shape: layers, width, FFN, heads, vocabulary, and the matrices' quantization type."""

    name: str
    n_layer: int
    n_embd: int
    n_ff: int
    n_head: int
    n_head_kv: int
    n_vocab: int
    qtype: str = "Q4_0"


PROBES = (
    ProbeShape("probe-narrow", n_layer=24, n_embd=256, n_ff=768, n_head=4, n_head_kv=2, n_vocab=8192),
    ProbeShape("probe-wide", n_layer=24, n_embd=1024, n_ff=4096, n_head=8, n_head_kv=2, n_vocab=8192),
    ProbeShape("probe-deep", n_layer=96, n_embd=256, n_ff=768, n_head=4, n_head_kv=2, n_vocab=8192),
    ProbeShape("probe-vocab", n_layer=24, n_embd=256, n_ff=768, n_head=4, n_head_kv=2, n_vocab=262144, qtype="Q8_0"),
)
"""narrow vs wide: same layers, ~13 MB vs ~215 MB a token (bandwidth; the wide probe's 16-token
prompt against the others' 128, the weights' read once per ubatch); narrow vs deep: 4x the layers
at almost no bytes (per-layer cost). The vocabulary probe is the narrow shape with a 262,144-row
output (Gemma-3's vocabulary), in Q8_0: against the Q8_0 type probe (about the same bytes, a fifth
of the rows) it gives the per-row cost of a plain kernel (``measure.JOINT_TYPE``). 640-wide Gemma-3
decoded at 0.7x the bandwidth of the wide probe here, its 262,144 short output rows each a dot
product; Q8_0 because the host repacks Q4_0 into kernels that compute 8 rows a call."""

TYPE_PROBES = tuple(
    ProbeShape(f"probe-{q.lower()}", n_layer=8, n_embd=1024, n_ff=2048, n_head=8, n_head_kv=2, n_vocab=8192, qtype=q)
    for q in ("Q4_1", "Q5_0", "Q8_0", "Q4_K", "Q5_K", "Q6_K")
)
"""One mid-sized probe (~50-90 MB) per other common weight type: its kernels run at their own
speed (on x86 the host's CPU backend repacks Q4_0, Q4_K, IQ4_NL and Q8_0 for its SIMD units, not
Q4_1, Q5_0 or Q6_K; an RPC worker repacks nothing). A type without a probe runs at Q4_0's rates.
Q5_0 and Q8_0 are there for the "_M" mixes as much as for whole files: llama-quantize gives a
tensor whose rows are not a multiple of 256 Q5_0 instead of Q4_K and Q8_0 instead of Q6_K
(src/llama-quant.cpp, ``nx % qk_k``), so Gemma-3-270M Q4_K_M (640 wide) holds 44 MB of Q5_0 and
only 13 MB of Q4_K; without a Q5_0 probe its prefill on this CPU ran at the repacked Q4_0 rate and
was predicted 1.5-2.8x too fast. An all-zero Q6_K probe decoded at half the speed of random blocks
here, and a zero or one-scale Q4_1 probe 1.3x faster than the real SmolLM2 of the same shape
(``SCALE_SPREAD_LOG2``)."""

NARROW_TYPE_PROBES = tuple(
    ProbeShape(f"probe-{q.lower()}-narrow", n_layer=24, n_embd=256, n_ff=768, n_head=4, n_head_kv=2, n_vocab=8192, qtype=q)
    for q in ("Q4_1", "Q4_K", "Q5_K", "Q6_K")
)
"""The narrow shape in each type that has no tiled prompt kernel on x86 (llamafile's sgemm,
ggml-cpu/llamafile/sgemm.cpp, takes Q8_0, Q4_0, Q5_0 and IQ4_NL; ggml-cpu.c's mul_mat gives the
others one ``vec_dot`` call per matrix row and prompt token, with a fixed cost each). With the same
rows per token as its type probe (61,440) and a fifth of the FLOPs, it separates the type's matmul
rate from that per-row cost (``measure._typed_rates``): on a -t 2 RPC worker here, Q4_1 ran at
53.0, 70.7 and 78.9 GFLOP/s at 256, 576 (SmolLM2's shape) and 1024 wide; a rate of 95.8 GFLOP/s
plus 5.2 ns per row and token, fitted on the 256- and 1024-wide probes, gives the 576-wide one
3.02 ms a token against 3.00 measured, where the 1024-wide probe's rate alone gives 2.69."""

BLOCKS = {
    "Q4_0": ((0,), 4.61, True), "Q4_1": ((0, 2), 4.61, False), "Q5_0": ((0,), 9.23, True),
    "Q8_0": ((0,), 73.9, False), "Q4_K": ((0, 2), None, False), "Q5_K": ((0, 2), None, False),
    "Q6_K": ((208,), None, True),
}
"""Per type: the byte offsets of its fp16 scales in a block (the block's size is gguf's
``GGML_QUANT_SIZES``), the standard deviation of a uniformly
random quant centred (``q - 8``, ``q - 16``, an int8: ``sqrt((levels^2 - 1) / 12)``; ``None`` for
K-quants, whose 6-bit sub-scales are random too), and whether the scale ``d`` takes both signs
(llama-quantize divides the block's extreme value by -8, -16 or -32 there). ggml-common.h:
block_q4_0 {d, qs[16]}, block_q4_1 {d, m, qs[16]}, block_q5_0 {d, qh[4], qs[16]}, block_q8_0
{d, qs[32]}, block_q4_K {d, dmin, scales[12], qs[128]}, block_q5_K {d, dmin, scales[12], qh[32],
qs[128]}, block_q6_K {ql[128], qh[64], scales[16], d}."""

SCALE_SPREAD_LOG2 = 0.5
"""Standard deviation of log2 of a block's scale. Trained models spread their block scales so:
SmolLM2-135M Q4_1 (d 0.44, m 0.51), its Q8_0 embedding 0.60, Gemma-3-270M Q4_K_M's Q5_0 0.57,
Q4_K 0.56 (d) and 0.59 (dmin), Q6_K 0.40, Q8_0 0.34-0.53. The spread matters to the speed: on x86
with F16C, ggml-cpu/simd-mappings.h defines only ``GGML_CPU_COMPUTE_FP16_TO_FP32`` as
``_cvtsh_ss``, so ``GGML_CPU_FP16_TO_FP32``, which the plain vec_dot kernels
(ggml-cpu/arch/x86/quants.c, ``ggml_vec_dot_q4_1_q8_1``) call for every block's scales, falls back
to ``ggml_lookup_fp16_to_fp32``: a 256 KB table, one lookup per scale. With one scale for every
block the table stays in L1; with a real model's scales it does not. Here, on a one-thread RPC
worker, a SmolLM2-shaped Q4_1 probe decoded at 106-114 tok/s with one scale, 65 with log-uniform
scales over 30x, and the real SmolLM2 at 78-89; the real SmolLM2 with its scales replaced by one
constant, at 105-109."""


def _blocks(qtype: str, byte_shape: tuple[int, ...], n_in: int, seed: int) -> np.ndarray:
    """Blocks of ``qtype`` as a trained model's look to the kernels: uniformly random quants (and
    K-quant sub-scales), zero-mean weights of standard deviation about ``1 / sqrt(n_in)`` for legacy
    types (a matrix that keeps its input's scale, so activations flow as in a real model), and
    fp16 scales spread log-normally (``SCALE_SPREAD_LOG2``, clipped at 3 sigma: never zero, NaN or
    subnormal). K-quant scales are centred on 2^-10; Q4_1's minimum is ``-7.5 d``, give or take.

    >>> b = _blocks("Q4_1", (64, 40), 256, 0).reshape(-1, 20)
    >>> d, m = (b[:, k:k + 2].copy().view(np.float16).astype(np.float32).ravel() for k in (0, 2))
    >>> bool((d > 0).all() and (m < 0).all()), len(set(d.tolist())) > 100
    (True, True)
    >>> base = 1 / (4.61 * 16)
    >>> bool((d >= base * 2 ** -1.5 * 0.999).all() and (d <= base * 2 ** 1.5 * 1.001).all())
    True
    >>> q6 = _blocks("Q6_K", (8, 210), 256, 1)[:, 208:210].copy().view(np.float16).ravel()
    >>> bool((q6 > 0).any() and (q6 < 0).any() and (np.abs(q6) >= 2.0 ** -14).all())
    True
    """
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    offsets, spread, signed = BLOCKS[qtype]
    size = GGML_QUANT_SIZES[GGMLQuantizationType[qtype]][1]
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=byte_shape, dtype=np.uint8)
    blocks = data.reshape(-1, size)
    n = blocks.shape[0]
    base = 2.0 ** -10 if spread is None else 1.0 / (spread * np.sqrt(n_in))

    def spread_scales(centre: float, sigma: float = SCALE_SPREAD_LOG2) -> np.ndarray:
        return centre * np.exp2(np.clip(rng.normal(0.0, sigma, n), -3 * sigma, 3 * sigma))

    d = spread_scales(base)
    if signed:
        d = np.where(rng.random(n) < 0.5, -d, d)
    blocks[:, offsets[0]:offsets[0] + 2] = d.astype(np.float16).view(np.uint8).reshape(n, 2)
    if len(offsets) > 1:  # Q4_1's m (negative), a K-quant's dmin (positive)
        second = -7.5 * d * np.exp2(np.clip(rng.normal(0.0, 0.25, n), -0.75, 0.75)) if qtype == "Q4_1" else spread_scales(base)
        blocks[:, offsets[1]:offsets[1] + 2] = second.astype(np.float16).view(np.uint8).reshape(n, 2)
    return data

TYPE_REFERENCE = ProbeShape("probe-q4_0-ref", n_layer=8, n_embd=1024, n_ff=2048, n_head=8, n_head_kv=2, n_vocab=8192)
"""The type probes' shape in Q4_0, the type the main probes measure. A type's rates are the main
rates times its probe's speed over this one's: measured on the same shape, so what the shape itself
does to the speed (a working set that partly fits a CPU's cache, short rows) cancels. Taken as
absolute rates instead, a 48 MB Q4_1 probe read at 15.9 GB/s on this 2-core VM, where the 97 MB
SmolLM2 of the same type decodes at about 8: the host's SmolLM2 prediction was 2x too fast (that
probe held zeros, one scale for every block: ``SCALE_SPREAD_LOG2``). With trained-like blocks the
absolute rates still predicted the host's prefill worse than the relative ones (SmolLM2 +35 % and
Gemma-3 +45 % against +11 % and +23 %, from the same bench)."""


def write_probe(path: str | Path, shape: ProbeShape) -> Path:
    """Write ``shape`` as a GGUF at ``path`` (atomically: a temporary file renamed into place)."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFWriter

    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    qtype = GGMLQuantizationType[shape.qtype]
    hd = shape.n_embd // shape.n_head
    e, f = shape.n_embd, shape.n_ff
    tensors: list[tuple[str, tuple[int, ...]]] = [
        ("token_embd.weight", (e, shape.n_vocab)), ("output_norm.weight", (e,)), ("output.weight", (e, shape.n_vocab)),
    ]
    for il in range(shape.n_layer):
        tensors += [
            (f"blk.{il}.attn_norm.weight", (e,)), (f"blk.{il}.attn_q.weight", (e, shape.n_head * hd)),
            (f"blk.{il}.attn_k.weight", (e, shape.n_head_kv * hd)), (f"blk.{il}.attn_v.weight", (e, shape.n_head_kv * hd)),
            (f"blk.{il}.attn_output.weight", (shape.n_head * hd, e)), (f"blk.{il}.ffn_norm.weight", (e,)),
            (f"blk.{il}.ffn_gate.weight", (e, f)), (f"blk.{il}.ffn_up.weight", (e, f)), (f"blk.{il}.ffn_down.weight", (f, e)),
        ]
    w = GGUFWriter(str(tmp), "llama")
    w.add_block_count(shape.n_layer)
    w.add_context_length(4096)
    w.add_embedding_length(e)
    w.add_feed_forward_length(f)
    w.add_head_count(shape.n_head)
    w.add_head_count_kv(shape.n_head_kv)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(hd)
    w.add_file_type({"Q4_0": 2, "Q4_1": 3, "Q5_0": 8, "Q8_0": 7, "F16": 1, "Q4_K": 15, "Q5_K": 17, "Q6_K": 18}.get(shape.qtype, 1))
    w.add_tokenizer_model("no_vocab")
    w.add_vocab_size(shape.n_vocab)
    for name, ne in tensors:
        typ = GGMLQuantizationType.F32 if len(ne) == 1 else qtype
        block, size = GGML_QUANT_SIZES[typ]
        byte_shape = (*reversed(ne[1:]), ne[0] // block * size)
        if typ == GGMLQuantizationType.F32:  # the norms' weights: ones, so activations flow as in a real model
            data = np.ones(tuple(reversed(ne)), dtype=np.float32)
        elif typ == GGMLQuantizationType.F16:  # normal weights of standard deviation 1 / sqrt(n_in)
            rng = np.random.default_rng(zlib.crc32(name.encode()))
            data = (rng.standard_normal(tuple(reversed(ne))) / np.sqrt(ne[0])).astype(np.float16)
        elif shape.qtype in BLOCKS:  # each tensor its own blocks (seeded by its name)
            data = _blocks(shape.qtype, byte_shape, ne[0], seed=zlib.crc32(name.encode()))
        else:  # a type with no trained-like blocks here: zeros, as before
            data = np.zeros(byte_shape, dtype=np.uint8)
        w.add_tensor(name, data, raw_shape=byte_shape if data.dtype == np.uint8 else None, raw_dtype=typ)
    try:
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        tmp.replace(target)
    finally:
        if tmp.exists():
            tmp.unlink()
    return target


def probe_path(shape: ProbeShape, folder: Path | None = None) -> Path:
    """Where the probe lives in the cache; written on first use."""
    from llamasplit.cache import cache_dir

    folder = folder or cache_dir() / "probes"
    folder.mkdir(parents=True, exist_ok=True)
    # "-v3": trained-like blocks (spread scales, unit norms); earlier versions held zeros or one scale
    path = folder / f"{shape.name}-{shape.n_layer}x{shape.n_embd}-{shape.qtype}-v3.gguf"
    if not path.is_file():
        write_probe(path, shape)
    return path
