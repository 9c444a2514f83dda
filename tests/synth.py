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
from gguf import GGUFWriter
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
                    n_ff: int, n_vocab: int, keys: dict, tensors: list[tuple[str, tuple[int, ...]]]) -> Path:
    """Header with the common keys plus ``keys``; ``tensors`` in ggml ne order: norms and biases
    (1-d) F32, matrices F16, all zeros (llama.cpp never looks at the values to size memory)."""
    w = GGUFWriter(str(path), arch)
    w.add_block_count(n_layer)
    w.add_context_length(32768)
    w.add_embedding_length(n_embd)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(10000.0)
    w.add_file_type(1)  # MOSTLY_F16
    w.add_tokenizer_model("no_vocab")
    w.add_vocab_size(n_vocab)
    for key, value in keys.items():
        key = key.format(arch=arch)
        if isinstance(value, bool):
            w.add_bool(key, value)
        elif isinstance(value, int):
            w.add_uint32(key, value)
        else:
            w.add_float32(key, float(value))
    for name, ne in tensors:
        dtype = np.float32 if len(ne) == 1 else np.float16
        w.add_tensor(name, np.zeros(tuple(reversed(ne)), dtype=dtype))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _embeddings(n_embd: int, n_vocab: int, tied: bool) -> list[tuple[str, tuple[int, ...]]]:
    out = [("token_embd.weight", (n_embd, n_vocab)), ("output_norm.weight", (n_embd,))]
    if not tied:
        out.append(("output.weight", (n_embd, n_vocab)))
    return out


def write_llama_dense(
    path: Path, *, n_layer: int = 4, n_embd: int = 512, n_head: int = 8, n_head_kv: int = 2,
    n_ff: int = 1408, n_vocab: int = 32000, tied: bool = False,
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
                           n_ff=n_ff, n_vocab=n_vocab, keys=keys, tensors=tensors)


def write_qwen3moe(
    path: Path, *, n_layer: int = 4, n_embd: int = 512, n_head: int = 8, n_head_kv: int = 2, head_dim: int = 64,
    n_expert: int = 16, n_expert_used: int = 4, n_ff_exp: int = 256, n_vocab: int = 32000, tied: bool = True,
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
                           n_ff=n_ff_exp * n_expert_used, n_vocab=n_vocab, keys=keys, tensors=tensors)


def write_deepseek2(
    path: Path, *, n_layer: int = 4, n_dense: int = 1, n_embd: int = 512, n_head: int = 8,
    kv_lora_rank: int = 256, qk_nope: int = 64, qk_rope: int = 64, v_head: int = 64,
    n_ff: int = 1024, n_expert: int = 16, n_expert_used: int = 4, n_ff_exp: int = 256, n_shared: int = 1,
    n_groups: int = 4, n_groups_used: int = 2, n_vocab: int = 32000, tied: bool = True,
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
        if il < n_dense:
            tensors += [
                (f"blk.{il}.ffn_gate.weight", (n_embd, n_ff)),
                (f"blk.{il}.ffn_up.weight", (n_embd, n_ff)),
                (f"blk.{il}.ffn_down.weight", (n_ff, n_embd)),
            ]
        else:
            tensors += [
                (f"blk.{il}.ffn_gate_inp.weight", (n_embd, n_expert)),
                (f"blk.{il}.exp_probs_b.bias", (n_expert,)),
                (f"blk.{il}.ffn_gate_exps.weight", (n_embd, n_ff_exp, n_expert)),
                (f"blk.{il}.ffn_up_exps.weight", (n_embd, n_ff_exp, n_expert)),
                (f"blk.{il}.ffn_down_exps.weight", (n_ff_exp, n_embd, n_expert)),
                (f"blk.{il}.ffn_gate_shexp.weight", (n_embd, n_ff_exp * n_shared)),
                (f"blk.{il}.ffn_up_shexp.weight", (n_embd, n_ff_exp * n_shared)),
                (f"blk.{il}.ffn_down_shexp.weight", (n_ff_exp * n_shared, n_embd)),
            ]
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
                           n_ff=n_ff, n_vocab=n_vocab, keys=keys, tensors=tensors)
