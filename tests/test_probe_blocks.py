"""The bench's probe models hold blocks that look to llama.cpp's kernels like a trained model's:
spread fp16 scales (the x86 kernels look each one up in a 256 KB table, so their spread sets the
speed), zero-mean weights that keep their input's scale, norms of one."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader
from gguf.quants import dequantize

from llamasplit.speed.probe import BLOCKS, SCALE_SPREAD_LOG2, ProbeShape, write_probe

SHAPE = dict(n_layer=2, n_embd=512, n_ff=1024, n_head=4, n_head_kv=2, n_vocab=2048)
FP16_MIN_NORMAL = 2.0 ** -14


@pytest.fixture(scope="module")
def probes(tmp_path_factory) -> dict[str, GGUFReader]:
    folder = tmp_path_factory.mktemp("probes")
    return {q: GGUFReader(write_probe(folder / f"{q}.gguf", ProbeShape(f"p-{q}", qtype=q, **SHAPE))) for q in BLOCKS}


def _scales(t, qtype: str) -> list[np.ndarray]:
    offsets = BLOCKS[qtype][0]
    size = GGML_QUANT_SIZES[GGMLQuantizationType[qtype]][1]
    blocks = np.asarray(t.data).reshape(-1, size)
    return [blocks[:, o:o + 2].copy().view(np.float16).astype(np.float32).ravel() for o in offsets]


@pytest.mark.parametrize("qtype", sorted(BLOCKS))
def test_scales_spread_like_a_trained_model(probes, qtype):
    reader = probes[qtype]
    _, _, signed = BLOCKS[qtype]
    matrices = [t for t in reader.tensors if t.tensor_type.name == qtype]
    assert len(matrices) == 3 + 7 * SHAPE["n_layer"] - 1  # token_embd, output + 7 per layer (norms are F32)
    for t in matrices:
        first, *rest = _scales(t, qtype)
        mags = np.abs(first)
        assert (mags >= FP16_MIN_NORMAL).all() and np.isfinite(first).all()  # never zero, subnormal, inf or NaN
        spread = float(np.log2(mags).std())
        assert abs(spread - SCALE_SPREAD_LOG2) < 0.06, (t.name, spread)  # a 3-sigma clip trims 1.5 % off
        assert len(np.unique(first)) > min(200, len(first) // 4)
        assert ((first < 0).any() and (first > 0).any()) == signed
        if rest:
            (second,) = rest
            assert (second < 0).all() if qtype == "Q4_1" else (second > 0).all()
    assert len({_scales(t, qtype)[0][:8].tobytes() for t in matrices}) == len(matrices)  # no two tensors alike


@pytest.mark.parametrize("qtype", sorted(q for q, b in BLOCKS.items() if b[1] is not None))
def test_legacy_weights_keep_their_input_scale(probes, qtype):
    for t in probes[qtype].tensors:
        if t.tensor_type.name != qtype:
            continue
        w = dequantize(np.asarray(t.data), t.tensor_type).astype(np.float64)
        n_in = int(t.shape[0])  # ne0: the dot products' length
        assert abs(w.mean()) < 0.05 / np.sqrt(n_in)
        assert 0.9 < w.std() * np.sqrt(n_in) < 1.35, t.name  # 1 / sqrt(n_in), times the scales' spread: E[2^X] over X ~ N(0, 0.5)


@pytest.mark.parametrize("qtype", sorted(BLOCKS))
def test_norms_are_one(probes, qtype):
    norms = [t for t in probes[qtype].tensors if t.name.endswith("norm.weight")]
    assert norms and all((np.asarray(t.data) == 1.0).all() for t in norms)
