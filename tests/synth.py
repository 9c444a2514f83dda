"""Synthetic GGUF models written with gguf.GGUFWriter, for shapes the real fixtures lack.

``write_model`` writes small F32 models of any arch for the header reader's tests. The three
``write_*`` writers below it write models that llama.cpp itself LOADS (and runs: the weights are
zeros), big enough that compute buffers are tens of MiB, for the differential tests against
llama.cpp's own memory figures:

- ``write_llama_dense``: llama, F16, vocab 32000, separate output matrix;
- ``write_qwen3moe``: qwen3moe with Q/K norms, a router and ``*_exps`` experts
  (``src/models/qwen3moe.cpp``), tied embeddings;
- ``write_deepseek2``: deepseek2 with multi-head latent attention (``q_lora_rank = 0`` so a plain
  ``attn_q``, ``attn_kv_a_mqa``, ``attn_kv_a_norm``, split ``attn_k_b``/``attn_v_b``), one leading
  dense block, shared experts, sigmoid gating with ``exp_probs_b`` and expert groups
  (``src/models/deepseek2.cpp``), tied embeddings.

There is no tokenizer: ``tokenizer.ggml.model = "no_vocab"`` and ``{arch}.vocab_size`` make
llama.cpp load the model with LLAMA_VOCAB_TYPE_NONE and take n_vocab from the key.
Shapes below are ggml ``ne`` order (row length first); numpy's are the reverse.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFWriter
from gguf.constants import Keys


def add_spm_vocab(w: GGUFWriter, n_vocab: int) -> None:
    """A tiny SPM vocabulary of ASCII pieces, so llama-completion can take a prompt. Byte tokens
    stop at 0x7F so whatever random weights generate prints as UTF-8."""
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(128)] + ["\u2581"] + letters
    tokens += ["\u2581" + c for c in letters]
    types = [2, 3, 3] + [6] * 128 + [1] * (len(tokens) - 131)
    tokens += [f"w{i}" for i in range(n_vocab - len(tokens))]
    types += [1] * (n_vocab - len(types))
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * n_vocab)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)


def write_model(
    path: Path,
    *,
    arch: str = "llama",
    n_layer: int = 2,
    n_embd: int = 64,
    n_head: int = 4,
    n_head_kv: int = 2,
    n_ff: int = 128,
    n_vocab: int = 256,
    n_expert: int = 0,
    n_expert_used: int = 0,
    tied: bool = False,
    extra_kv: dict | None = None,
    split: tuple[int, ...] | None = None,
    vocab: bool | str = True,
    tensors: list[tuple[str, tuple[int, ...]]] | None = None,
) -> Path:
    """A small F32 model of ``arch``; ``split=(no, count)`` writes one shard's header keys.

    ``tensors`` shapes are numpy order (rows first).
    """
    w = GGUFWriter(str(path), arch)
    w.add_block_count(n_layer)
    w.add_context_length(2048)
    w.add_embedding_length(n_embd)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(0)
    if vocab == "spm":
        add_spm_vocab(w, n_vocab)
    elif vocab:
        # no tokenizer, but llama.cpp still loads the model (LLAMA_VOCAB_TYPE_NONE) and takes
        # n_vocab from this key, so contexts, KV and logits can be measured
        w.add_tokenizer_model("no_vocab")
        w.add_vocab_size(n_vocab)
    if n_expert:
        w.add_expert_count(n_expert)
        w.add_expert_used_count(n_expert_used)
    for key, value in (extra_kv or {}).items():
        if isinstance(value, int):
            w.add_uint32(key.format(arch=arch), value)
        else:
            w.add_array(key.format(arch=arch), value)
    if split:
        w.add_uint16(Keys.Split.LLM_KV_SPLIT_NO, split[0])
        w.add_uint16(Keys.Split.LLM_KV_SPLIT_COUNT, split[1])
        w.add_int32(Keys.Split.LLM_KV_SPLIT_TENSORS_COUNT, split[2] if len(split) > 2 else 0)
    if tensors is None:
        tensors = [("token_embd.weight", (n_vocab, n_embd)), ("output_norm.weight", (n_embd,))]
        if not tied:
            tensors.append(("output.weight", (n_vocab, n_embd)))
        for il in range(n_layer):
            hd = n_embd // n_head
            tensors += [
                (f"blk.{il}.attn_norm.weight", (n_embd,)),
                (f"blk.{il}.attn_q.weight", (n_embd, n_embd)),
                (f"blk.{il}.attn_k.weight", (hd * n_head_kv, n_embd)),
                (f"blk.{il}.attn_v.weight", (hd * n_head_kv, n_embd)),
                (f"blk.{il}.attn_output.weight", (n_embd, n_embd)),
                (f"blk.{il}.ffn_norm.weight", (n_embd,)),
            ]
            if n_expert:
                tensors += [
                    (f"blk.{il}.ffn_gate_inp.weight", (n_expert, n_embd)),
                    (f"blk.{il}.ffn_gate_exps.weight", (n_expert, n_ff, n_embd)),
                    (f"blk.{il}.ffn_up_exps.weight", (n_expert, n_ff, n_embd)),
                    (f"blk.{il}.ffn_down_exps.weight", (n_expert, n_embd, n_ff)),
                ]
            else:
                tensors += [
                    (f"blk.{il}.ffn_gate.weight", (n_ff, n_embd)),
                    (f"blk.{il}.ffn_up.weight", (n_ff, n_embd)),
                    (f"blk.{il}.ffn_down.weight", (n_embd, n_ff)),
                ]
    rng = np.random.default_rng(0)
    for name, shape in tensors:
        # numpy shapes are reversed ggml ne: (rows, row_length)
        w.add_tensor(name, (rng.standard_normal(shape) * 0.02).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


# --------------------------------------------------------------------------------------------
# models llama.cpp loads
# --------------------------------------------------------------------------------------------


def _write_loadable(path: Path, arch: str, *, n_layer: int, n_embd: int, n_head: int, n_head_kv: int,
                    n_ff: int, n_vocab: int, keys: dict, tensors: list[tuple[str, tuple[int, ...]]],
                    matrix_type: str = "F16", header_only: bool = False, file_type: int | None = None,
                    vocab: str = "none") -> Path:
    """Header with the common keys plus ``keys``; ``tensors`` in ggml ne order: norms and biases
    (1-d) F32, matrices ``matrix_type`` (F16, or a quantised type such as Q4_0 / Q8_0 where the
    row length allows it; others stay F16), all zeros (llama.cpp never looks at the values to
    size memory). ``header_only`` writes the header alone (for ``read_model(require_data=False)``:
    the fast tests need the shapes, not 85 MB of zeros). ``vocab="spm"``: a small SPM vocabulary
    (``add_spm_vocab``) instead of none, so llama-completion and llama-server can tokenize a prompt
    and run."""
    qtype = GGMLQuantizationType[matrix_type]
    w = GGUFWriter(str(path), arch)
    w.add_block_count(n_layer)
    w.add_context_length(32768)
    w.add_embedding_length(n_embd)
    if "{arch}.feed_forward_length" not in keys:  # a per-layer array comes with the keys
        w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(10000.0)
    w.add_file_type(file_type if file_type is not None else _FILE_TYPES.get(matrix_type, 1))
    if vocab == "spm":
        add_spm_vocab(w, n_vocab)
    else:
        w.add_tokenizer_model("no_vocab")
        w.add_vocab_size(n_vocab)
    for key, value in keys.items():
        key = key.format(arch=arch)
        if isinstance(value, bool):
            w.add_bool(key, value)
        elif isinstance(value, int):
            w.add_uint32(key, value)
        elif isinstance(value, (list, tuple)):
            w.add_array(key, list(value))
        else:
            w.add_float32(key, float(value))
    for name, ne in tensors:
        if len(ne) == 1 or name.endswith(".bias") or any(f".{stem}" in name for stem in _F32_STEMS):
            typ = GGMLQuantizationType.F32
        else:
            typ = qtype if ne[0] % GGML_QUANT_SIZES[qtype][0] == 0 else GGMLQuantizationType.F16
        block, size = GGML_QUANT_SIZES[typ]
        byte_shape = (*reversed(ne[1:]), ne[0] // block * size)
        n_bytes = int(np.prod(byte_shape))
        if header_only:
            w.add_tensor_info(name, tuple(reversed(ne)), np.dtype(np.float16 if typ == GGMLQuantizationType.F16 else np.float32),
                              n_bytes, raw_dtype=typ)
        elif typ in (GGMLQuantizationType.F32, GGMLQuantizationType.F16):
            w.add_tensor(name, np.zeros(tuple(reversed(ne)), dtype=np.float32 if typ == GGMLQuantizationType.F32 else np.float16))
        else:
            w.add_tensor(name, np.zeros(byte_shape, dtype=np.uint8), raw_dtype=typ)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    if header_only:
        w.write_ti_data_to_file()
    else:
        w.write_tensors_to_file()
    w.close()
    return path


_F32_STEMS = ("ssm_a", "ssm_d", "ssm_conv1d", "ssm_norm", "shortconv.conv")
"""Tensors ggml's SSM ops read as F32 whatever their shape (llama.cpp's converter keeps them F32)."""

_FILE_TYPES = {"F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7}
"""llama_ftype of a file whose matrices are of one type (include/llama.h LLAMA_FTYPE_MOSTLY_*)."""


def _embeddings(n_embd: int, n_vocab: int, tied: bool) -> list[tuple[str, tuple[int, ...]]]:
    out = [("token_embd.weight", (n_embd, n_vocab)), ("output_norm.weight", (n_embd,))]
    if not tied:
        out.append(("output.weight", (n_embd, n_vocab)))
    return out


def write_llama_dense(
    path: Path, *, n_layer: int = 4, n_embd: int = 512, n_head: int = 8, n_head_kv: int = 2,
    n_ff: int = 1408, n_vocab: int = 32000, tied: bool = False, **opts,
) -> Path:
    """A llama: 4 x (GQA attention 8/2 heads of 64, SwiGLU 1408), vocab 32000.

    F16 bytes: embeddings 2 x 32000 x 512 x 2 = 62.5 MiB; per layer (512^2 x 2 + 512 x 128 x 2 +
    3 x 512 x 1408) x 2 = 5.4 MiB; about 85 MiB in all.
    """
    hd = n_embd // n_head
    tensors = _embeddings(n_embd, n_vocab, tied)
    for il in range(n_layer):
        tensors += [
            (f"blk.{il}.attn_norm.weight", (n_embd,)),
            (f"blk.{il}.attn_q.weight", (n_embd, n_head * hd)),
            (f"blk.{il}.attn_k.weight", (n_embd, n_head_kv * hd)),
            (f"blk.{il}.attn_v.weight", (n_embd, n_head_kv * hd)),
            (f"blk.{il}.attn_output.weight", (n_head * hd, n_embd)),
            (f"blk.{il}.ffn_norm.weight", (n_embd,)),
            (f"blk.{il}.ffn_gate.weight", (n_embd, n_ff)),
            (f"blk.{il}.ffn_up.weight", (n_embd, n_ff)),
            (f"blk.{il}.ffn_down.weight", (n_ff, n_embd)),
        ]
    keys = {"{arch}.rope.dimension_count": hd}
    return _write_loadable(path, "llama", n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_head_kv=n_head_kv,
                           n_ff=n_ff, n_vocab=n_vocab, keys=keys, tensors=tensors, **opts)


def write_qwen3moe(
    path: Path, *, n_layer: int = 4, n_embd: int = 512, n_head: int = 8, n_head_kv: int = 2, head_dim: int = 64,
    n_expert: int = 16, n_expert_used: int = 4, n_ff_exp: int = 256, n_vocab: int = 32000, tied: bool = True, **opts,
) -> Path:
    """A qwen3moe: Q/K RMS norms per head, 16 experts of 256, 4 used, tied embeddings.

    F16 bytes: embeddings 32000 x 512 x 2 = 31.25 MiB; per layer experts 3 x 16 x 256 x 512 x 2
    = 12 MiB plus attention 1.25 MiB; about 84 MiB in all.
    """
    tensors = _embeddings(n_embd, n_vocab, tied)
    for il in range(n_layer):
        tensors += [
            (f"blk.{il}.attn_norm.weight", (n_embd,)),
            (f"blk.{il}.attn_q.weight", (n_embd, n_head * head_dim)),
            (f"blk.{il}.attn_k.weight", (n_embd, n_head_kv * head_dim)),
            (f"blk.{il}.attn_v.weight", (n_embd, n_head_kv * head_dim)),
            (f"blk.{il}.attn_output.weight", (n_head * head_dim, n_embd)),
            (f"blk.{il}.attn_q_norm.weight", (head_dim,)),
            (f"blk.{il}.attn_k_norm.weight", (head_dim,)),
            (f"blk.{il}.ffn_norm.weight", (n_embd,)),
            (f"blk.{il}.ffn_gate_inp.weight", (n_embd, n_expert)),
            (f"blk.{il}.ffn_gate_exps.weight", (n_embd, n_ff_exp, n_expert)),
            (f"blk.{il}.ffn_up_exps.weight", (n_embd, n_ff_exp, n_expert)),
            (f"blk.{il}.ffn_down_exps.weight", (n_ff_exp, n_embd, n_expert)),
        ]
    keys = {
        "{arch}.rope.dimension_count": head_dim,
        "{arch}.attention.key_length": head_dim,
        "{arch}.attention.value_length": head_dim,
        "{arch}.expert_count": n_expert,
        "{arch}.expert_used_count": n_expert_used,
        "{arch}.expert_feed_forward_length": n_ff_exp,
    }
    return _write_loadable(path, "qwen3moe", n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_head_kv=n_head_kv,
                           n_ff=n_ff_exp * n_expert_used, n_vocab=n_vocab, keys=keys, tensors=tensors, **opts)



def _dense_first_moe_ffn(il: int, n_dense: int, n_embd: int, n_ff: int, n_expert: int, n_ff_exp: int,
                         n_shared: int) -> list[tuple[str, tuple[int, ...]]]:
    """The FFN of block ``il`` in deepseek2 and glm4moe: dense for the first ``n_dense`` blocks, then
    routed experts (sigmoid router with its bias) plus ``n_shared`` shared experts."""
    if il < n_dense:
        return [
            (f"blk.{il}.ffn_gate.weight", (n_embd, n_ff)),
            (f"blk.{il}.ffn_up.weight", (n_embd, n_ff)),
            (f"blk.{il}.ffn_down.weight", (n_ff, n_embd)),
        ]
    return [
        (f"blk.{il}.ffn_gate_inp.weight", (n_embd, n_expert)),
        (f"blk.{il}.exp_probs_b.bias", (n_expert,)),
        (f"blk.{il}.ffn_gate_exps.weight", (n_embd, n_ff_exp, n_expert)),
        (f"blk.{il}.ffn_up_exps.weight", (n_embd, n_ff_exp, n_expert)),
        (f"blk.{il}.ffn_down_exps.weight", (n_ff_exp, n_embd, n_expert)),
        (f"blk.{il}.ffn_gate_shexp.weight", (n_embd, n_ff_exp * n_shared)),
        (f"blk.{il}.ffn_up_shexp.weight", (n_embd, n_ff_exp * n_shared)),
        (f"blk.{il}.ffn_down_shexp.weight", (n_ff_exp * n_shared, n_embd)),
    ]


def write_deepseek2(
    path: Path, *, n_layer: int = 4, n_dense: int = 1, n_embd: int = 512, n_head: int = 8,
    kv_lora_rank: int = 256, qk_nope: int = 64, qk_rope: int = 64, v_head: int = 64,
    n_ff: int = 1024, n_expert: int = 16, n_expert_used: int = 4, n_ff_exp: int = 256, n_shared: int = 1,
    n_groups: int = 4, n_groups_used: int = 2, n_vocab: int = 32000, tied: bool = True, **opts,
) -> Path:
    """A deepseek2 with MLA: the cache holds ``kv_lora_rank + qk_rope`` = 320 values per token and layer.

    Header keys as convert_hf_to_gguf writes them for MLA: ``key_length`` = 320 (the cache row),
    ``value_length`` = 256 (kv_lora_rank), ``key_length_mla`` = 128, ``value_length_mla`` = 64,
    ``head_count_kv`` = 1; ``q_lora_rank`` = 0 selects a plain ``attn_q``.
    F16 bytes: embeddings 31.25 MiB; per MoE layer about 15 MiB; about 82 MiB in all.
    """
    hd_k = qk_nope + qk_rope
    tensors = _embeddings(n_embd, n_vocab, tied)
    for il in range(n_layer):
        tensors += [
            (f"blk.{il}.attn_norm.weight", (n_embd,)),
            (f"blk.{il}.attn_q.weight", (n_embd, n_head * hd_k)),
            (f"blk.{il}.attn_kv_a_mqa.weight", (n_embd, kv_lora_rank + qk_rope)),
            (f"blk.{il}.attn_kv_a_norm.weight", (kv_lora_rank,)),
            (f"blk.{il}.attn_k_b.weight", (qk_nope, kv_lora_rank, n_head)),
            (f"blk.{il}.attn_v_b.weight", (kv_lora_rank, v_head, n_head)),
            (f"blk.{il}.attn_output.weight", (n_head * v_head, n_embd)),
            (f"blk.{il}.ffn_norm.weight", (n_embd,)),
        ]
        tensors += _dense_first_moe_ffn(il, n_dense, n_embd, n_ff, n_expert, n_ff_exp, n_shared)
    keys = {
        "{arch}.rope.dimension_count": qk_rope,
        "{arch}.attention.key_length": kv_lora_rank + qk_rope,
        "{arch}.attention.value_length": kv_lora_rank,
        "{arch}.attention.key_length_mla": hd_k,
        "{arch}.attention.value_length_mla": v_head,
        "{arch}.attention.kv_lora_rank": kv_lora_rank,
        "{arch}.attention.q_lora_rank": 0,
        "{arch}.leading_dense_block_count": n_dense,
        "{arch}.expert_count": n_expert,
        "{arch}.expert_used_count": n_expert_used,
        "{arch}.expert_feed_forward_length": n_ff_exp,
        "{arch}.expert_shared_count": n_shared,
        "{arch}.expert_weights_scale": 2.5,
        "{arch}.expert_weights_norm": True,
        "{arch}.expert_gating_func": 2,  # sigmoid (LLAMA_EXPERT_GATING_FUNC_TYPE_SIGMOID)
        "{arch}.expert_group_count": n_groups,
        "{arch}.expert_group_used_count": n_groups_used,
    }
    return _write_loadable(path, "deepseek2", n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_head_kv=1,
                           n_ff=n_ff, n_vocab=n_vocab, keys=keys, tensors=tensors, **opts)


def write_glm4moe(
    path: Path, *, n_layer: int = 4, n_nextn: int = 1, n_dense: int = 1, n_embd: int = 512, n_head: int = 8,
    n_head_kv: int = 2, head_dim: int = 64, n_ff: int = 1024, n_expert: int = 16, n_expert_used: int = 4,
    n_ff_exp: int = 256, n_shared: int = 1, n_vocab: int = 32000, tied: bool = False, trunk: bool = True, **opts,
) -> Path:
    """A GLM-4.5-shaped glm4moe: Q/K/V with biases, partial RoPE (half of each head), one leading
    dense block, sigmoid-gated experts with ``exp_probs_b`` and a shared expert, the pre-FFN norm
    called ``post_attention_norm``, and ``n_nextn`` NextN/MTP blocks after the ``n_layer`` trunk
    blocks (``block_count`` = ``n_layer + n_nextn``, ``nextn_predict_layers`` = ``n_nextn``;
    src/models/glm4-moe.cpp ``load_arch_tensors``).

    F16 bytes: embeddings 2 x 32000 x 512 x 2 = 62.5 MiB; per MoE block experts 3 x 16 x 256 x 512 x 2
    = 12 MiB, shared expert 0.75 MiB, attention 1.25 MiB; the NextN block adds its own MoE block plus
    ``eh_proj`` 1024 x 512 x 2 = 1 MiB: about 15 MiB that llama.cpp skips (TENSOR_SKIP).
    ``trunk=False`` writes an MTP sidecar: the same header, the embeddings and the NextN blocks
    only (glm4-moe.cpp ``load_arch_tensors``: no ``blk.0.attn_norm`` makes the trunk not required).
    """
    hd = head_dim
    tensors = _embeddings(n_embd, n_vocab, tied)
    for il in range(0 if trunk else n_layer, n_layer + n_nextn):
        tensors += [
            (f"blk.{il}.attn_norm.weight", (n_embd,)),
            (f"blk.{il}.attn_q.weight", (n_embd, n_head * hd)),
            (f"blk.{il}.attn_k.weight", (n_embd, n_head_kv * hd)),
            (f"blk.{il}.attn_v.weight", (n_embd, n_head_kv * hd)),
            (f"blk.{il}.attn_q.bias", (n_head * hd,)),
            (f"blk.{il}.attn_k.bias", (n_head_kv * hd,)),
            (f"blk.{il}.attn_v.bias", (n_head_kv * hd,)),
            (f"blk.{il}.attn_output.weight", (n_head * hd, n_embd)),
            (f"blk.{il}.post_attention_norm.weight", (n_embd,)),
        ]
        tensors += _dense_first_moe_ffn(il, n_dense, n_embd, n_ff, n_expert, n_ff_exp, n_shared)
        if il >= n_layer:
            tensors += [
                (f"blk.{il}.nextn.eh_proj.weight", (2 * n_embd, n_embd)),
                (f"blk.{il}.nextn.enorm.weight", (n_embd,)),
                (f"blk.{il}.nextn.hnorm.weight", (n_embd,)),
                (f"blk.{il}.nextn.shared_head_norm.weight", (n_embd,)),
            ]
    keys = {
        "{arch}.rope.dimension_count": hd // 2,
        "{arch}.attention.key_length": hd,
        "{arch}.attention.value_length": hd,
        "{arch}.leading_dense_block_count": n_dense,
        "{arch}.expert_count": n_expert,
        "{arch}.expert_used_count": n_expert_used,
        "{arch}.expert_feed_forward_length": n_ff_exp,
        "{arch}.expert_shared_count": n_shared,
        "{arch}.expert_weights_scale": 2.5,
        "{arch}.expert_weights_norm": True,
        "{arch}.expert_gating_func": 2,  # sigmoid
        "{arch}.nextn_predict_layers": n_nextn,
    }
    return _write_loadable(path, "glm4moe", n_layer=n_layer + n_nextn, n_embd=n_embd, n_head=n_head,
                           n_head_kv=n_head_kv, n_ff=n_ff, n_vocab=n_vocab, keys=keys, tensors=tensors, **opts)


def write_decoder(
    path: Path, arch: str, *, n_layer: int = 4, n_embd: int = 512, n_head: int = 8, n_head_kv: int = 2,
    head_dim: int = 64, n_ff: int = 1408, n_vocab: int = 32000, tied: bool = False, qkv_bias: bool = False,
    qk_norm: str | None = None, fused_qkv: bool = False, fused_up: bool = False, pre_norms: bool = True,
    post_norms: bool = False, ffn_norm: bool = True, norm_bias: bool = False, gated: bool = True,
    out_bias: bool = False, keys: dict | None = None, **opts,
) -> Path:
    """A dense decoder of ``arch`` in the common layout, with the variations the archs below need:
    ``qkv_bias`` (qwen2), ``qk_norm`` = ``"head"`` (a norm per head: qwen3) or ``"full"`` (over
    all heads: olmo2), ``fused_qkv`` / ``fused_up`` (phi3's ``attn_qkv`` and ``ffn_up`` of
    ``2 * n_ff``), ``pre_norms=False`` (no attn_norm / ffn_norm: olmo2), ``ffn_norm=False`` (one
    norm feeds attention and FFN in parallel: cohere2), ``norm_bias`` (layer norms with biases),
    ``gated=False`` (ffn_up / ffn_down only), ``out_bias`` (attn_output and FFN biases: starcoder2),
    ``post_norms``
    (``post_attention_norm`` and ``post_ffw_norm``: gemma2, olmo2). ``keys``: extra header keys.

    F16 bytes at the defaults: embeddings 2 x 32000 x 512 x 2 = 62.5 MiB (31.25 tied), per layer
    (2 x 512 x 512 + 2 x 512 x 128 + 3 x 512 x 1408) x 2 = 5.4 MiB.
    """
    hd = head_dim
    q, kv = n_head * hd, n_head_kv * hd
    tensors = _embeddings(n_embd, n_vocab, tied)
    if norm_bias:
        tensors.append(("output_norm.bias", (n_embd,)))
    for il in range(n_layer):
        b = f"blk.{il}."
        if pre_norms:
            tensors.append((b + "attn_norm.weight", (n_embd,)))
            if norm_bias:
                tensors.append((b + "attn_norm.bias", (n_embd,)))
        if fused_qkv:
            tensors.append((b + "attn_qkv.weight", (n_embd, q + 2 * kv)))
        else:
            tensors += [(b + "attn_q.weight", (n_embd, q)), (b + "attn_k.weight", (n_embd, kv)),
                        (b + "attn_v.weight", (n_embd, kv))]
            if qkv_bias:
                tensors += [(b + "attn_q.bias", (q,)), (b + "attn_k.bias", (kv,)), (b + "attn_v.bias", (kv,))]
        if qk_norm == "head":
            tensors += [(b + "attn_q_norm.weight", (hd,)), (b + "attn_k_norm.weight", (hd,))]
        elif qk_norm == "full":
            tensors += [(b + "attn_q_norm.weight", (q,)), (b + "attn_k_norm.weight", (kv,))]
        tensors.append((b + "attn_output.weight", (q, n_embd)))
        if out_bias:
            tensors.append((b + "attn_output.bias", (n_embd,)))
        if post_norms:
            tensors.append((b + "post_attention_norm.weight", (n_embd,)))
        if pre_norms and ffn_norm:
            tensors.append((b + "ffn_norm.weight", (n_embd,)))
            if norm_bias:
                tensors.append((b + "ffn_norm.bias", (n_embd,)))
        if not gated:
            tensors += [(b + "ffn_up.weight", (n_embd, n_ff)), (b + "ffn_down.weight", (n_ff, n_embd))]
            if out_bias:
                tensors += [(b + "ffn_up.bias", (n_ff,)), (b + "ffn_down.bias", (n_embd,))]
        elif fused_up:
            tensors += [(b + "ffn_up.weight", (n_embd, 2 * n_ff)), (b + "ffn_down.weight", (n_ff, n_embd))]
        else:
            tensors += [(b + "ffn_gate.weight", (n_embd, n_ff)), (b + "ffn_up.weight", (n_embd, n_ff)),
                        (b + "ffn_down.weight", (n_ff, n_embd))]
        if post_norms:
            tensors.append((b + "post_ffw_norm.weight", (n_embd,)))
    all_keys = {"{arch}.rope.dimension_count": hd, "{arch}.attention.key_length": hd,
                "{arch}.attention.value_length": hd, **(keys or {})}
    return _write_loadable(path, arch, n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_head_kv=n_head_kv,
                           n_ff=n_ff, n_vocab=n_vocab, keys=all_keys, tensors=tensors, **opts)


def _family(arch: str, **spec):
    def write(path: Path, **opts) -> Path:
        return write_decoder(path, arch, **{"vocab": "spm", **spec, **opts})
    write.__doc__ = f"{arch}: {spec or 'the common layout'}"
    return write


FAMILIES = {
    "llama": write_llama_dense,
    "qwen3moe": write_qwen3moe,
    "deepseek2": write_deepseek2,
    "glm4moe": write_glm4moe,
    "qwen2": _family("qwen2", qkv_bias=True),
    "qwen3": _family("qwen3", qk_norm="head", tied=True),
    "mistral3": _family("mistral3"),
    "gemma2": _family("gemma2", post_norms=True, tied=True, keys={
        "{arch}.attention.sliding_window": 1024, "{arch}.attn_logit_softcapping": 50.0,
        "{arch}.final_logit_softcapping": 30.0}),
    "phi3": _family("phi3", fused_qkv=True, fused_up=True),
    "granite": _family("granite", keys={
        "{arch}.logit_scale": 8.0, "{arch}.residual_scale": 0.22, "{arch}.embedding_scale": 12.0,
        "{arch}.attention.scale": 0.015625}),
    "cohere2": _family("cohere2", tied=True, ffn_norm=False, keys={
        "{arch}.attention.sliding_window": 1024, "{arch}.logit_scale": 0.25,
        "{arch}.attention.layer_norm_epsilon": 1e-5}),
    "olmo2": _family("olmo2", qk_norm="full", pre_norms=False, post_norms=True),
    "exaone": _family("exaone"),
    "internlm2": _family("internlm2", fused_qkv=True),
    "starcoder2": _family("starcoder2", qkv_bias=True, norm_bias=True, gated=False, out_bias=True,
                          keys={"{arch}.attention.layer_norm_epsilon": 1e-5}),
    "stablelm": _family("stablelm", norm_bias=True, keys={"{arch}.attention.layer_norm_epsilon": 1e-5,
                                                         "{arch}.rope.dimension_count": 16}),
}
"""One synthetic model per arch family that llama.cpp loads and runs: ``FAMILIES[name](path)``."""


def write_gptoss(
    path: Path, *, n_layer: int = 4, n_embd: int = 512, n_head: int = 8, n_head_kv: int = 2, head_dim: int = 64,
    n_expert: int = 16, n_expert_used: int = 4, n_ff_exp: int = 256, n_vocab: int = 32000, n_swa: int = 128,
    **opts,
) -> Path:
    """A gpt-oss (src/models/openai-moe.cpp): attention with sinks and Q/K/V/output biases, every
    other layer sliding over ``n_swa`` tokens, ``post_attention_norm`` before the experts, routed
    experts with biases (``ggml_add_id``), softmax over the chosen experts' weights, untied output.

    F16 bytes: embeddings 2 x 32000 x 512 x 2 = 62.5 MiB; per layer experts 3 x 16 x 256 x 512 x 2
    = 12 MiB, attention 1.25 MiB.
    """
    hd = head_dim
    q, kv = n_head * hd, n_head_kv * hd
    tensors = _embeddings(n_embd, n_vocab, False)
    for il in range(n_layer):
        b = f"blk.{il}."
        tensors += [
            (b + "attn_norm.weight", (n_embd,)), (b + "post_attention_norm.weight", (n_embd,)),
            (b + "attn_q.weight", (n_embd, q)), (b + "attn_k.weight", (n_embd, kv)), (b + "attn_v.weight", (n_embd, kv)),
            (b + "attn_q.bias", (q,)), (b + "attn_k.bias", (kv,)), (b + "attn_v.bias", (kv,)),
            (b + "attn_output.weight", (q, n_embd)), (b + "attn_output.bias", (n_embd,)),
            (b + "attn_sinks.weight", (n_head,)),
            (b + "ffn_gate_inp.weight", (n_embd, n_expert)), (b + "ffn_gate_inp.bias", (n_expert,)),
            (b + "ffn_gate_exps.weight", (n_embd, n_ff_exp, n_expert)),
            (b + "ffn_up_exps.weight", (n_embd, n_ff_exp, n_expert)),
            (b + "ffn_down_exps.weight", (n_ff_exp, n_embd, n_expert)),
            (b + "ffn_gate_exps.bias", (n_ff_exp, n_expert)), (b + "ffn_up_exps.bias", (n_ff_exp, n_expert)),
            (b + "ffn_down_exps.bias", (n_embd, n_expert)),
        ]
    keys = {
        "{arch}.rope.dimension_count": hd, "{arch}.attention.key_length": hd, "{arch}.attention.value_length": hd,
        "{arch}.expert_count": n_expert, "{arch}.expert_used_count": n_expert_used,
        "{arch}.expert_feed_forward_length": n_ff_exp, "{arch}.attention.sliding_window": n_swa,
    }
    return _write_loadable(path, "gpt-oss", n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_head_kv=n_head_kv,
                           n_ff=n_ff_exp, n_vocab=n_vocab, keys=keys, tensors=tensors, **{"vocab": "spm", **opts})


FAMILIES["gpt-oss"] = write_gptoss


def write_llama4(
    path: Path, *, n_layer: int = 4, n_embd: int = 512, n_head: int = 8, n_head_kv: int = 2, head_dim: int = 64,
    n_ff: int = 1408, n_expert: int = 16, n_expert_used: int = 1, n_ff_exp: int = 256, moe_step: int = 2,
    n_vocab: int = 32000, **opts,
) -> Path:
    """A llama4 (src/models/llama4.cpp): chunked attention over 8192 tokens on 3 of every 4
    layers (no ``sliding_window`` key: llama.cpp sets it), no RoPE but a temperature-scaled Q on
    every 4th, weightless Q/K RMS norms, every ``moe_step``-th block an MoE block (sigmoid router,
    one expert, its weight applied to the input, plus a shared expert), the others dense.

    F16 bytes: embeddings 62.5 MiB; dense block 5.4 MiB; MoE block experts 3 x 16 x 256 x 512 x 2
    = 12 MiB + shared 0.75 MiB + attention 1.25 MiB.
    """
    hd = head_dim
    q, kv = n_head * hd, n_head_kv * hd
    tensors = _embeddings(n_embd, n_vocab, False)
    for il in range(n_layer):
        b = f"blk.{il}."
        tensors += [
            (b + "attn_norm.weight", (n_embd,)), (b + "attn_q.weight", (n_embd, q)), (b + "attn_k.weight", (n_embd, kv)),
            (b + "attn_v.weight", (n_embd, kv)), (b + "attn_output.weight", (q, n_embd)), (b + "ffn_norm.weight", (n_embd,)),
        ]
        if (il + 1) % moe_step == 0:
            tensors += [
                (b + "ffn_gate_inp.weight", (n_embd, n_expert)),
                (b + "ffn_gate_exps.weight", (n_embd, n_ff_exp, n_expert)),
                (b + "ffn_up_exps.weight", (n_embd, n_ff_exp, n_expert)),
                (b + "ffn_down_exps.weight", (n_ff_exp, n_embd, n_expert)),
                (b + "ffn_gate_shexp.weight", (n_embd, n_ff_exp)), (b + "ffn_up_shexp.weight", (n_embd, n_ff_exp)),
                (b + "ffn_down_shexp.weight", (n_ff_exp, n_embd)),
            ]
        else:
            tensors += [(b + "ffn_gate.weight", (n_embd, n_ff)), (b + "ffn_up.weight", (n_embd, n_ff)),
                        (b + "ffn_down.weight", (n_ff, n_embd))]
    keys = {
        "{arch}.rope.dimension_count": hd, "{arch}.attention.key_length": hd, "{arch}.attention.value_length": hd,
        "{arch}.expert_count": n_expert, "{arch}.expert_used_count": n_expert_used,
        "{arch}.expert_feed_forward_length": n_ff_exp, "{arch}.interleave_moe_layer_step": moe_step,
    }
    return _write_loadable(path, "llama4", n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_head_kv=n_head_kv,
                           n_ff=n_ff, n_vocab=n_vocab, keys=keys, tensors=tensors, **{"vocab": "spm", **opts})


FAMILIES["llama4"] = write_llama4


def write_mamba2(
    path: Path, *, n_layer: int = 4, n_embd: int = 512, d_inner: int = 1024, d_state: int = 64, n_group: int = 1,
    n_head: int = 16, d_conv: int = 4, n_vocab: int = 32000, **opts,
) -> Path:
    """A mamba2 (src/models/mamba2.cpp, mamba-base.cpp): no attention, a recurrent state per
    sequence instead of a KV cache: conv state ``(d_conv - 1) x (d_inner + 2 n_group d_state)``
    and SSM state ``d_state x d_inner`` F32 per layer (llama-hparams.cpp n_embd_r / n_embd_s).

    F16 bytes: embeddings 62.5 MiB; per layer ssm_in 512 x (2 x 1024 + 128 + 16) x 2 = 2.1 MiB,
    ssm_out 1 MiB.
    """
    conv_dim = d_inner + 2 * n_group * d_state
    tensors = _embeddings(n_embd, n_vocab, False)
    for il in range(n_layer):
        b = f"blk.{il}."
        tensors += [
            (b + "attn_norm.weight", (n_embd,)),
            (b + "ssm_in.weight", (n_embd, d_inner + conv_dim + n_head)),
            (b + "ssm_conv1d.weight", (d_conv, conv_dim)), (b + "ssm_conv1d.bias", (conv_dim,)),
            (b + "ssm_dt.bias", (n_head,)), (b + "ssm_a", (1, n_head)), (b + "ssm_d", (1, n_head)),
            (b + "ssm_norm.weight", (d_inner // n_group, n_group)), (b + "ssm_out.weight", (d_inner, n_embd)),
        ]
    keys = {
        "{arch}.ssm.conv_kernel": d_conv, "{arch}.ssm.inner_size": d_inner, "{arch}.ssm.state_size": d_state,
        "{arch}.ssm.time_step_rank": n_head, "{arch}.ssm.group_count": n_group,
    }
    return _write_loadable(path, "mamba2", n_layer=n_layer, n_embd=n_embd, n_head=0, n_head_kv=0, n_ff=0,
                           n_vocab=n_vocab, keys=keys, tensors=tensors, **{"vocab": "spm", **opts})


FAMILIES["mamba2"] = write_mamba2


def write_mamba(
    path: Path, *, n_layer: int = 4, n_embd: int = 512, d_inner: int = 1024, d_state: int = 16, dt_rank: int = 32,
    d_conv: int = 4, dt_b_c_rms: bool = True, n_vocab: int = 32000, **opts,
) -> Path:
    """A Mamba-1 (src/models/mamba.cpp ``build_mamba_layer``), falcon-mamba's way by default
    (``ssm.dt_b_c_rms``: dt, B and C RMS-normed): a conv state ``(d_conv - 1) x d_inner`` and an
    SSM state ``d_state x d_inner`` F32 per layer and sequence (llama-hparams.cpp n_embd_r / n_embd_s).

    F16 bytes: embeddings 62.5 MiB; per layer ssm_in 512 x 2048 x 2 = 2 MiB, ssm_out 1 MiB,
    ssm_x 1024 x 64 x 2 = 128 KiB, ssm_dt 32 x 1024 x 2 = 64 KiB.
    """
    tensors = _embeddings(n_embd, n_vocab, False)
    for il in range(n_layer):
        b = f"blk.{il}."
        tensors += [
            (b + "attn_norm.weight", (n_embd,)), (b + "ssm_in.weight", (n_embd, 2 * d_inner)),
            (b + "ssm_conv1d.weight", (d_conv, d_inner)), (b + "ssm_conv1d.bias", (d_inner,)),
            (b + "ssm_x.weight", (d_inner, dt_rank + 2 * d_state)), (b + "ssm_dt.weight", (dt_rank, d_inner)),
            (b + "ssm_dt.bias", (d_inner,)), (b + "ssm_a", (d_state, d_inner)), (b + "ssm_d", (d_inner,)),
            (b + "ssm_out.weight", (d_inner, n_embd)),
        ]
    keys = {
        "{arch}.ssm.conv_kernel": d_conv, "{arch}.ssm.inner_size": d_inner, "{arch}.ssm.state_size": d_state,
        "{arch}.ssm.time_step_rank": dt_rank, "{arch}.ssm.dt_b_c_rms": dt_b_c_rms,
    }
    return _write_loadable(path, "mamba", n_layer=n_layer, n_embd=n_embd, n_head=0, n_head_kv=0, n_ff=0,
                           n_vocab=n_vocab, keys=keys, tensors=tensors, **{"vocab": "spm", **opts})


FAMILIES["mamba"] = write_mamba


def write_jamba(
    path: Path, *, n_embd: int = 512, n_head: int = 8, kv_heads: tuple[int, ...] = (0, 0, 2, 0), head_dim: int = 64,
    n_ff: int = 512, d_inner: int = 1024, d_state: int = 16, dt_rank: int = 32, d_conv: int = 4,
    n_expert: int = 16, n_expert_used: int = 2, n_vocab: int = 32000, **opts,
) -> Path:
    """A jamba (src/models/jamba.cpp): Mamba-1 blocks with dt/B/C norm tensors where
    ``head_count_kv`` is 0, attention without RoPE elsewhere; odd blocks routed SwiGLU experts,
    even blocks a dense FFN, both ``n_ff`` wide (``load_arch_tensors`` sizes the experts by n_ff)."""
    hd = head_dim
    tensors = _embeddings(n_embd, n_vocab, False)
    for il, h_kv in enumerate(kv_heads):
        b = f"blk.{il}."
        tensors += [(b + "attn_norm.weight", (n_embd,)), (b + "ffn_norm.weight", (n_embd,))]
        if h_kv:
            tensors += [(b + "attn_q.weight", (n_embd, n_head * hd)), (b + "attn_k.weight", (n_embd, h_kv * hd)),
                        (b + "attn_v.weight", (n_embd, h_kv * hd)), (b + "attn_output.weight", (n_head * hd, n_embd))]
        else:
            tensors += [
                (b + "ssm_in.weight", (n_embd, 2 * d_inner)), (b + "ssm_conv1d.weight", (d_conv, d_inner)),
                (b + "ssm_conv1d.bias", (d_inner,)), (b + "ssm_x.weight", (d_inner, dt_rank + 2 * d_state)),
                (b + "ssm_dt_norm.weight", (dt_rank,)), (b + "ssm_dt.weight", (dt_rank, d_inner)),
                (b + "ssm_dt.bias", (d_inner,)), (b + "ssm_b_norm.weight", (d_state,)),
                (b + "ssm_c_norm.weight", (d_state,)), (b + "ssm_a", (d_state, d_inner)), (b + "ssm_d", (d_inner,)),
                (b + "ssm_out.weight", (d_inner, n_embd)),
            ]
        if il % 2:
            tensors += [(b + "ffn_gate_inp.weight", (n_embd, n_expert)),
                        (b + "ffn_gate_exps.weight", (n_embd, n_ff, n_expert)),
                        (b + "ffn_up_exps.weight", (n_embd, n_ff, n_expert)),
                        (b + "ffn_down_exps.weight", (n_ff, n_embd, n_expert))]
        else:
            tensors += [(b + "ffn_gate.weight", (n_embd, n_ff)), (b + "ffn_up.weight", (n_embd, n_ff)),
                        (b + "ffn_down.weight", (n_ff, n_embd))]
    keys = {
        "{arch}.attention.key_length": hd, "{arch}.attention.value_length": hd,
        "{arch}.ssm.conv_kernel": d_conv, "{arch}.ssm.inner_size": d_inner, "{arch}.ssm.state_size": d_state,
        "{arch}.ssm.time_step_rank": dt_rank, "{arch}.expert_count": n_expert,
        "{arch}.expert_used_count": n_expert_used,
    }
    return _write_loadable(path, "jamba", n_layer=len(kv_heads), n_embd=n_embd, n_head=n_head,
                           n_head_kv=list(kv_heads), n_ff=n_ff, n_vocab=n_vocab, keys=keys, tensors=tensors,
                           **{"vocab": "spm", **opts})


FAMILIES["jamba"] = write_jamba


def write_lfm2(
    path: Path, *, n_embd: int = 512, n_head: int = 8, kv_heads: tuple[int, ...] = (0, 0, 2, 0, 2, 0),
    head_dim: int = 64, n_ff: int = 1408, l_cache: int = 3, n_vocab: int = 32000, arch: str = "lfm2",
    n_expert: int = 0, n_expert_used: int = 4, n_ff_exp: int = 256, n_dense: int = 2, **opts,
) -> Path:
    """An LFM2 (src/models/lfm2.cpp): a hybrid of short-convolution blocks (``head_count_kv`` 0:
    a conv state of ``n_embd x (l_cache - 1)`` F32 per sequence) and attention blocks with Q/K
    norms, every block a dense SwiGLU FFN, the output norm named ``token_embd_norm``, tied output.
    With ``arch="lfm2moe"`` and ``n_expert`` (LFM2-8B-A1B's shape, src/models/lfm2moe.cpp): the
    blocks after the first ``n_dense`` have routed SwiGLU experts (sigmoid router, ``exp_probs_b``).
    """
    hd = head_dim
    tensors = [("token_embd.weight", (n_embd, n_vocab)), ("token_embd_norm.weight", (n_embd,))]
    for il, h_kv in enumerate(kv_heads):
        b = f"blk.{il}."
        tensors += [(b + "attn_norm.weight", (n_embd,)), (b + "ffn_norm.weight", (n_embd,))]
        if n_expert and il >= n_dense:
            tensors += [(b + "ffn_gate_inp.weight", (n_embd, n_expert)), (b + "exp_probs_b.bias", (n_expert,)),
                        (b + "ffn_gate_exps.weight", (n_embd, n_ff_exp, n_expert)),
                        (b + "ffn_up_exps.weight", (n_embd, n_ff_exp, n_expert)),
                        (b + "ffn_down_exps.weight", (n_ff_exp, n_embd, n_expert))]
        else:
            tensors += [(b + "ffn_gate.weight", (n_embd, n_ff)), (b + "ffn_up.weight", (n_embd, n_ff)),
                        (b + "ffn_down.weight", (n_ff, n_embd))]
        if h_kv:
            tensors += [(b + "attn_q.weight", (n_embd, n_head * hd)), (b + "attn_k.weight", (n_embd, h_kv * hd)),
                        (b + "attn_v.weight", (n_embd, h_kv * hd)), (b + "attn_output.weight", (n_head * hd, n_embd)),
                        (b + "attn_q_norm.weight", (hd,)), (b + "attn_k_norm.weight", (hd,))]
        else:
            tensors += [(b + "shortconv.conv.weight", (l_cache, n_embd)),
                        (b + "shortconv.in_proj.weight", (n_embd, 3 * n_embd)),
                        (b + "shortconv.out_proj.weight", (n_embd, n_embd))]
    keys = {"{arch}.rope.dimension_count": hd, "{arch}.attention.key_length": hd,
            "{arch}.attention.value_length": hd, "{arch}.shortconv.l_cache": l_cache}
    if n_expert:
        keys.update({"{arch}.expert_count": n_expert, "{arch}.expert_used_count": n_expert_used,
                     "{arch}.expert_feed_forward_length": n_ff_exp, "{arch}.expert_gating_func": 2,
                     "{arch}.leading_dense_block_count": n_dense})
    return _write_loadable(path, arch, n_layer=len(kv_heads), n_embd=n_embd, n_head=n_head,
                           n_head_kv=list(kv_heads), n_ff=n_ff, n_vocab=n_vocab, keys=keys, tensors=tensors,
                           **{"vocab": "spm", **opts})


FAMILIES["lfm2"] = write_lfm2


def write_lfm2moe(path: Path, *, n_expert: int = 16, **opts) -> Path:
    """An lfm2moe (``write_lfm2`` with experts after the first two blocks)."""
    return write_lfm2(path, arch="lfm2moe", n_expert=n_expert, **opts)


FAMILIES["lfm2moe"] = write_lfm2moe


def write_granitehybrid(
    path: Path, *, n_embd: int = 512, n_head: int = 8, kv_heads: tuple[int, ...] = (0, 0, 2, 0), head_dim: int = 64,
    n_ff: int = 1408, d_state: int = 64, n_group: int = 1, n_ssm_head: int = 16, d_conv: int = 4,
    n_vocab: int = 32000, n_expert: int = 0, n_expert_used: int = 4, n_ff_shexp: int = 512, **opts,
) -> Path:
    """A granitehybrid (src/models/granite-hybrid.cpp, dense): mamba2 blocks where
    ``head_count_kv`` is 0 (d_inner = 2 x n_embd), attention blocks elsewhere, a SwiGLU FFN in
    every block, granite's scales. With ``n_expert`` (Granite-4.0-H-Tiny's shape) every block's
    FFN is routed experts of ``n_ff`` rows (softmax router) plus a shared SwiGLU expert."""
    d_inner = 2 * n_embd
    conv_dim = d_inner + 2 * n_group * d_state
    hd = head_dim
    tensors = _embeddings(n_embd, n_vocab, False)
    for il, h_kv in enumerate(kv_heads):
        b = f"blk.{il}."
        tensors += [(b + "attn_norm.weight", (n_embd,)), (b + "ffn_norm.weight", (n_embd,))]
        if n_expert:
            tensors += [(b + "ffn_gate_inp.weight", (n_embd, n_expert)),
                        (b + "ffn_gate_exps.weight", (n_embd, n_ff, n_expert)),
                        (b + "ffn_up_exps.weight", (n_embd, n_ff, n_expert)),
                        (b + "ffn_down_exps.weight", (n_ff, n_embd, n_expert)),
                        (b + "ffn_gate_shexp.weight", (n_embd, n_ff_shexp)),
                        (b + "ffn_up_shexp.weight", (n_embd, n_ff_shexp)),
                        (b + "ffn_down_shexp.weight", (n_ff_shexp, n_embd))]
        else:
            tensors += [(b + "ffn_gate.weight", (n_embd, n_ff)), (b + "ffn_up.weight", (n_embd, n_ff)),
                        (b + "ffn_down.weight", (n_ff, n_embd))]
        if h_kv:
            tensors += [(b + "attn_q.weight", (n_embd, n_head * hd)), (b + "attn_k.weight", (n_embd, h_kv * hd)),
                        (b + "attn_v.weight", (n_embd, h_kv * hd)), (b + "attn_output.weight", (n_head * hd, n_embd))]
        else:
            tensors += [
                (b + "ssm_in.weight", (n_embd, d_inner + conv_dim + n_ssm_head)),
                (b + "ssm_conv1d.weight", (d_conv, conv_dim)), (b + "ssm_conv1d.bias", (conv_dim,)),
                (b + "ssm_dt.bias", (n_ssm_head,)), (b + "ssm_a", (1, n_ssm_head)), (b + "ssm_d", (1, n_ssm_head)),
                (b + "ssm_norm.weight", (d_inner // n_group, n_group)), (b + "ssm_out.weight", (d_inner, n_embd)),
            ]
    keys = {
        "{arch}.rope.dimension_count": hd, "{arch}.attention.key_length": hd, "{arch}.attention.value_length": hd,
        "{arch}.ssm.conv_kernel": d_conv, "{arch}.ssm.inner_size": d_inner, "{arch}.ssm.state_size": d_state,
        "{arch}.ssm.time_step_rank": n_ssm_head, "{arch}.ssm.group_count": n_group,
        "{arch}.logit_scale": 8.0, "{arch}.residual_scale": 0.22, "{arch}.embedding_scale": 12.0,
        "{arch}.attention.scale": 0.015625,
    }
    if n_expert:
        keys.update({"{arch}.expert_count": n_expert, "{arch}.expert_used_count": n_expert_used,
                     "{arch}.expert_shared_feed_forward_length": n_ff_shexp})
    return _write_loadable(path, "granitehybrid", n_layer=len(kv_heads), n_embd=n_embd, n_head=n_head,
                           n_head_kv=list(kv_heads), n_ff=n_ff, n_vocab=n_vocab, keys=keys, tensors=tensors,
                           **{"vocab": "spm", **opts})


FAMILIES["granitehybrid"] = write_granitehybrid


def write_granitehybrid_moe(path: Path, *, n_expert: int = 16, n_ff: int = 256, **opts) -> Path:
    """A granitehybrid with routed and shared experts in every block (``write_granitehybrid``)."""
    return write_granitehybrid(path, n_expert=n_expert, n_ff=n_ff, **opts)


FAMILIES["granitehybrid_moe"] = write_granitehybrid_moe


def write_nemotron_h(
    path: Path, *, n_embd: int = 512, n_head: int = 8, kinds: str = "MFAFMF", head_dim: int = 64, n_ff: int = 1408,
    d_inner: int = 1024, d_state: int = 64, n_group: int = 1, n_ssm_head: int = 16, d_conv: int = 4,
    n_vocab: int = 32000, arch: str = "nemotron_h", n_expert: int = 16, n_expert_used: int = 4,
    n_ff_exp: int = 256, n_ff_shexp: int = 512, **opts,
) -> Path:
    """A nemotron_h (src/models/nemotron-h.cpp): blocks of three kinds, ``kinds`` one letter
    each: M a Mamba-2 block (no KV heads, no FFN: recurrent), A attention only (KV heads, no FFN),
    F an MLP only (ffn_up / ffn_down, squared ReLU). Per-block ``head_count_kv`` and
    ``feed_forward_length`` arrays say which. With ``arch="nemotron_h_moe"`` a fourth kind, E:
    routed experts without a gate (squared ReLU, sigmoid router with ``exp_probs_b``,
    renormalised and scaled weights) plus a shared expert (``load_arch_tensors``'s MoE branch)."""
    conv_dim = d_inner + 2 * n_group * d_state
    hd = head_dim
    tensors = _embeddings(n_embd, n_vocab, False)
    kv_heads, ffs = [], []
    for il, kind in enumerate(kinds):
        b = f"blk.{il}."
        tensors.append((b + "attn_norm.weight", (n_embd,)))
        kv_heads.append(2 if kind == "A" else 0)
        ffs.append(n_ff if kind in "FE" else 0)
        if kind == "E":
            tensors += [
                (b + "ffn_gate_inp.weight", (n_embd, n_expert)), (b + "exp_probs_b.bias", (n_expert,)),
                (b + "ffn_up_exps.weight", (n_embd, n_ff_exp, n_expert)),
                (b + "ffn_down_exps.weight", (n_ff_exp, n_embd, n_expert)),
                (b + "ffn_up_shexp.weight", (n_embd, n_ff_shexp)), (b + "ffn_down_shexp.weight", (n_ff_shexp, n_embd)),
            ]
            continue
        if kind == "M":
            tensors += [
                (b + "ssm_in.weight", (n_embd, d_inner + conv_dim + n_ssm_head)),
                (b + "ssm_conv1d.weight", (d_conv, conv_dim)), (b + "ssm_conv1d.bias", (conv_dim,)),
                (b + "ssm_dt.bias", (n_ssm_head,)), (b + "ssm_a", (1, n_ssm_head)), (b + "ssm_d", (1, n_ssm_head)),
                (b + "ssm_norm.weight", (d_inner // n_group, n_group)), (b + "ssm_out.weight", (d_inner, n_embd)),
            ]
        elif kind == "A":
            tensors += [(b + "attn_q.weight", (n_embd, n_head * hd)), (b + "attn_k.weight", (n_embd, 2 * hd)),
                        (b + "attn_v.weight", (n_embd, 2 * hd)), (b + "attn_output.weight", (n_head * hd, n_embd))]
        else:
            tensors += [(b + "ffn_up.weight", (n_embd, n_ff)), (b + "ffn_down.weight", (n_ff, n_embd))]
    keys = {
        "{arch}.rope.dimension_count": hd, "{arch}.attention.key_length": hd, "{arch}.attention.value_length": hd,
        "{arch}.ssm.conv_kernel": d_conv, "{arch}.ssm.inner_size": d_inner, "{arch}.ssm.state_size": d_state,
        "{arch}.ssm.time_step_rank": n_ssm_head, "{arch}.ssm.group_count": n_group,
        "{arch}.attention.layer_norm_epsilon": 1e-5, "{arch}.feed_forward_length": ffs,
    }
    if "E" in kinds:
        keys.update({"{arch}.expert_count": n_expert, "{arch}.expert_used_count": n_expert_used,
                     "{arch}.expert_feed_forward_length": n_ff_exp,
                     "{arch}.expert_shared_feed_forward_length": n_ff_shexp, "{arch}.expert_shared_count": 1,
                     "{arch}.expert_weights_norm": True, "{arch}.expert_weights_scale": 2.5})
    return _write_loadable(path, arch, n_layer=len(kinds), n_embd=n_embd, n_head=n_head,
                           n_head_kv=kv_heads, n_ff=0, n_vocab=n_vocab, keys=keys, tensors=tensors,
                           **{"vocab": "spm", **opts})


FAMILIES["nemotron_h"] = write_nemotron_h


def write_nemotron_h_moe(path: Path, *, kinds: str = "MEAEME", **opts) -> Path:
    """A nemotron_h_moe (Nemotron-3 Nano's layout, src/models/nemotron-h-moe.cpp runs nemotron-h's
    graph): Mamba-2, expert and attention blocks (``write_nemotron_h`` kinds M, E, A)."""
    return write_nemotron_h(path, kinds=kinds, arch="nemotron_h_moe", **opts)


FAMILIES["nemotron_h_moe"] = write_nemotron_h_moe


def write_falcon_h1(
    path: Path, *, n_layer: int = 4, n_embd: int = 512, n_head: int = 8, n_head_kv: int = 2, head_dim: int = 64,
    n_ff: int = 1408, d_inner: int = 1024, d_state: int = 64, n_group: int = 1, n_ssm_head: int = 16,
    d_conv: int = 4, n_vocab: int = 32000, **opts,
) -> Path:
    """A falcon-h1 (src/models/falcon-h1.cpp): every block runs attention (RoPE) and a Mamba-2
    mixer side by side on the same normed input, sums them into the residual, then a SwiGLU FFN
    after ``ffn_norm`` (named without ``.weight``, as ``load_arch_tensors`` asks). Every layer keeps
    a KV cache and a recurrent state (llama-model.cpp ``create_memory``: both filters true).

    F16 bytes: embeddings 2 x 32000 x 512 x 2 = 62.5 MiB; per layer ssm_in 512 x (2 x 1024 + 128
    + 16) x 2 = 2.1 MiB, ssm_out 1 MiB, attention 1.25 MiB, FFN 3 x 512 x 1408 x 2 = 4.1 MiB.
    """
    conv_dim = d_inner + 2 * n_group * d_state
    hd = head_dim
    tensors = _embeddings(n_embd, n_vocab, False)
    for il in range(n_layer):
        b = f"blk.{il}."
        tensors += [
            (b + "attn_norm.weight", (n_embd,)), (b + "ffn_norm", (n_embd,)),
            (b + "attn_q.weight", (n_embd, n_head * hd)), (b + "attn_k.weight", (n_embd, n_head_kv * hd)),
            (b + "attn_v.weight", (n_embd, n_head_kv * hd)), (b + "attn_output.weight", (n_head * hd, n_embd)),
            (b + "ssm_in.weight", (n_embd, d_inner + conv_dim + n_ssm_head)),
            (b + "ssm_conv1d.weight", (d_conv, conv_dim)), (b + "ssm_conv1d.bias", (conv_dim,)),
            (b + "ssm_dt.bias", (n_ssm_head,)), (b + "ssm_a", (1, n_ssm_head)), (b + "ssm_d", (1, n_ssm_head)),
            (b + "ssm_norm.weight", (d_inner // n_group, n_group)), (b + "ssm_out.weight", (d_inner, n_embd)),
            (b + "ffn_gate.weight", (n_embd, n_ff)), (b + "ffn_up.weight", (n_embd, n_ff)),
            (b + "ffn_down.weight", (n_ff, n_embd)),
        ]
    keys = {
        "{arch}.rope.dimension_count": hd, "{arch}.attention.key_length": hd, "{arch}.attention.value_length": hd,
        "{arch}.ssm.conv_kernel": d_conv, "{arch}.ssm.inner_size": d_inner, "{arch}.ssm.state_size": d_state,
        "{arch}.ssm.time_step_rank": n_ssm_head, "{arch}.ssm.group_count": n_group,
    }
    return _write_loadable(path, "falcon-h1", n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_head_kv=n_head_kv,
                           n_ff=n_ff, n_vocab=n_vocab, keys=keys, tensors=tensors, **{"vocab": "spm", **opts})


FAMILIES["falcon-h1"] = write_falcon_h1


def write_qwen3next(
    path: Path, *, n_layer: int = 4, n_nextn: int = 0, full_attn_interval: int = 2, n_embd: int = 512,
    n_head: int = 8, n_head_kv: int = 2, head_dim: int = 64, d_state: int = 64, n_k_heads: int = 4,
    n_v_heads: int = 8, d_conv: int = 4, n_expert: int = 16, n_expert_used: int = 4, n_ff_exp: int = 256,
    n_ff_shexp: int = 256, n_vocab: int = 32000, **opts,
) -> Path:
    """A qwen3next (src/models/qwen3next.cpp ``load_arch_tensors``): blocks ``il`` with
    ``(il + 1) % full_attn_interval != 0`` are gated delta-net linear attention (``attn_qkv`` of
    ``2 key_dim + value_dim``, ``attn_gate``, ``ssm_conv1d``, ``ssm_dt``, ``ssm_a``, ``ssm_ba``,
    ``ssm_norm``, ``ssm_out``; key_dim = ``d_state x n_k_heads`` = 256, value_dim = ``d_state x
    n_v_heads`` = 512, so ``ssm.inner_size`` = 512), the others gated full attention (``attn_q``
    of ``2 x n_head x head_dim``: query and gate, Q/K norms); every block ``post_attention_norm``
    then 16 softmax-routed experts plus a sigmoid-gated shared expert; ``n_nextn`` MTP blocks
    (a full-attention block plus ``nextn.*``) after the trunk.

    F16 bytes: embeddings 2 x 32000 x 512 x 2 = 62.5 MiB; per block experts 3 x 16 x 256 x 512 x 2
    = 12 MiB, shared expert 0.75 MiB; linear attention (1024 + 512 + 16 + 512) x 512 x 2 = 2 MiB,
    full attention (1024 + 256 + 512) x 512 x 2 = 1.75 MiB.
    """
    hd = head_dim
    key_dim, value_dim = d_state * n_k_heads, d_state * n_v_heads
    tensors = _embeddings(n_embd, n_vocab, False)
    for il in range(n_layer + n_nextn):
        b = f"blk.{il}."
        tensors += [(b + "attn_norm.weight", (n_embd,)), (b + "post_attention_norm.weight", (n_embd,))]
        if il < n_layer and (il + 1) % full_attn_interval != 0:
            tensors += [
                (b + "attn_qkv.weight", (n_embd, 2 * key_dim + value_dim)), (b + "attn_gate.weight", (n_embd, value_dim)),
                (b + "ssm_conv1d.weight", (d_conv, 2 * key_dim + value_dim)), (b + "ssm_dt.bias", (n_v_heads,)),
                (b + "ssm_a", (n_v_heads,)), (b + "ssm_ba.weight", (n_embd, 2 * n_v_heads)),
                (b + "ssm_norm.weight", (d_state,)), (b + "ssm_out.weight", (value_dim, n_embd)),
            ]
        else:
            tensors += [
                (b + "attn_q.weight", (n_embd, 2 * n_head * hd)), (b + "attn_k.weight", (n_embd, n_head_kv * hd)),
                (b + "attn_v.weight", (n_embd, n_head_kv * hd)), (b + "attn_output.weight", (n_head * hd, n_embd)),
                (b + "attn_q_norm.weight", (hd,)), (b + "attn_k_norm.weight", (hd,)),
            ]
        tensors += [
            (b + "ffn_gate_inp.weight", (n_embd, n_expert)),
            (b + "ffn_gate_exps.weight", (n_embd, n_ff_exp, n_expert)),
            (b + "ffn_up_exps.weight", (n_embd, n_ff_exp, n_expert)),
            (b + "ffn_down_exps.weight", (n_ff_exp, n_embd, n_expert)),
            (b + "ffn_gate_inp_shexp.weight", (n_embd,)),
            (b + "ffn_gate_shexp.weight", (n_embd, n_ff_shexp)), (b + "ffn_up_shexp.weight", (n_embd, n_ff_shexp)),
            (b + "ffn_down_shexp.weight", (n_ff_shexp, n_embd)),
        ]
        if il >= n_layer:
            tensors += [(b + "nextn.eh_proj.weight", (2 * n_embd, n_embd)), (b + "nextn.enorm.weight", (n_embd,)),
                        (b + "nextn.hnorm.weight", (n_embd,)), (b + "nextn.shared_head_norm.weight", (n_embd,))]
    keys = {
        "{arch}.rope.dimension_count": hd // 4, "{arch}.attention.key_length": hd, "{arch}.attention.value_length": hd,
        "{arch}.expert_count": n_expert, "{arch}.expert_used_count": n_expert_used,
        "{arch}.expert_feed_forward_length": n_ff_exp, "{arch}.expert_shared_feed_forward_length": n_ff_shexp,
        "{arch}.ssm.conv_kernel": d_conv, "{arch}.ssm.inner_size": value_dim, "{arch}.ssm.state_size": d_state,
        "{arch}.ssm.time_step_rank": n_v_heads, "{arch}.ssm.group_count": n_k_heads,
        "{arch}.full_attention_interval": full_attn_interval,
    }
    if n_nextn:
        keys["{arch}.nextn_predict_layers"] = n_nextn
    return _write_loadable(path, "qwen3next", n_layer=n_layer + n_nextn, n_embd=n_embd, n_head=n_head,
                           n_head_kv=n_head_kv, n_ff=n_ff_exp, n_vocab=n_vocab, keys=keys, tensors=tensors,
                           **{"vocab": "spm", **opts})


FAMILIES["qwen3next"] = write_qwen3next


def write_gemma3_mmproj(
    path: Path, *, n_embd_text: int = 576, n_embd: int = 64, n_head: int = 4, n_ff: int = 128, n_layer: int = 2,
    image_size: int = 448, patch_size: int = 14, n_merge: int = 4, matrix_type: str = "F16",
    proj_type: str = "gemma3",
) -> Path:
    """A gemma3 vision projector (``clip`` arch, ``clip.projector_type = gemma3``) that llama.cpp's
    clip loader accepts beside a text model of ``n_embd_text`` (SmolLM2: 576): a SigLIP tower of
    ``n_layer`` blocks (layer norms with biases, Q/K/V/out with biases, a GELU MLP), the post
    layer norm, then gemma3's projector (``tools/mtmd/models/siglip.cpp``: avg-pool by
    ``n_merge``, RMS norm times ``mm.soft_emb_norm``, ``mm.input_projection``).

    448 / 14 = 32 x 32 = 1024 patches; pooled by 4: 8 x 8 = 64 image tokens. F16 matrices:
    patch kernel 14 x 14 x 3 x 64 x 2 = 73.5 KiB, per block 4 x 64^2 x 2 + 2 x 64 x 128 x 2 =
    64 KiB, projection 576 x 64 x 2 = 72 KiB; F32 position embeddings 64 x 1024 x 4 = 256 KiB.

    ``proj_type="idefics3"`` (SmolVLM): the same tower, then a pixel shuffle by ``n_merge`` and one
    matrix ``mm.model.fc`` of ``n_embd * n_merge^2`` x ``n_embd_text``. ``proj_type="mlp"`` (LLaVA-1.5):
    a CLIP tower (class embedding, pre layer norm, no patch bias, quick GELU, no post norm; the last
    block is not run: the feature layer is the second to last), then ``mm.0`` (``n_ff`` wide), GELU, ``mm.2``.
    """
    qtype = GGMLQuantizationType[matrix_type]
    n_patches = (image_size // patch_size) ** 2
    w = GGUFWriter(str(path), "clip")
    w.add_string("clip.projector_type", proj_type)
    w.add_bool("clip.has_vision_encoder", True)
    w.add_bool("clip.use_gelu", proj_type not in ("mlp", "pixtral"))
    if proj_type == "pixtral":
        w.add_bool("clip.use_silu", True)
        if n_merge > 1:
            w.add_uint32("clip.vision.spatial_merge_size", n_merge)
    w.add_uint32("clip.vision.embedding_length", n_embd)
    w.add_uint32("clip.vision.feed_forward_length", n_ff)
    w.add_uint32("clip.vision.block_count", n_layer)
    w.add_uint32("clip.vision.projection_dim", n_embd_text)
    w.add_uint32("clip.vision.attention.head_count", n_head)
    w.add_float32("clip.vision.attention.layer_norm_epsilon", 1e-6)
    w.add_uint32("clip.vision.image_size", image_size)
    w.add_uint32("clip.vision.patch_size", patch_size)
    w.add_uint32("clip.vision.projector.scale_factor", n_merge)
    w.add_array("clip.vision.image_mean", [0.5, 0.5, 0.5])
    w.add_array("clip.vision.image_std", [0.5, 0.5, 0.5])
    w.add_file_type(_FILE_TYPES.get(matrix_type, 1))
    tensors: list[tuple[str, tuple[int, ...]]] = [("v.patch_embd.weight", (patch_size, patch_size, 3, n_embd))]
    if proj_type == "mlp":
        tensors += [("v.class_embd", (n_embd,)), ("v.position_embd.weight", (n_embd, n_patches + 1)),
                    ("v.pre_ln.weight", (n_embd,)), ("v.pre_ln.bias", (n_embd,))]
    elif proj_type == "pixtral":
        tensors += [("v.pre_ln.weight", (n_embd,))]
    else:
        tensors += [("v.patch_embd.bias", (n_embd,)), ("v.position_embd.weight", (n_embd, n_patches))]
    for il in range(n_layer):
        b = f"v.blk.{il}."
        if proj_type == "pixtral":  # no biases, RMS norms, a SwiGLU FFN
            tensors += [(b + stem + ".weight", (n_embd, n_embd)) for stem in ("attn_q", "attn_k", "attn_v", "attn_out")]
            tensors += [(b + "ln1.weight", (n_embd,)), (b + "ln2.weight", (n_embd,)),
                        (b + "ffn_gate.weight", (n_embd, n_ff)), (b + "ffn_up.weight", (n_embd, n_ff)),
                        (b + "ffn_down.weight", (n_ff, n_embd))]
            continue
        for stem in ("attn_q", "attn_k", "attn_v", "attn_out"):
            tensors += [(b + stem + ".weight", (n_embd, n_embd)), (b + stem + ".bias", (n_embd,))]
        tensors += [
            (b + "ln1.weight", (n_embd,)), (b + "ln1.bias", (n_embd,)),
            (b + "ln2.weight", (n_embd,)), (b + "ln2.bias", (n_embd,)),
            (b + "ffn_up.weight", (n_embd, n_ff)), (b + "ffn_up.bias", (n_ff,)),
            (b + "ffn_down.weight", (n_ff, n_embd)), (b + "ffn_down.bias", (n_embd,)),
        ]
    if proj_type == "mlp":
        tensors += [("mm.0.weight", (n_embd, n_ff)), ("mm.0.bias", (n_ff,)),
                    ("mm.2.weight", (n_ff, n_embd_text)), ("mm.2.bias", (n_embd_text,))]
    elif proj_type == "pixtral":
        if n_merge > 1:  # Mistral-Small-3.1's patch merger
            tensors += [("mm.input_norm.weight", (n_embd,)), ("mm.patch_merger.weight", (n_embd * n_merge * n_merge, n_embd))]
        tensors += [("mm.1.weight", (n_embd, n_ff)), ("mm.1.bias", (n_ff,)), ("mm.2.weight", (n_ff, n_embd_text)),
                    ("mm.2.bias", (n_embd_text,)), ("v.token_embd.img_break", (n_embd_text,))]
    else:
        tensors += [("v.post_ln.weight", (n_embd,)), ("v.post_ln.bias", (n_embd,))]
    if proj_type == "idefics3":
        tensors += [("mm.model.fc.weight", (n_embd * n_merge * n_merge, n_embd_text))]
    elif proj_type == "gemma3":
        tensors += [("mm.input_projection.weight", (n_embd_text, n_embd)), ("mm.soft_emb_norm.weight", (n_embd,))]
    for name, ne in tensors:
        matrix = len(ne) > 1 and name != "v.position_embd.weight"
        typ = qtype if matrix and ne[0] % GGML_QUANT_SIZES[qtype][0] == 0 else (
            GGMLQuantizationType.F16 if matrix else GGMLQuantizationType.F32)
        if typ in (GGMLQuantizationType.F32, GGMLQuantizationType.F16):
            w.add_tensor(name, np.zeros(tuple(reversed(ne)), dtype=np.float32 if typ == GGMLQuantizationType.F32 else np.float16))
        else:
            block, size = GGML_QUANT_SIZES[typ]
            w.add_tensor(name, np.zeros((*reversed(ne[1:]), ne[0] // block * size), dtype=np.uint8), raw_dtype=typ)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
