"""Synthetic companions of a model, written with gguf.GGUFWriter: speculative-decoding drafts and
LoRA adapters that the pinned llama.cpp loads beside a base model (kept apart from ``synth.py``,
which others extend at the same time).

- ``write_draft_like(base, out)``: a small llama whose tokenizer keys are copied from ``base``
  (token list, scores, types, merges, BOS/EOS...), so llama.cpp's draft/target vocabulary check
  (common/speculative.cpp ``common_speculative_are_compatible``) passes; ``vocab_size`` writes
  a tokenizer-less one of that many tokens instead.
- ``write_lora(base, out)``: an adapter GGUF (``general.type = adapter``, ``adapter.type = lora``,
  ``adapter.lora.alpha``) with ``<tensor>.lora_a`` ``[n_in, rank]`` and ``<tensor>.lora_b``
  ``[rank, n_out]`` (ggml ne order) for the named base matrices, the shapes
  src/llama-adapter.cpp ``llama_adapter_lora_init_impl`` validates.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGUFReader, GGUFValueType, GGUFWriter


def _copy_tokenizer(w: GGUFWriter, base: Path) -> int:
    """Copy every ``tokenizer.*`` key of ``base`` into ``w``; return the vocabulary size."""
    r = GGUFReader(str(base))
    n_vocab = 0
    for field in r.fields.values():
        if not field.name.startswith("tokenizer."):
            continue
        vtype = field.types[0]
        if vtype == GGUFValueType.ARRAY:
            etype = field.types[-1]
            if etype == GGUFValueType.STRING:
                value = [bytes(field.parts[i]).decode("utf-8", "surrogateescape") for i in field.data]
            else:
                value = [field.parts[i].tolist()[0] for i in field.data]
            w.add_key_value(field.name, value, vtype, sub_type=etype)
            if field.name == "tokenizer.ggml.tokens":
                n_vocab = len(value)
        elif vtype == GGUFValueType.STRING:
            w.add_key_value(field.name, bytes(field.parts[-1]).decode("utf-8", "surrogateescape"), vtype)
        else:
            w.add_key_value(field.name, field.parts[-1].tolist()[0], vtype)
    return n_vocab


def write_draft_like(base: Path, out: Path, *, n_layer: int = 1, n_embd: int = 64, n_head: int = 4,
                     n_head_kv: int = 2, n_ff: int = 128, vocab_size: int | None = None) -> Path:
    """A 1-layer llama draft with ``base``'s tokenizer (F16 matrices, F32 norms, zeros).

    With SmolLM2's 49152 tokens and the defaults, F16 bytes: token_embd and output 2 x 49152 x 64
    x 2 = 12 MiB; the block (64^2 x 2 + 64 x 32 x 2 + 3 x 64 x 128) x 2 = 0.07 MiB.
    """
    hd = n_embd // n_head
    w = GGUFWriter(str(out), "llama")
    n_vocab = _copy_tokenizer(w, base) if vocab_size is None else vocab_size
    if vocab_size is not None:
        w.add_tokenizer_model("no_vocab")
        w.add_vocab_size(vocab_size)
    w.add_block_count(n_layer)
    w.add_context_length(8192)
    w.add_embedding_length(n_embd)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_rope_dimension_count(hd)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_file_type(1)
    tensors = [("token_embd.weight", (n_vocab, n_embd), np.float16), ("output_norm.weight", (n_embd,), np.float32),
               ("output.weight", (n_vocab, n_embd), np.float16)]
    for il in range(n_layer):
        tensors += [
            (f"blk.{il}.attn_norm.weight", (n_embd,), np.float32),
            (f"blk.{il}.attn_q.weight", (n_embd, n_embd), np.float16),
            (f"blk.{il}.attn_k.weight", (hd * n_head_kv, n_embd), np.float16),
            (f"blk.{il}.attn_v.weight", (hd * n_head_kv, n_embd), np.float16),
            (f"blk.{il}.attn_output.weight", (n_embd, n_embd), np.float16),
            (f"blk.{il}.ffn_norm.weight", (n_embd,), np.float32),
            (f"blk.{il}.ffn_gate.weight", (n_ff, n_embd), np.float16),
            (f"blk.{il}.ffn_up.weight", (n_ff, n_embd), np.float16),
            (f"blk.{il}.ffn_down.weight", (n_embd, n_ff), np.float16),
        ]
    for name, shape, dtype in tensors:  # numpy order: (rows, row length)
        w.add_tensor(name, np.zeros(shape, dtype=dtype))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


def write_spm_pair(folder: Path, *, n_vocab: int = 32000) -> tuple[Path, Path]:
    """A synthetic main llama (4 layers of 512, F16) and a 1-layer draft of 128, sharing the same
    small SPM vocabulary (``synth.add_spm_vocab``): a compatible draft without a download."""
    from synth import write_llama_dense

    main = write_llama_dense(folder / "main.gguf", n_vocab=n_vocab, vocab="spm")
    draft = write_llama_dense(folder / "draft.gguf", n_layer=1, n_embd=128, n_head=2, n_head_kv=1, n_ff=256,
                              n_vocab=n_vocab, vocab="spm")
    return main, draft


def write_lora(out: Path, *, arch: str, targets: dict[str, tuple[int, int]], rank: int = 8, alpha: float = 16.0,
               dtype: type = np.float32, general_type: str = "adapter", adapter_type: str = "lora") -> Path:
    """A LoRA adapter for ``targets``: base tensor name -> (n_in, n_out) (ggml ne of the base
    matrix). Values are small random numbers (the adapter is applied, so they stay finite)."""
    w = GGUFWriter(str(out), arch)
    w.add_string("general.type", general_type)
    w.add_string("adapter.type", adapter_type)
    w.add_float32("adapter.lora.alpha", alpha)
    rng = np.random.default_rng(0)
    for name, (n_in, n_out) in targets.items():
        # ggml ne: lora_a [n_in, rank], lora_b [rank, n_out]; numpy shapes reversed
        w.add_tensor(f"{name}.lora_a", (rng.standard_normal((rank, n_in)) * 0.01).astype(dtype))
        w.add_tensor(f"{name}.lora_b", (rng.standard_normal((n_out, rank)) * 0.01).astype(dtype))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


def lora_targets(model, stems: tuple[str, ...] = ("attn_q", "attn_v", "ffn_down")) -> dict[str, tuple[int, int]]:
    """The base matrices of ``model`` (a ModelProfile) whose names end in one of ``stems``."""
    out = {}
    for t in model.tensors:
        stem = t.name.rsplit(".", 2)[-2] if t.name.count(".") >= 2 else ""
        if stem in stems and len(t.shape) == 2:
            out[t.name] = (t.shape[0], t.shape[1])
    return out

