"""granitehybrid (``src/models/granite-hybrid.cpp``): Mamba-2 blocks where ``head_count_kv`` is 0
(``is_recr``), attention blocks elsewhere (RoPE unless ``rope.scaling.finetuned`` is false), each
followed by granite's scaled residual and a dense SwiGLU FFN or routed experts (softmax,
renormalised) with an optional shared expert; logits scaled. The memory is
``llama_memory_hybrid`` (``build_inp_mem_hybrid``: the recurrent inputs, then the KV cache's)."""

from __future__ import annotations

from llamasplit.memory.graph.builder import Builder
from llamasplit.memory.graph.family import Family
from llamasplit.memory.graph.mamba2 import has_mamba2, mamba2_shapes_ok
from llamasplit.memory.graph.ggml import T
from llamasplit.model.profile import ModelProfile


def check(model: ModelProfile) -> bool:
    hp = model.hparams
    names = {t.name for t in model.tensors}
    if hp.n_swa or (any(hp.is_recurrent) and not mamba2_shapes_ok(model)):
        return False
    for il in range(hp.n_layer_kv):
        def has(stem: str) -> bool:
            return f"blk.{il}.{stem}.weight" in names
        mixer = has_mamba2(names, il) if hp.is_recurrent[il] else (
            has("attn_q") and has("attn_k") and has("attn_v") and has("attn_output"))
        ffn = has("ffn_down") or (has("ffn_gate_inp") and has("ffn_up_exps") and has("ffn_down_exps"))
        if not (mixer and ffn and has("attn_norm") and has("ffn_norm")):
            return False
    return True


def layer_ffn(b: Builder, cur: T, inp_sa: T, il: int) -> T:
    """granite-hybrid.cpp build_layer_ffn."""
    o = b.o
    hp = b.hp
    residual_scale = bool(b.key("residual_scale", 0.0))
    if residual_scale:
        cur = o.unary("SCALE", cur)
    ffn_inp = o.binary("ADD", cur, inp_sa)
    b.cb(ffn_inp, "ffn_inp", il)
    cur = b.norm(ffn_inp, b.lw(il, "ffn_norm"), il)
    if not b.has(il, "ffn_gate_inp"):
        cur = b.ffn(il, cur, b.lw(il, "ffn_up"), b.lw(il, "ffn_gate"), b.lw(il, "ffn_down"),
                    up_b=b.lw(il, "ffn_up", "bias"), gate_b=b.lw(il, "ffn_gate", "bias"),
                    down_b=b.lw(il, "ffn_down", "bias"))
    else:
        moe = b.moe(il, cur, hp.n_expert, hp.n_expert_used, norm_w=True,
                    w_scale=float(b.key("expert_weights_scale", 0.0)), gating="softmax", probs_b=None)
        if b.has(il, "ffn_up_shexp"):
            moe = o.binary("ADD", moe, b.shared_expert(il, cur))
        cur = moe
    if residual_scale:
        cur = o.unary("SCALE", cur)
    cur = o.binary("ADD", cur, ffn_inp)
    b.cb(cur, "l_out", il)
    return cur


def build(b: Builder) -> None:
    o = b.o
    hp = b.hp
    inp_l = b.inp_embd()
    rs = b.rs_inputs()
    cache = b.cache(False, True, rot=False)
    cache.k_rot, cache.v_rot = b.rot_inputs()
    out_ids = b.inp_out_ids()
    rope = bool(b.md.get(f"{b.arch}.rope.scaling.finetuned", True))
    inp_pos = b.inp_pos() if rope else None
    n_layer = hp.n_layer_kv
    for il in b.ctx.layers:
        inp_sa = inp_l
        cur = b.norm(inp_l, b.lw(il, "attn_norm"), il)
        b.cb(cur, "attn_norm", il)
        if hp.is_recurrent[il]:
            cur = b.mamba2_layer(rs, cur, il)
        else:
            q, k, v = b.qkv(il, cur, hp.n_head[il], hp.n_head_kv[il], b.n_embd_head_k(il), b.n_embd_head_v(il))
            if inp_pos is not None:
                factors = b.w("rope_freqs.weight")
                if factors is not None:
                    factors = b.rope_factors(il, factors)
                q = o.rope(q, inp_pos, factors)
                k = o.rope(k, inp_pos, factors)
            cur = b.attn(il, cache, b.lw(il, "attn_output"), b.lw(il, "attn_output", "bias"), q, k, v, iswa=False)
        if il == n_layer - 1:
            cur = o.get_rows(cur, out_ids)
            inp_sa = o.get_rows(inp_sa, out_ids)
        inp_l = layer_ffn(b, cur, inp_sa, il)
    b.output(inp_l)


FAMILIES = {"granitehybrid": Family(build=build, replayable=check)}
