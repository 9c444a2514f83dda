"""ModelProfiles built from shapes alone, for models nobody has to download.

Used by the planner benchmark and tests (a 70B dense model, a 671B MoE), and handy for "what would
a model shaped like X need" questions. The tensors follow llama.cpp's names and ggml shapes
(``shape[0]`` is the row length), typed like a Q4_K_M file's bulk (Q4_K, Q6_K for ffn_down and
attn_v, F32 norms).
"""

from __future__ import annotations

from typing import Any

from llamasplit.gguf_constants import GGMLQuantizationType as Q
from llamasplit.gguf_constants import Keys

from llamasplit.model.gguf_reader import ggml_nbytes
from llamasplit.model.profile import HParams, ModelProfile, TensorInfo, classify


def _metadata(arch: str, hp: HParams) -> dict[str, Any]:
    """The header keys llama.cpp (and our requantization recipe) read for these shapes."""
    md: dict[str, Any] = {
        Keys.General.ARCHITECTURE: arch,
        Keys.LLM.BLOCK_COUNT.format(arch=arch): hp.n_layer,
        Keys.LLM.EMBEDDING_LENGTH.format(arch=arch): hp.n_embd,
        Keys.LLM.CONTEXT_LENGTH.format(arch=arch): hp.n_ctx_train,
        Keys.LLM.FEED_FORWARD_LENGTH.format(arch=arch): max(hp.n_ff),
        Keys.Attention.HEAD_COUNT.format(arch=arch): hp.n_head[0],
        Keys.Attention.HEAD_COUNT_KV.format(arch=arch): hp.n_head_kv[0],
        Keys.LLM.VOCAB_SIZE.format(arch=arch): hp.n_vocab,
        Keys.General.FILE_TYPE: 15,
    }
    if hp.n_expert:
        md[Keys.LLM.EXPERT_COUNT.format(arch=arch)] = hp.n_expert
        md[Keys.LLM.EXPERT_USED_COUNT.format(arch=arch)] = hp.n_expert_used
        md[Keys.LLM.EXPERT_FEED_FORWARD_LENGTH.format(arch=arch)] = hp.n_ff_exp
    return md


def _tensor(name: str, qtype: Q, shape: tuple[int, ...]) -> TensorInfo:
    block, layer, role = classify(name)
    return TensorInfo(name, int(qtype), shape, ggml_nbytes(int(qtype), shape), block, layer, role)


def dense_profile(
    *, n_layer: int = 80, n_embd: int = 8192, n_head: int = 64, n_head_kv: int = 8, n_ff: int = 28672,
    n_vocab: int = 128256, n_ctx_train: int = 131072, arch: str = "llama", name: str = "dense-70b-shape",
) -> ModelProfile:
    """A Llama-3-70B-shaped model (defaults) at about Q4_K_M."""
    hd = n_embd // n_head
    tensors = [
        _tensor("token_embd.weight", Q.Q4_K, (n_embd, n_vocab)),
        _tensor("output_norm.weight", Q.F32, (n_embd,)),
        _tensor("output.weight", Q.Q6_K, (n_embd, n_vocab)),
    ]
    for il in range(n_layer):
        tensors += [
            _tensor(f"blk.{il}.attn_norm.weight", Q.F32, (n_embd,)),
            _tensor(f"blk.{il}.attn_q.weight", Q.Q4_K, (n_embd, n_embd)),
            _tensor(f"blk.{il}.attn_k.weight", Q.Q4_K, (n_embd, hd * n_head_kv)),
            _tensor(f"blk.{il}.attn_v.weight", Q.Q6_K, (n_embd, hd * n_head_kv)),
            _tensor(f"blk.{il}.attn_output.weight", Q.Q4_K, (n_embd, n_embd)),
            _tensor(f"blk.{il}.ffn_norm.weight", Q.F32, (n_embd,)),
            _tensor(f"blk.{il}.ffn_gate.weight", Q.Q4_K, (n_embd, n_ff)),
            _tensor(f"blk.{il}.ffn_up.weight", Q.Q4_K, (n_embd, n_ff)),
            _tensor(f"blk.{il}.ffn_down.weight", Q.Q6_K, (n_ff, n_embd)),
        ]
    hp = HParams(
        n_layer=n_layer, n_embd=n_embd, n_vocab=n_vocab, n_ctx_train=n_ctx_train, n_head=(n_head,) * n_layer,
        n_head_kv=(n_head_kv,) * n_layer, n_embd_head_k=hd, n_embd_head_v=hd, n_embd_head_k_swa=hd,
        n_embd_head_v_swa=hd, n_ff=(n_ff,) * n_layer, is_swa=(False,) * n_layer, is_recurrent=(False,) * n_layer,
        n_rot=hd,
    )
    return ModelProfile(
        path=f"{name}.gguf", arch=arch, name=name, file_type=15, files=(), file_bytes=sum(t.n_bytes for t in tensors),
        tensors=tuple(tensors), hparams=hp, tied_embeddings=False, metadata=_metadata(arch, hp),
    )


def moe_profile(
    *, n_layer: int = 61, n_dense: int = 3, n_embd: int = 7168, n_head: int = 128, n_expert: int = 256,
    n_expert_used: int = 8, n_expert_shared: int = 1, n_ff: int = 18432, n_ff_exp: int = 2048,
    n_vocab: int = 129280, kv_lora_rank: int = 512, q_lora_rank: int = 1536, rope_dim: int = 64,
    head_k: int = 192, head_v: int = 128, n_ctx_train: int = 163840, name: str = "moe-671b-shape",
) -> ModelProfile:
    """A DeepSeek-V3-671B-shaped MLA MoE (defaults) at about Q4_K_M."""
    tensors = [
        _tensor("token_embd.weight", Q.Q4_K, (n_embd, n_vocab)),
        _tensor("output_norm.weight", Q.F32, (n_embd,)),
        _tensor("output.weight", Q.Q6_K, (n_embd, n_vocab)),
    ]
    for il in range(n_layer):
        p = f"blk.{il}."
        tensors += [
            _tensor(p + "attn_norm.weight", Q.F32, (n_embd,)),
            _tensor(p + "attn_q_a.weight", Q.Q4_K, (n_embd, q_lora_rank)),
            _tensor(p + "attn_q_a_norm.weight", Q.F32, (q_lora_rank,)),
            _tensor(p + "attn_q_b.weight", Q.Q4_K, (q_lora_rank, n_head * head_k)),
            _tensor(p + "attn_kv_a_mqa.weight", Q.Q4_K, (n_embd, kv_lora_rank + rope_dim)),
            _tensor(p + "attn_kv_a_norm.weight", Q.F32, (kv_lora_rank,)),
            _tensor(p + "attn_k_b.weight", Q.Q8_0, (head_k - rope_dim, kv_lora_rank, n_head)),
            _tensor(p + "attn_v_b.weight", Q.Q4_K, (kv_lora_rank, head_v, n_head)),
            _tensor(p + "attn_output.weight", Q.Q4_K, (n_head * head_v, n_embd)),
            _tensor(p + "ffn_norm.weight", Q.F32, (n_embd,)),
        ]
        if il < n_dense:
            tensors += [
                _tensor(p + "ffn_gate.weight", Q.Q4_K, (n_embd, n_ff)),
                _tensor(p + "ffn_up.weight", Q.Q4_K, (n_embd, n_ff)),
                _tensor(p + "ffn_down.weight", Q.Q6_K, (n_ff, n_embd)),
            ]
        else:
            tensors += [
                _tensor(p + "ffn_gate_inp.weight", Q.F32, (n_embd, n_expert)),
                _tensor(p + "exp_probs_b.bias", Q.F32, (n_expert,)),
                _tensor(p + "ffn_gate_exps.weight", Q.Q4_K, (n_embd, n_ff_exp, n_expert)),
                _tensor(p + "ffn_up_exps.weight", Q.Q4_K, (n_embd, n_ff_exp, n_expert)),
                _tensor(p + "ffn_down_exps.weight", Q.Q6_K, (n_ff_exp, n_embd, n_expert)),
                _tensor(p + "ffn_gate_shexp.weight", Q.Q4_K, (n_embd, n_ff_exp * n_expert_shared)),
                _tensor(p + "ffn_up_shexp.weight", Q.Q4_K, (n_embd, n_ff_exp * n_expert_shared)),
                _tensor(p + "ffn_down_shexp.weight", Q.Q6_K, (n_ff_exp * n_expert_shared, n_embd)),
            ]
    mla_k = kv_lora_rank + rope_dim
    hp = HParams(
        n_layer=n_layer, n_embd=n_embd, n_vocab=n_vocab, n_ctx_train=n_ctx_train, n_head=(n_head,) * n_layer,
        n_head_kv=(1,) * n_layer, n_embd_head_k=mla_k, n_embd_head_v=kv_lora_rank, n_embd_head_k_swa=mla_k,
        n_embd_head_v_swa=kv_lora_rank, n_ff=tuple(n_ff if il < n_dense else 0 for il in range(n_layer)),
        is_swa=(False,) * n_layer, is_recurrent=(False,) * n_layer, n_expert=n_expert, n_expert_used=n_expert_used,
        n_expert_shared=n_expert_shared, n_ff_exp=n_ff_exp, kv_lora_rank=kv_lora_rank, q_lora_rank=q_lora_rank,
        n_embd_head_k_mla=head_k, n_embd_head_v_mla=head_v, n_rot=rope_dim,
    )
    return ModelProfile(
        path=f"{name}.gguf", arch="deepseek2", name=name, file_type=15, files=(), file_bytes=sum(t.n_bytes for t in tensors),
        tensors=tuple(tensors), hparams=hp, tied_embeddings=False, metadata=_metadata("deepseek2", hp),
    )
