"""nemotron_h (``src/models/nemotron-h.cpp``): blocks of three kinds, each an RMS norm, its mixer and
the residual: Mamba-2 (``is_recr``: no KV heads and no FFN), attention without RoPE (KV heads,
no FFN), or an MLP (``ffn_up``/``ffn_down``, squared ReLU). ``embeddings_nextn_masked`` is false
by default (llama-context.cpp), so every token runs through the last block and the output rows
are picked after the output norm, which is a graph output itself (``t_h_nextn``). The memory is
``llama_memory_hybrid``: KV for the attention blocks, states for the Mamba-2 ones.
nemotron_h_moe (``src/models/nemotron-h-moe.cpp``) runs the same graph with expert blocks."""

from __future__ import annotations

from llamasplit.memory.graph.builder import Builder
from llamasplit.memory.graph.family import Family
from llamasplit.memory.graph.ggml import FLAG_OUTPUT, T
from llamasplit.memory.graph.mamba2 import has_mamba2, mamba2_shapes_ok
from llamasplit.model.profile import ModelProfile


def check(model: ModelProfile) -> bool:
    hp = model.hparams
    names = {t.name for t in model.tensors}
    if hp.n_swa or (any(hp.is_recurrent) and not mamba2_shapes_ok(model)):
        return False
    for il in range(hp.n_layer_kv):
        def has(stem: str) -> bool:
            return f"blk.{il}.{stem}.weight" in names
        if hp.is_recurrent[il]:
            ok = has_mamba2(names, il)
        elif hp.n_ff[il] == 0:
            ok = has("attn_q") and has("attn_k") and has("attn_v") and has("attn_output")
        elif has("ffn_gate_inp"):  # nemotron_h_moe's experts (a latent projection is not followed)
            ok = (has("ffn_up_exps") and has("ffn_down_exps") and has("ffn_up_shexp") and has("ffn_down_shexp")
                  and not has("ffn_latent_down"))
        else:  # the dense MLP
            ok = has("ffn_up") and has("ffn_down")
        if not (ok and has("attn_norm")):
            return False
    return True


def mlp(b: Builder, cur: T, il: int, suffix: str = "") -> T:
    """build_ffn with LLM_FFN_RELU_SQR, no gate: up (+bias), relu, sqr, down (+bias)."""
    o = b.o
    cur = b.mm(b.lw(il, f"ffn_up{suffix}"), cur, b.lw(il, f"ffn_up{suffix}", "bias"))
    cur = o.unary("UNARY", cur)  # ggml_relu
    cur = o.unary("SQR", cur)
    return b.mm(b.lw(il, f"ffn_down{suffix}"), cur, b.lw(il, f"ffn_down{suffix}", "bias"))


def ffn_layer(b: Builder, cur: T, il: int) -> T:
    """build_ffn_layer: the dense MLP, or (nemotron_h_moe) the router's logits, the experts
    (sigmoid gating, ``exp_probs_b``, ``expert_weights_norm`` / ``_scale``, squared ReLU) and the
    shared expert, added."""
    if not b.has(il, "ffn_gate_inp"):
        return mlp(b, cur, il)
    hp = b.hp
    moe = b.moe(il, cur, hp.n_expert, hp.n_expert_used, norm_w=b.norm_w(),
                w_scale=float(b.key("expert_weights_scale", 0.0)), gating="sigmoid",
                probs_b=b.lw(il, "exp_probs_b", "bias"))
    return b.o.binary("ADD", moe, mlp(b, cur, il, "_shexp"))


def build(b: Builder) -> None:
    o = b.o
    hp = b.hp
    inp_l = b.inp_embd()
    rs = b.rs_inputs()
    cache = b.cache(False, True, rot=False)
    cache.k_rot, cache.v_rot = b.rot_inputs()
    out_ids = b.inp_out_ids()
    for il in b.ctx.layers:
        inp_sa = inp_l
        cur = b.norm(inp_l, b.lw(il, "attn_norm"), il)
        b.cb(cur, "attn_norm", il)
        if hp.is_recurrent[il]:
            cur = b.mamba2_layer(rs, cur, il)
        elif hp.n_ff[il] == 0:
            q, k, v = b.qkv(il, cur, hp.n_head[il], hp.n_head_kv[il], b.n_embd_head_k(il), b.n_embd_head_v(il))
            cur = b.attn(il, cache, b.lw(il, "attn_output"), b.lw(il, "attn_output", "bias"), q, k, v, iswa=False)
        else:
            cur = ffn_layer(b, cur, il)
        cur = o.binary("ADD", cur, inp_sa)
        inp_l = cur
    cur = b.norm(inp_l, b.w("output_norm.weight"), -1)
    cur.flags |= FLAG_OUTPUT  # t_h_nextn
    cur = o.get_rows(cur, out_ids)
    b.cb(cur, "result_norm", -1)
    b.t_embd = cur
    out_w = b.w("output.weight")
    cur = o.mul_mat(out_w if out_w is not None else b.tied_output(), cur)
    b.cb(cur, "result_output", -1)
    b.t_logits = cur
    b.expand(cur)


FAMILIES = {
    "nemotron_h": Family(build=build, replayable=check),
    "nemotron_h_moe": Family(build=build, replayable=check),
}
