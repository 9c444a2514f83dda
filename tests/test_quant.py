"""What-if quantization (``llamasplit.model.quant``) against llama.cpp's own choices.

The unit tests give small synthetic tensor tables and the exact types ``src/llama-quant.cpp`` picks,
each with the rule that picks it. The ``llamacpp`` tests run the real ``llama-quantize
--allow-requantize`` on the real fixtures and on tiny synthetic F32/F16 models, and compare every
tensor's type and the total bytes with the prediction.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFWriter
from gguf.constants import GGMLQuantizationType as T
from gguf.constants import Keys, LlamaFileType

from llamasplit.errors import ModelReadError, UsageError
from llamasplit.model.gguf_reader import RawTensor, ggml_nbytes, read_header
from llamasplit.model.quant import (
    FILE_TYPES,
    IMATRIX_FILE_TYPES,
    imatrix_required,
    parse_file_type,
    requantize,
    requantized_bytes,
)

# --------------------------------------------------------------------------------------------
# helpers


def _t(name: str, *shape: int, type_: T = T.F16) -> RawTensor:
    return RawTensor(name, int(type_), tuple(shape), ggml_nbytes(type_, tuple(shape)), 0)


def _meta(arch: str, n_layer: int, *, n_head: int = 4, n_head_kv: int = 2, n_expert: int | None = None) -> dict:
    meta = {
        Keys.General.ARCHITECTURE: arch,
        Keys.LLM.BLOCK_COUNT.format(arch=arch): n_layer,
        Keys.Attention.HEAD_COUNT.format(arch=arch): n_head,
        Keys.Attention.HEAD_COUNT_KV.format(arch=arch): n_head_kv,
    }
    if n_expert is not None:
        meta[Keys.LLM.EXPERT_COUNT.format(arch=arch)] = n_expert
    return meta


def _types(arch: str, meta: dict, tensors: Sequence[RawTensor], ftype: str, **kw) -> dict[str, str]:
    return {t.name: T(t.ggml_type).name for t in requantize(arch, meta, tensors, ftype, **kw)}


def _dense(n_layer: int, *, output: bool = True, n_embd: int = 256, n_ff: int = 512) -> list[RawTensor]:
    """A llama-like dense table: every row a multiple of 256, so no fallback."""
    ts = [_t("token_embd.weight", n_embd, 1000), _t("output_norm.weight", n_embd, type_=T.F32)]
    if output:
        ts.append(_t("output.weight", n_embd, 1000))
    for i in range(n_layer):
        b = f"blk.{i}."
        ts += [
            _t(b + "attn_norm.weight", n_embd, type_=T.F32),
            _t(b + "attn_q.weight", n_embd, 256),
            _t(b + "attn_k.weight", n_embd, 128),
            _t(b + "attn_v.weight", n_embd, 128),
            _t(b + "attn_output.weight", 256, n_embd),
            _t(b + "ffn_norm.weight", n_embd, type_=T.F32),
            _t(b + "ffn_gate.weight", n_embd, n_ff),
            _t(b + "ffn_up.weight", n_embd, n_ff),
            _t(b + "ffn_down.weight", n_ff, n_embd),
        ]
    return ts


def _layer(i: int, **types: str) -> dict[str, str]:
    return {f"blk.{i}.{role}.weight": t for role, t in types.items()}


# use_more_bits(i, n) = i < n/8 || i >= 7n/8 || (i - n/8) % 3 == 2; for n = 8: layers 0, 3, 6, 7
MORE_BITS_8 = {0, 3, 6, 7}


# --------------------------------------------------------------------------------------------
# the recipes, rule by rule


def test_q4_k_m_gives_attn_v_and_ffn_down_more_bits_on_use_more_bits_layers():
    meta = _meta("llama", 8)
    got = _types("llama", meta, _dense(8), "Q4_K_M")
    expected = {
        # token_embd is untied (output.weight exists): the TOKEN_EMBD branch keeps the default Q4_K
        "token_embd.weight": "Q4_K",
        # OUTPUT branch: the row (256) fits Q4_K's block and the type is not Q8_0 -> Q6_K
        "output.weight": "Q6_K",
        "output_norm.weight": "F32",  # 1-D: never quantized
    }
    for i in range(8):
        more = "Q6_K" if i in MORE_BITS_8 else "Q4_K"
        expected |= _layer(
            i,
            attn_norm="F32", ffn_norm="F32",
            attn_q="Q4_K", attn_k="Q4_K", attn_output="Q4_K", ffn_gate="Q4_K", ffn_up="Q4_K",
            attn_v=more,  # Q4_K_M && use_more_bits(i_attention_wv, n_attention_wv) -> Q6_K
            ffn_down=more,  # Q4_K_M && use_more_bits(i_layer, n_layer) -> Q6_K
        )
    assert got == expected


def test_q3_k_m_recipe():
    got = _types("llama", _meta("llama", 8), _dense(8), "Q3_K_M")
    expected = {"token_embd.weight": "Q3_K", "output.weight": "Q6_K", "output_norm.weight": "F32"}
    for i in range(8):
        expected |= _layer(
            i,
            attn_norm="F32", ffn_norm="F32", attn_q="Q3_K", attn_k="Q3_K", ffn_gate="Q3_K", ffn_up="Q3_K",
            attn_v="Q5_K" if i < 2 else "Q4_K",  # Q3_K_M: i_attention_wv < 2 ? Q5_K : Q4_K
            ffn_down="Q4_K",  # i_layer < n/16 (= 0) never; not falcon -> Q4_K
            attn_output="Q4_K",  # not falcon, n_expert != 8, Q3_K_M -> Q4_K
        )
    assert got == expected


def test_layers_are_counted_in_llama_cpp_order_not_the_files():
    # llama_model_loader sorts weights by layer number, then name; the counters of attn_v run in
    # that order. Given blk.0, blk.1, blk.10, blk.11, blk.2 ... (string order, reversed even),
    # blk.10 is still layer 10.
    n = 12
    tensors = [_t(f"blk.{i}.{role}.weight", 256, 256) for i in range(n) for role in ("attn_v", "ffn_down")]
    tensors = sorted(tensors, key=lambda t: t.name, reverse=True)
    got = _types("llama", _meta("llama", n), tensors, "Q4_K_M")
    # use_more_bits for n = 12: i < 1, i >= 10, (i - 1) % 3 == 2 -> 0, 3, 6, 9, 10, 11
    more = {0, 3, 6, 9, 10, 11}
    expected = {}
    for i in range(n):
        expected |= _layer(i, attn_v="Q6_K" if i in more else "Q4_K", ffn_down="Q6_K" if i in more else "Q4_K")
    assert got == expected
    assert got["blk.10.attn_v.weight"] == "Q6_K"  # 3rd in string order, where it would get Q4_K
    assert [t.name for t in requantize("llama", _meta("llama", n), tensors, "Q4_K_M")] == [t.name for t in tensors]


def test_rows_that_do_not_fit_the_block_fall_back():
    # one layer, tied embeddings (no output.weight), SmolLM2-like rows of 576 = 2.25 * 256
    tensors = [
        _t("token_embd.weight", 576, 1000),
        _t("blk.0.attn_q.weight", 576, 576),
        _t("blk.0.attn_v.weight", 576, 192),
        _t("blk.0.ffn_up.weight", 576, 144),
        _t("blk.0.ffn_down.weight", 144, 576),  # 144 = 4.5 * 32: not even a 32-block fits
    ]
    meta = _meta("llama", 1, n_head=9, n_head_kv=3)
    assert _types("llama", meta, tensors, "Q4_K_M") == {
        "token_embd.weight": "Q8_0",  # tied -> OUTPUT branch: 576 % 256 != 0 -> Q8_0
        "blk.0.attn_q.weight": "Q5_0",  # Q4_K -> Q5_0
        "blk.0.attn_v.weight": "Q8_0",  # use_more_bits(0, 1) -> Q6_K -> Q8_0
        "blk.0.ffn_up.weight": "Q5_0",
        "blk.0.ffn_down.weight": "F16",  # Q6_K -> Q8_0, and 144 % 32 != 0 -> F16
    }
    assert _types("llama", meta, tensors, "IQ4_XS") == {
        "token_embd.weight": "Q8_0",
        "blk.0.attn_q.weight": "IQ4_NL",  # IQ4_XS -> IQ4_NL
        "blk.0.attn_v.weight": "IQ4_NL",  # n_gqa = 3 < 4: no Q5_K bump
        "blk.0.ffn_up.weight": "IQ4_NL",
        "blk.0.ffn_down.weight": "F16",  # i_layer < n/8 (= 0) never; IQ4_XS -> IQ4_NL -> F16
    }
    assert _types("llama", meta, tensors, "TQ2_0") == {
        "token_embd.weight": "Q8_0",
        "blk.0.attn_q.weight": "Q4_0",  # TQ2_0 -> Q4_0
        "blk.0.attn_v.weight": "Q4_0",
        "blk.0.ffn_up.weight": "Q4_0",
        "blk.0.ffn_down.weight": "F16",
    }


def test_q1_0_has_no_fallback_and_llama_quantize_fails():
    tensors = [_t("token_embd.weight", 256, 1000), _t("blk.0.attn_q.weight", 576, 576)]
    with pytest.raises(UsageError, match=r"blk\.0\.attn_q\.weight.*576.*Q1_0"):
        requantize("llama", _meta("llama", 1), tensors, "Q1_0")
    ok = [_t("token_embd.weight", 256, 1000), _t("blk.0.attn_q.weight", 384, 384)]
    assert _types("llama", _meta("llama", 1), ok, "Q1_0") == {
        "token_embd.weight": "Q6_K",  # tied: 256 % 128 == 0, not Q8_0 -> Q6_K
        "blk.0.attn_q.weight": "Q1_0",
    }


def test_moe_with_8_experts():
    arch = "qwen3moe"
    meta = _meta(arch, 4, n_head=4, n_head_kv=1, n_expert=8)
    tensors = [_t("token_embd.weight", 256, 1000), _t("output_norm.weight", 256, type_=T.F32)]
    for i in range(4):
        b = f"blk.{i}."
        tensors += [
            _t(b + "attn_q.weight", 256, 256), _t(b + "attn_k.weight", 256, 64), _t(b + "attn_v.weight", 256, 64),
            _t(b + "attn_output.weight", 256, 256), _t(b + "ffn_gate_inp.weight", 256, 8, type_=T.F32),
            _t(b + "ffn_gate_exps.weight", 256, 256, 8), _t(b + "ffn_up_exps.weight", 256, 256, 8),
            _t(b + "ffn_down_exps.weight", 256, 256, 8),
        ]
    expected = {"token_embd.weight": "Q6_K", "output_norm.weight": "F32"}  # tied -> OUTPUT branch
    for i in range(4):
        expected |= _layer(
            i,
            attn_q="Q3_K",
            attn_k="Q8_0",  # n_expert == 8 -> Q8_0
            attn_v="Q8_0",  # Q5_K/Q4_K by the Q3_K_M rule, then n_expert == 8 -> Q8_0
            attn_output="Q5_K",  # n_expert == 8 and Q3_K_M in the list -> Q5_K
            ffn_gate_inp="F32",  # expert router: never quantized
            ffn_gate_exps="Q3_K", ffn_up_exps="Q3_K",
            ffn_down_exps="Q4_K",  # Q3_K_M: i_layer < n/16 (= 0) never; not falcon -> Q4_K
        )
    assert _types(arch, meta, tensors, "Q3_K_M") == expected

    # MXFP4_MOE: 3-D expert tensors (ne[2] > 1) -> MXFP4, every other quantizable tensor -> Q8_0
    mx = _types(arch, meta, tensors, "MXFP4_MOE")
    assert {n for n, t in mx.items() if t == "MXFP4"} == {t.name for t in tensors if len(t.shape) == 3}
    assert mx["token_embd.weight"] == "Q8_0"
    assert mx["blk.2.attn_q.weight"] == "Q8_0"
    assert mx["blk.2.ffn_gate_inp.weight"] == "F32"


def test_moe_ffn_layer_comes_from_the_name():
    # with n_expert > 1 the ffn_down layer is parsed from "blk.N."; a running count would reach 16
    # here (ffn_down_exps and ffn_down_shexp in each of 8 layers)
    arch = "qwen2moe"
    meta = _meta(arch, 8, n_head=16, n_head_kv=16, n_expert=60)
    tensors = [_t("token_embd.weight", 256, 1000)]
    for i in range(8):
        b = f"blk.{i}."
        tensors += [
            _t(b + "attn_v.weight", 256, 256),
            _t(b + "ffn_down_exps.weight", 256, 256, 60),
            _t(b + "ffn_down_shexp.weight", 512, 256),
            _t(b + "ffn_gate_inp_shexp.weight", 256, type_=T.F32),
        ]
    expected = {"token_embd.weight": "Q6_K"}
    for i in range(8):
        more = "Q6_K" if i in MORE_BITS_8 else "Q4_K"
        expected |= _layer(i, attn_v=more, ffn_down_exps=more, ffn_down_shexp=more, ffn_gate_inp_shexp="F32")
    assert _types(arch, meta, tensors, "Q4_K_M") == expected

    stray = [*tensors, _t("blk.8.ffn_down_exps.weight", 256, 256, 60)]
    with pytest.raises(ModelReadError, match="layer 8"):
        requantize(arch, meta, stray, "Q4_K_M")


def test_falcon_special_cases():
    n = 8
    tensors = [_t("token_embd.weight", 256, 1000), _t("output.weight", 256, 1000)]
    for i in range(n):
        tensors += [
            _t(f"blk.{i}.attn_norm.weight", 256, type_=T.F32),
            _t(f"blk.{i}.attn_qkv.weight", 256, 768),
            _t(f"blk.{i}.attn_output.weight", 256, 256),
            _t(f"blk.{i}.ffn_up.weight", 256, 1024),
            _t(f"blk.{i}.ffn_down.weight", 1024, 256),
        ]
    got = _types("falcon", _meta("falcon", n, n_head=8, n_head_kv=1), tensors, "Q3_K_M")
    expected = {
        "output.weight": "Q8_0",  # falcon -> Q8_0
        "token_embd.weight": "Q3_K",  # untied: TOKEN_EMBD branch keeps the default
    }
    for i in range(n):
        expected |= _layer(
            i,
            attn_norm="F32",
            attn_qkv="Q5_K" if i < 2 else "Q4_K",  # attn_qkv is attn_v-like: the Q3_K_M attn_v rule
            attn_output="Q3_K",  # falcon: only Q3_K_L changes attn_output
            ffn_up="Q3_K",
            ffn_down="Q4_K" if i in MORE_BITS_8 else "Q3_K",  # falcon && !use_more_bits -> Q3_K
        )
    assert got == expected


@pytest.mark.parametrize(
    ("arch", "n_layer", "n_head", "n_head_kv", "expected"),
    [
        ("llama", 80, 64, 8, "Q5_K"),  # 70B: n_gqa 8 >= 4 -> Q4_K, bumped to Q5_K
        ("qwen2", 80, 64, 8, "Q5_K"),  # qwen2 with 80 layers is 70B too
        ("llama", 80, 64, 64, "Q3_K"),  # n_head == n_head_kv: 65B, no bump; n_gqa 1 -> Q3_K
        ("llama", 32, 32, 8, "Q4_K"),  # not 70B
    ],
)
def test_70b_models_get_more_bits_on_attn_v(arch, n_layer, n_head, n_head_kv, expected):
    meta = _meta(arch, n_layer, n_head=n_head, n_head_kv=n_head_kv)
    tensors = [_t("blk.0.attn_v.weight", 256, 256)]
    assert _types(arch, meta, tensors, "Q2_K") == {"blk.0.attn_v.weight": expected}


def test_tensors_that_are_never_quantized():
    tensors = [
        _t("blk.0.attn_norm.weight", 256, type_=T.F32),  # 1-D
        _t("blk.0.attn_q_norm.weight", 256, 4, type_=T.F32),  # 2-D but "_norm.weight"
        _t("blk.0.odd.weight", 256, 1, type_=T.F32),  # ggml_n_dims ignores trailing 1s: 1-D
        _t("blk.0.ffn_gate_inp.weight", 256, 8, type_=T.F32),  # expert router
        _t("blk.0.ssm_conv1d.weight", 4, 512, type_=T.F32),  # Mamba conv
        _t("position_embd.weight", 256, 512, type_=T.F32),
        _t("token_types.weight", 256, 2, type_=T.F32),
        _t("blk.0.attn_q.scale", 256, 2, type_=T.F32),  # name does not end in "weight"
        _t("blk.0.attn_q.weight", 256, 256, type_=T.F32),
    ]
    got = _types("llama", _meta("llama", 1), tensors, "Q8_0")
    assert got == {t.name: "F32" for t in tensors[:-1]} | {"blk.0.attn_q.weight": "Q8_0"}


def test_float_file_types_convert_every_quantizable_tensor():
    tensors = [
        _t("token_embd.weight", 576, 1000, type_=T.Q8_0),
        _t("output.weight", 576, 1000, type_=T.Q8_0),
        _t("blk.0.attn_norm.weight", 576, type_=T.F32),
        _t("blk.0.attn_q.weight", 576, 576, type_=T.Q4_1),
    ]
    meta = _meta("llama", 1)
    # F16/BF16/F32 are not quantized types: no recipe, no fallback, every 2-D weight converted
    assert _types("llama", meta, tensors, "F16") == {
        "token_embd.weight": "F16",
        "output.weight": "F16",
        "blk.0.attn_norm.weight": "F32",
        "blk.0.attn_q.weight": "F16",
    }
    assert set(_types("llama", meta, tensors, "BF16").values()) == {"BF16", "F32"}
    assert set(_types("llama", meta, tensors, "F32").values()) == {"F32"}
    # COPY keeps everything as it is
    assert _types("llama", meta, tensors, "COPY") == {t.name: T(t.ggml_type).name for t in tensors}


def test_pure_and_leave_output_tensor():
    meta = _meta("llama", 8)
    pure = _types("llama", meta, _dense(8), "Q4_K_M", pure=True)
    # --pure skips the recipe: output and attn_v get the default type too
    assert {n: t for n, t in pure.items() if not n.endswith("norm.weight")} == {
        n: "Q4_K" for n in pure if not n.endswith("norm.weight")
    }
    # ... but not the fallback
    assert _types("llama", _meta("llama", 1), [_t("output.weight", 576, 100)], "Q4_K_M", pure=True) == {
        "output.weight": "Q5_0"
    }
    kept = _types("llama", meta, _dense(8), "Q4_0", leave_output_tensor=True)
    assert kept["output.weight"] == "F16"
    assert _types("llama", meta, _dense(8), "Q4_0")["output.weight"] == "Q6_K"


def test_imatrix_requirements():
    meta = _meta("llama", 8)
    need = imatrix_required("llama", meta, _dense(8), "IQ2_XXS")
    # IQ2_XXS, n_gqa 2: attn_v -> Q2_K; ffn_down -> Q2_K for i_ffn_down < n/8 (layer 0), else IQ2_XXS;
    # attn_q/attn_k/attn_output/ffn_gate/ffn_up -> IQ2_XXS, which needs an imatrix;
    # token_embd (-> Q2_K) and output (-> Q5_K) are exempt by name
    assert need[:6] == (
        "blk.0.attn_k.weight", "blk.0.attn_output.weight", "blk.0.attn_q.weight",
        "blk.0.ffn_gate.weight", "blk.0.ffn_up.weight", "blk.1.attn_k.weight",
    )
    assert len(need) == 8 * 5 + 7
    # Q2_K_S: the Q2_K tensors need one; ffn_down of layer 0 is Q4_K (i_layer < n/8)
    assert len(imatrix_required("llama", meta, _dense(8), "Q2_K_S")) == 8 * 6 + 7
    assert imatrix_required("llama", meta, _dense(8), "Q4_K_M") == ()
    assert {"IQ2_XXS", "Q2_K_S"} <= IMATRIX_FILE_TYPES
    # with an imatrix, IQ3_XXS keeps attn_v at IQ3_XXS (n_gqa < 4) and ffn_down at the default
    without = _types("llama", meta, _dense(8), "IQ3_XXS")
    with_im = _types("llama", meta, _dense(8), "IQ3_XXS", has_imatrix=True)
    assert (without["blk.3.attn_v.weight"], with_im["blk.3.attn_v.weight"]) == ("IQ3_S", "IQ3_XXS")
    assert (without["blk.3.ffn_down.weight"], with_im["blk.3.ffn_down.weight"]) == ("Q3_K", "IQ3_XXS")


def test_bytes_are_the_sum_of_the_new_sizes():
    tensors = [
        _t("token_embd.weight", 256, 1000),
        _t("output_norm.weight", 256, type_=T.F32),
        _t("blk.0.attn_q.weight", 256, 256),
    ]
    # Q8_0 is 34 bytes per 32 values:
    #   token_embd (tied -> OUTPUT branch, stays Q8_0): 256/32 * 34 * 1000 = 272000
    #   output_norm F32: 256 * 4                                            =   1024
    #   attn_q Q8_0: 256/32 * 34 * 256                                      =  69632
    assert requantized_bytes("llama", _meta("llama", 1), tensors, "Q8_0") == 272000 + 1024 + 69632


def test_the_result_keeps_the_input_order_and_leaves_the_input_alone():
    tensors = _dense(2)[::-1]
    before = list(tensors)
    out = requantize("llama", _meta("llama", 2), tensors, "Q4_K_M")
    assert tensors == before
    assert [t.name for t in out] == [t.name for t in tensors]
    assert [t.shape for t in out] == [t.shape for t in tensors]
    assert all(t.offset == 0 for t in out)
    assert out == requantize("llama", _meta("llama", 2), tensors, "Q4_K_M")


def test_type_names():
    assert parse_file_type("q4_k_m") == ("Q4_K_M", LlamaFileType.MOSTLY_Q4_K_M)
    assert FILE_TYPES["Q4_K"] == FILE_TYPES["Q4_K_M"]  # llama-quantize's alias
    meta = _meta("llama", 8)
    assert _types("llama", meta, _dense(8), "q4_k") == _types("llama", meta, _dense(8), "Q4_K_M")
    with pytest.raises(UsageError) as err:
        requantize("llama", _meta("llama", 1), [], "Q4_K_X")
    assert "Q4_K_X" in str(err.value) and "Q4_K_M" in str(err.value) and "IQ2_XXS" in str(err.value)


def test_missing_block_count():
    with pytest.raises(ModelReadError, match="block_count"):
        requantize("llama", {}, [_t("blk.0.attn_q.weight", 256, 256)], "Q4_K_M")


# --------------------------------------------------------------------------------------------
# against the real llama-quantize

QUANTIZE_TIMEOUT_S = 300
TYPES = [name for name in FILE_TYPES if name not in ("Q3_K", "Q4_K", "Q5_K")]  # aliases: same ftype
SLOW_IQ = {"IQ3_XXS", "IQ3_XS", "IQ3_S", "IQ3_M", "IQ4_NL", "IQ4_XS"}
"""IQ types llama-quantize may make without an imatrix but that take ~10 s each on a real fixture
(2 cores): on the fixtures they are checked by --dry-run (the same choice of types, no writing)
and written for real on the synthetic models, plus one on SmolLM2 below."""
FIXTURE_SLOW_WRITTEN = {("smollm2", "IQ4_XS")}

MODELS = ("dense", "moe", "smollm2", "gemma3")
WRITE_CASES = [
    (model, ftype)
    for model in MODELS
    for ftype in TYPES
    if model in ("dense", "moe") or ftype not in SLOW_IQ or (model, ftype) in FIXTURE_SLOW_WRITTEN
]

# "[  12/ 272] blk.1.attn_k.weight - [576, 192, 1, 1], type = q4_1, size = 0.07 MiB -> 0.07 MiB (q5_0)"
DRY_RUN_LINE = re.compile(r"^\[\s*\d+/\s*\d+\]\s+(\S+)\s+- \[[^\]]*\], type =\s+(\S+), size =[^(]*(?:\((\S+)\))?\s*$")
QUANT_SIZE = re.compile(r"quant size\s*=\s*([0-9.]+) MiB")


def _write_dense(path: Path) -> None:
    """A 16-layer llama, all F32: rows of 256 and 512, and attn_output rows of 4 heads * 36 = 144,
    which no 32-block divides (the F16 fallback)."""
    arch, n_embd, n_ff, n_head, n_head_kv, head_dim, n_layer, n_vocab = "llama", 256, 512, 4, 2, 36, 16, 1000
    w = GGUFWriter(path, arch)
    w.add_context_length(512)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(LlamaFileType.ALL_F32)
    rng = np.random.default_rng(0)

    def add(name: str, *ne: int) -> None:
        w.add_tensor(name, (rng.standard_normal(ne[::-1]) * 0.02).astype(np.float32))

    add("token_embd.weight", n_embd, n_vocab)
    add("output_norm.weight", n_embd)
    add("output.weight", n_embd, n_vocab)
    for i in range(n_layer):
        b = f"blk.{i}."
        add(b + "attn_norm.weight", n_embd)
        add(b + "attn_q.weight", n_embd, n_head * head_dim)
        add(b + "attn_k.weight", n_embd, n_head_kv * head_dim)
        add(b + "attn_v.weight", n_embd, n_head_kv * head_dim)
        add(b + "attn_output.weight", n_head * head_dim, n_embd)
        add(b + "ffn_norm.weight", n_embd)
        add(b + "ffn_gate.weight", n_embd, n_ff)
        add(b + "ffn_up.weight", n_embd, n_ff)
        add(b + "ffn_down.weight", n_ff, n_embd)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _write_moe(path: Path) -> None:
    """An 8-layer qwen3moe with 8 experts (the n_expert == 8 rules), F16 weights, tied embeddings,
    and attn_output rows of 4 heads * 48 = 192 (a 32-block fallback)."""
    arch, n_embd, n_ff_exp, n_head, n_head_kv, head_dim, n_layer, n_vocab, n_expert = (
        "qwen3moe", 256, 256, 4, 1, 48, 8, 1000, 8
    )
    w = GGUFWriter(path, arch)
    w.add_context_length(512)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff_exp)
    w.add_expert_feed_forward_length(n_ff_exp)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_expert_count(n_expert)
    w.add_expert_used_count(2)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_file_type(LlamaFileType.MOSTLY_F16)
    rng = np.random.default_rng(1)

    def add(name: str, *ne: int, dtype: type = np.float16) -> None:
        w.add_tensor(name, (rng.standard_normal(ne[::-1]) * 0.02).astype(dtype))

    add("token_embd.weight", n_embd, n_vocab)
    add("output_norm.weight", n_embd, dtype=np.float32)
    for i in range(n_layer):
        b = f"blk.{i}."
        add(b + "attn_norm.weight", n_embd, dtype=np.float32)
        add(b + "attn_q.weight", n_embd, n_head * head_dim)
        add(b + "attn_k.weight", n_embd, n_head_kv * head_dim)
        add(b + "attn_v.weight", n_embd, n_head_kv * head_dim)
        add(b + "attn_output.weight", n_head * head_dim, n_embd)
        add(b + "attn_q_norm.weight", head_dim, dtype=np.float32)
        add(b + "attn_k_norm.weight", head_dim, dtype=np.float32)
        add(b + "ffn_norm.weight", n_embd, dtype=np.float32)
        add(b + "ffn_gate_inp.weight", n_embd, n_expert, dtype=np.float32)
        add(b + "ffn_gate_exps.weight", n_embd, n_ff_exp, n_expert)
        add(b + "ffn_up_exps.weight", n_embd, n_ff_exp, n_expert)
        add(b + "ffn_down_exps.weight", n_ff_exp, n_embd, n_expert)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture(scope="module")
def model_paths(tmp_path_factory) -> dict[str, Path]:
    from llamasplit.realmodels import fetch_model

    folder = tmp_path_factory.mktemp("quant-models")
    _write_dense(folder / "dense-f32.gguf")
    _write_moe(folder / "moe-f16.gguf")
    return {
        "dense": folder / "dense-f32.gguf",
        "moe": folder / "moe-f16.gguf",
        "smollm2": fetch_model("smollm2"),
        "gemma3": fetch_model("gemma3"),
    }


@pytest.fixture(scope="module")
def quantize_bin() -> Path:
    from llamasplit.llamacpp.binaries import find_binary

    return find_binary("llama-quantize")


def _quantize(binary: Path, src: Path, ftype: str, dst: Path | None):
    from procs import run_to_end

    argv = [str(binary), "--allow-requantize"]
    argv += ["--dry-run", str(src), ftype] if dst is None else [str(src), str(dst), ftype]
    return run_to_end(argv, timeout_s=QUANTIZE_TIMEOUT_S)


def _header(src: Path):
    header = read_header(src)
    return header, header.metadata[Keys.General.ARCHITECTURE]


@pytest.mark.llamacpp
@pytest.mark.parametrize(("model", "ftype"), WRITE_CASES)
def test_llama_quantize_writes_the_predicted_file(model, ftype, model_paths, quantize_bin, tmp_path):
    src = model_paths[model]
    header, arch = _header(src)
    dst = tmp_path / "out.gguf"
    try:
        predicted = requantize(arch, header.metadata, header.tensors, ftype)
    except UsageError:
        # a row no block of the type fits, with no fallback (Q1_0): llama-quantize fails too
        proc = _quantize(quantize_bin, src, ftype, dst)
        assert proc.returncode != 0
        assert "no tensor type fallback" in proc.stderr + proc.stdout
        return
    need = imatrix_required(arch, header.metadata, header.tensors, ftype)
    proc = _quantize(quantize_bin, src, ftype, dst)
    log = proc.stdout + proc.stderr
    if need:
        # llama-quantize refuses at the first tensor that needs an imatrix, in its own order
        assert proc.returncode != 0
        assert f"offending tensor: {need[0]}" in log
        return
    try:
        assert proc.returncode == 0, log[-3000:]
        made = read_header(dst)
    finally:
        dst.unlink(missing_ok=True)
    got = {t.name: (T(t.ggml_type).name, t.shape, t.n_bytes) for t in made.tensors}
    want = {t.name: (T(t.ggml_type).name, t.shape, t.n_bytes) for t in predicted}
    assert got == want
    assert sum(t.n_bytes for t in made.tensors) == requantized_bytes(arch, header.metadata, header.tensors, ftype)
    if ftype != "COPY":
        assert made.metadata[Keys.General.FILE_TYPE] == FILE_TYPES[ftype]


@pytest.mark.llamacpp
@pytest.mark.parametrize(("model", "ftype"), [(m, f) for m in MODELS for f in TYPES])
def test_llama_quantize_dry_run_chooses_the_predicted_types(model, ftype, model_paths, quantize_bin):
    """--dry-run prints each tensor's target type, also for the types that need an imatrix."""
    src = model_paths[model]
    header, arch = _header(src)
    proc = _quantize(quantize_bin, src, ftype, None)
    log = proc.stdout + proc.stderr
    try:
        predicted = requantize(arch, header.metadata, header.tensors, ftype)
    except UsageError:
        assert proc.returncode != 0
        return
    assert proc.returncode == 0, log[-3000:]
    chosen = {}
    for line in log.splitlines():
        m = DRY_RUN_LINE.match(line)
        if m:
            chosen[m.group(1)] = (m.group(3) or m.group(2)).upper()
    assert chosen == {t.name: T(t.ggml_type).name for t in predicted}
    # the total, as llama-quantize prints it (MiB, 2 decimals)
    total = requantized_bytes(arch, header.metadata, header.tensors, ftype)
    assert QUANT_SIZE.search(log).group(1) == f"{total / 1024 / 1024:.2f}"
