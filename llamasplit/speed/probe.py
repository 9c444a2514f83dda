"""Probe models for ``llamasplit bench``: llama-architecture GGUFs of chosen shapes, written with
gguf's own writer, whose weights are zero (the speed of Q4_0, Q4_1, Q5_0 and Q8_0 kernels does not depend
on the values) or, for K-quants, pseudo-random blocks with normal scales (theirs does).

Two shapes with the same layer count and very different bytes per token separate a device's
bandwidth from its fixed costs; a shape with few, wide layers separates the per-layer from the
per-token cost. No tokenizer (``tokenizer.ggml.model = "no_vocab"``): llama-bench feeds random
token ids and never needs one.
"""

from __future__ import annotations

import os
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
"""narrow vs wide: same layers, ~13 MB vs ~215 MB a token (bandwidth); narrow vs deep: 4x the layers
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
was predicted 1.5-2.8x too fast. K-quant probes hold pseudo-random blocks with small, normal fp16
scales (``_kquant_blocks``): an all-zero Q6_K probe decoded at half the speed of random blocks here."""

K_SCALES = {"Q4_K": (144, (0, 2)), "Q5_K": (176, (0, 2)), "Q6_K": (210, (208,))}
"""K-quant block bytes and the offsets of their fp16 scales (ggml-common.h block_q4_K: d, dmin,
scales[12], qs[128]; block_q5_K: d, dmin, scales[12], qh[32], qs[128]; block_q6_K: ql[128], qh[64],
scales[16], d)."""


def _kquant_blocks(qtype: str, byte_shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Blocks of ``qtype`` with pseudo-random quants and sub-scales and every fp16 scale 2^-10:
    weights a real model could have (no zero, NaN or subnormal scale).

    >>> b = _kquant_blocks("Q4_K", (2, 288), 0)
    >>> b.shape, b.dtype.name, [float(x) for x in b.reshape(-1, 144)[:, 0:2].copy().view(np.float16).ravel()]
    ((2, 288), 'uint8', [0.0009765625, 0.0009765625, 0.0009765625, 0.0009765625])
    """
    size, offsets = K_SCALES[qtype]
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=byte_shape, dtype=np.uint8)
    blocks = data.reshape(-1, size)
    scale = np.array([2.0 ** -10], dtype=np.float16).view(np.uint8)
    for off in offsets:
        blocks[:, off:off + 2] = scale
    return data

TYPE_REFERENCE = ProbeShape("probe-q4_0-ref", n_layer=8, n_embd=1024, n_ff=2048, n_head=8, n_head_kv=2, n_vocab=8192)
"""The type probes' shape in Q4_0, the type the main probes measure. A type's rates are the main
rates times its probe's speed over this one's: measured on the same shape, so what the shape itself
does to the speed (a working set that partly fits a CPU's cache, short rows) cancels. Taken as
absolute rates instead, a 48 MB Q4_1 probe read at 15.9 GB/s on this 2-core VM, where the 97 MB
SmolLM2 of the same type decodes at about 8: the host's SmolLM2 prediction was 2x too fast."""


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
        if typ == GGMLQuantizationType.F32:
            data = np.zeros(tuple(reversed(ne)), dtype=np.float32)
        elif shape.qtype in K_SCALES:
            data = _kquant_blocks(shape.qtype, byte_shape, seed=len(name))
        else:
            data = np.zeros(byte_shape, dtype=np.uint8)
        w.add_tensor(name, data, raw_shape=byte_shape if typ != GGMLQuantizationType.F32 else None, raw_dtype=typ)
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
    rnd = "-rnd" if shape.qtype in K_SCALES else ""  # not the all-zero K-quant probes of earlier versions
    path = folder / f"{shape.name}-{shape.n_layer}x{shape.n_embd}-{shape.qtype}{rnd}.gguf"
    if not path.is_file():
        write_probe(path, shape)
    return path
