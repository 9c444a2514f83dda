"""Synthetic GGUF models written with gguf.GGUFWriter, for shapes the real fixtures lack."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGUFWriter
from gguf.constants import Keys


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
    split: tuple[int, int] | None = None,
    tensors: list[tuple[str, tuple[int, ...]]] | None = None,
) -> Path:
    """A small F32 model of ``arch``; ``split=(no, count)`` writes one shard's header keys."""
    w = GGUFWriter(str(path), arch)
    w.add_block_count(n_layer)
    w.add_context_length(2048)
    w.add_embedding_length(n_embd)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(0)
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
