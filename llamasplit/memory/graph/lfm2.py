"""lfm2 (``src/models/lfm2.cpp``, ``graph<false>``: no sliding window): short-convolution blocks
where ``head_count_kv`` is 0 (``is_recr``) and attention blocks (Q/K RMS norms, then RoPE)
elsewhere, each after an RMS norm, then the residual (``prev + cur``), an RMS norm and a
dense SwiGLU FFN (or experts after ``leading_dense_block_count``), the residual; the output
norm is ``token_embd_norm``. The memory is ``llama_memory_hybrid`` (``build_inp_mem_hybrid``).
lfm2moe (``src/models/lfm2moe.cpp``) builds the same graph; its experts (after
``leading_dense_block_count``) take ``expert_gating_func`` and renormalised weights."""

from __future__ import annotations

from llamasplit.memory.graph.builder import Builder
from llamasplit.memory.graph.family import Family
from llamasplit.model.profile import ModelProfile


def check(model: ModelProfile) -> bool:
    hp = model.hparams
    names = {t.name for t in model.tensors}
    if hp.n_swa or hp.n_shortconv_l_cache < 2 or "token_embd_norm.weight" not in names:
        return False  # graph<true> (iSWA) is not followed
    for il in range(hp.n_layer_kv):
        def has(stem: str) -> bool:
            return f"blk.{il}.{stem}.weight" in names
        if hp.is_recurrent[il]:
            mixer = has("shortconv.conv") and has("shortconv.in_proj") and has("shortconv.out_proj")
        else:
            mixer = all(has(s) for s in ("attn_q", "attn_k", "attn_v", "attn_output", "attn_q_norm", "attn_k_norm"))
        ffn = has("ffn_down") or (has("ffn_gate_inp") and has("ffn_up_exps") and has("ffn_down_exps"))
        if not (mixer and ffn and has("attn_norm") and has("ffn_norm")):
            return False
    return True


def build(b: Builder) -> None:
    o = b.o
    hp = b.hp
    cur = b.inp_embd()
    b.expand(cur)
    rs = b.rs_inputs()
    cache = b.cache(False, True, rot=False)
    cache.k_rot, cache.v_rot = b.rot_inputs()
    inp_pos = b.inp_pos()
    out_ids = b.inp_out_ids()
    n_layer = hp.n_layer_kv
    n_dense = int(b.key("leading_dense_block_count", 0))
    for il in b.ctx.layers:
        prev = cur
        cur = b.norm(cur, b.lw(il, "attn_norm"), il)
        if hp.is_recurrent[il]:
            cur = b.shortconv_layer(rs, cur, il)
        else:
            q, k, v = b.qkv(il, cur, hp.n_head[il], hp.n_head_kv[il], b.n_embd_head_k(il), b.n_embd_head_v(il))
            q = b.norm(q, b.lw(il, "attn_q_norm"), il)
            k = b.norm(k, b.lw(il, "attn_k_norm"), il)
            q = o.rope(q, inp_pos, None)
            k = o.rope(k, inp_pos, None)
            cur = b.attn(il, cache, b.lw(il, "attn_output"), None, q, k, v, iswa=False)
        if il == n_layer - 1:
            cur = o.get_rows(cur, out_ids)
            prev = o.get_rows(prev, out_ids)
        cur = o.binary("ADD", prev, cur)
        normed = b.norm(cur, b.lw(il, "ffn_norm"), il)
        if il >= n_dense and b.has(il, "ffn_gate_inp"):
            ffn_out = b.moe(il, normed, hp.n_expert, hp.n_expert_used, norm_w=True,
                            w_scale=float(b.key("expert_weights_scale", 0.0)), gating=b.gating(),
                            probs_b=b.lw(il, "exp_probs_b", "bias"))
        else:
            ffn_out = b.ffn(il, normed, b.lw(il, "ffn_up"), b.lw(il, "ffn_gate"), b.lw(il, "ffn_down"))
        cur = o.binary("ADD", cur, ffn_out)
        b.cb(cur, "l_out", il)
    b.output(cur, norm="token_embd_norm")


FAMILIES = {
    "lfm2": Family(build=build, replayable=check),
    "lfm2moe": Family(build=build, replayable=check),  # src/models/lfm2moe.cpp: the same graph<iswa>
}
