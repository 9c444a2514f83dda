"""Synthetic models with NextN/MTP blocks beyond ``synth.py``'s (kept apart from it, which others
extend at the same time): a DeepSeek-V3-shaped deepseek2 whose MTP head the pinned llama.cpp runs.

- ``write_deepseek2_mtp``: deepseek2 with MLA and a Q LoRA (``attn_q_a`` / ``attn_q_a_norm`` /
  ``attn_q_b``: src/models/deepseek2.cpp ``graph_mtp`` asserts ``n_lora_q > 0``), one leading dense
  block, then MoE blocks, and ``n_nextn`` NextN blocks (a whole MoE block plus ``nextn.eh_proj`` /
  ``enorm`` / ``hnorm`` / ``shared_head_norm``) after the trunk (``load_arch_tensors``).
"""

from __future__ import annotations

from pathlib import Path

from synth import _dense_first_moe_ffn, _embeddings, _write_loadable


def write_deepseek2_mtp(
    path: Path, *, n_layer: int = 3, n_nextn: int = 1, n_dense: int = 1, n_embd: int = 512, n_head: int = 8,
    q_lora_rank: int = 256, kv_lora_rank: int = 256, qk_nope: int = 64, qk_rope: int = 64, v_head: int = 64,
    n_ff: int = 1024, n_expert: int = 16, n_expert_used: int = 4, n_ff_exp: int = 256, n_shared: int = 1,
    n_vocab: int = 32000, **opts,
) -> Path:
    """F16 bytes: embeddings 2 x 32000 x 512 x 2 = 62.5 MiB (untied); per MoE block experts 12 MiB,
    shared expert 0.75 MiB, MLA attention about 1.4 MiB; the NextN block adds ``eh_proj`` 1 MiB."""
    hd_k = qk_nope + qk_rope
    tensors = _embeddings(n_embd, n_vocab, False)
    for il in range(n_layer + n_nextn):
        b = f"blk.{il}."
        tensors += [
            (b + "attn_norm.weight", (n_embd,)),
            (b + "attn_q_a.weight", (n_embd, q_lora_rank)), (b + "attn_q_a_norm.weight", (q_lora_rank,)),
            (b + "attn_q_b.weight", (q_lora_rank, n_head * hd_k)),
            (b + "attn_kv_a_mqa.weight", (n_embd, kv_lora_rank + qk_rope)),
            (b + "attn_kv_a_norm.weight", (kv_lora_rank,)),
            (b + "attn_k_b.weight", (qk_nope, kv_lora_rank, n_head)),
            (b + "attn_v_b.weight", (kv_lora_rank, v_head, n_head)),
            (b + "attn_output.weight", (n_head * v_head, n_embd)),
            (b + "ffn_norm.weight", (n_embd,)),
        ]
        tensors += _dense_first_moe_ffn(il, n_dense, n_embd, n_ff, n_expert, n_ff_exp, n_shared)
        if il >= n_layer:
            tensors += [(b + "nextn.eh_proj.weight", (2 * n_embd, n_embd)), (b + "nextn.enorm.weight", (n_embd,)),
                        (b + "nextn.hnorm.weight", (n_embd,)), (b + "nextn.shared_head_norm.weight", (n_embd,))]
    keys = {
        "{arch}.rope.dimension_count": qk_rope,
        "{arch}.attention.key_length": kv_lora_rank + qk_rope,
        "{arch}.attention.value_length": kv_lora_rank,
        "{arch}.attention.key_length_mla": hd_k,
        "{arch}.attention.value_length_mla": v_head,
        "{arch}.attention.kv_lora_rank": kv_lora_rank,
        "{arch}.attention.q_lora_rank": q_lora_rank,
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
    return _write_loadable(path, "deepseek2", n_layer=n_layer + n_nextn, n_embd=n_embd, n_head=n_head, n_head_kv=1,
                           n_ff=n_ff, n_vocab=n_vocab, keys=keys, tensors=tensors, **{"vocab": "spm", **opts})
