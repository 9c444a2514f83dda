"""jamba (``src/models/jamba.cpp``): Mamba-1 blocks (``build_mamba_layer`` with dt/B/C norm
tensors) where ``head_count_kv`` is 0, attention without RoPE elsewhere, each after an RMS norm,
then the residual, an RMS norm and a dense SwiGLU FFN or routed experts (softmax, weights not
renormalised). No positions. The memory is ``llama_memory_hybrid`` (``build_inp_mem_hybrid``)."""

from __future__ import annotations

from llamasplit.memory.graph.builder import Builder
from llamasplit.memory.graph.family import Family
from llamasplit.memory.graph.mamba2 import MAMBA1_TENSORS
from llamasplit.model.profile import ModelProfile


def check(model: ModelProfile) -> bool:
    hp = model.hparams
    names = {t.name for t in model.tensors}
    if hp.n_swa or not (hp.ssm_d_conv > 1 and hp.ssm_d_inner > 0 and hp.ssm_d_state > 0 and hp.ssm_dt_rank > 0):
        return False
    for il in range(hp.n_layer_kv):
        def has(stem: str) -> bool:
            return f"blk.{il}.{stem}.weight" in names
        if hp.is_recurrent[il]:
            mixer = all(f"blk.{il}.{t}" in names for t in MAMBA1_TENSORS)
        else:
            mixer = has("attn_q") and has("attn_k") and has("attn_v") and has("attn_output")
        ffn = has("ffn_down") or (has("ffn_gate_inp") and has("ffn_up_exps") and has("ffn_down_exps"))
        if not (mixer and ffn and has("attn_norm") and has("ffn_norm")):
            return False
    return True


def build(b: Builder) -> None:
    o = b.o
    hp = b.hp
    inp_l = b.inp_embd()
    rs = b.rs_inputs()
    cache = b.cache(False, True, rot=False)
    cache.k_rot, cache.v_rot = b.rot_inputs()
    out_ids = b.inp_out_ids()
    n_layer = hp.n_layer_kv
    for il in b.ctx.layers:
        cur = b.norm(inp_l, b.lw(il, "attn_norm"), il)
        b.cb(cur, "attn_norm", il)
        if hp.is_recurrent[il]:
            cur = b.mamba_layer(rs, cur, il)
        else:
            q, k, v = b.qkv(il, cur, hp.n_head[il], hp.n_head_kv[il], b.n_embd_head_k(il), b.n_embd_head_v(il))
            cur = b.attn(il, cache, b.lw(il, "attn_output"), None, q, k, v, iswa=False)
        if il == n_layer - 1:
            cur = o.get_rows(cur, out_ids)
            inp_l = o.get_rows(inp_l, out_ids)
        ffn_inp = o.binary("ADD", inp_l, cur)
        cur = b.norm(ffn_inp, b.lw(il, "ffn_norm"), il)
        if b.has(il, "ffn_gate_inp"):
            cur = b.moe(il, cur, hp.n_expert, hp.n_expert_used, norm_w=False,
                        w_scale=float(b.key("expert_weights_scale", 0.0)), gating="softmax", probs_b=None)
        else:
            cur = b.ffn(il, cur, b.lw(il, "ffn_up"), b.lw(il, "ffn_gate"), b.lw(il, "ffn_down"))
        cur = o.binary("ADD", ffn_inp, cur)
        b.cb(cur, "l_out", il)
        inp_l = cur
    b.output(inp_l)


FAMILIES = {"jamba": Family(build=build, replayable=check)}
