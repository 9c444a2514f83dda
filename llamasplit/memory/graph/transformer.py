"""The generic decoder-only transformer (``src/models/llama.cpp``, ``gemma3.cpp``, ``qwen3moe.cpp``
and the archs that share their shape): pre-norm, attention, residual, pre-norm, dense FFN or
MoE (plus shared experts), residual; the output rows picked at the last layer. Each family's
quirks come from its ``Family`` record (``family.py``), the rest from the tensors it has."""

from __future__ import annotations

from llamasplit.memory.graph.builder import Builder
from llamasplit.memory.graph.ggml import F32


def build_transformer(b: Builder) -> None:
    """llama, gemma3, qwen3moe (exact); other archs from the tensors they have (close)."""
    o = b.o
    hp = b.hp
    fam = b.family
    inpL = b.inp_embd()
    if fam.scale_embd:
        inpL = o.unary("SCALE", inpL)
        b.cb(inpL, "inp_scaled", -1)
    inp_pos = b.inp_pos()
    nope_step = fam.nope_layer_step
    # llama4's temperature tuning: a 1 x 1 x n_tokens input scales Q on its NoPE layers
    attn_scale = o.input("inp_attn_scale", F32, [1, 1, b.ctx.n_tokens]) if nope_step else None
    iswa = hp.n_swa > 0 and any(hp.is_swa[: hp.n_layer_kv])
    with_v = True
    base = b.cache(False, with_v, rot=False)
    swa_cache = b.cache(True, with_v, rot=False) if iswa else None
    base.k_rot, base.v_rot = b.rot_inputs()
    if swa_cache is not None:
        swa_cache.k_rot, swa_cache.v_rot = b.rot_inputs()
    out_ids = b.inp_out_ids()
    soft_cap = bool(b.key("attn_logit_softcapping", 0.0)) and fam.attn_softcap
    n_layer = hp.n_layer_kv
    for il in b.ctx.layers:
        inpSA = inpL
        if b.has(il, "attn_norm"):
            cur = b.norm(inpL, b.lw(il, "attn_norm"), il, b.lw(il, "attn_norm", "bias"),
                         kind=fam.norm)
            b.cb(cur, "attn_norm", il)
        else:  # olmo2: no norm before attention
            cur = inpL
        hd_k, hd_v = b.n_embd_head_k(il), b.n_embd_head_v(il)
        q, k, v = b.qkv(il, cur, hp.n_head[il], hp.n_head_kv[il], hd_k, hd_v)
        factors = b.w("rope_freqs.weight")
        if factors is not None:
            factors = b.rope_factors(il, factors)
        q_norm, k_norm = b.lw(il, "attn_q_norm"), b.lw(il, "attn_k_norm")
        if q_norm is not None:
            q = b.norm(q, q_norm, il)
        # llama4: every 4th layer has no RoPE (n_no_rope_layer_step, llama-hparams.h)
        use_rope = not nope_step or (il + 1) % nope_step != 0
        if use_rope:
            q = o.rope(q, inp_pos, factors)
        elif attn_scale is not None:
            q = o.binary("MUL", q, attn_scale)
        if k_norm is not None:
            k = b.norm(k, k_norm, il)
        if use_rope:
            k = o.rope(k, inp_pos, factors)
        if fam.kq_l2_norm is not None and use_rope and fam.kq_l2_norm(hp):  # Llama4TextL2Norm, no weight
            q = o.rms_norm(q)
            k = o.rms_norm(k)
        if fam.scale_q:
            q = o.unary("SCALE", q)
        cache = swa_cache if (iswa and hp.is_swa[il]) else base
        cur = b.attn(il, cache, b.lw(il, "attn_output"), b.lw(il, "attn_output", "bias"), q, k, v,
                     iswa=iswa, soft_cap=soft_cap)
        if il == n_layer - 1 and not fam.late_out_ids:
            cur = o.get_rows(cur, out_ids)
            inpSA = o.get_rows(inpSA, out_ids)
        # glm4moe names its pre-FFN norm post_attention_norm (src/models/glm4-moe.cpp)
        ffn_norm_stem = fam.ffn_norm
        post = b.lw(il, "post_attention_norm") if ffn_norm_stem == "ffn_norm" else None
        if post is not None:
            cur = b.norm(cur, post, il)
        residual_scale = bool(b.key("residual_scale", 0.0))  # granite: ggml_scale before each residual add
        if residual_scale:
            cur = o.unary("SCALE", cur)
        ffn_inp = o.binary("ADD", cur, inpSA)
        b.cb(ffn_inp, "ffn_inp", il)
        if b.has(il, ffn_norm_stem):
            cur = b.norm(ffn_inp, b.lw(il, ffn_norm_stem), il, b.lw(il, ffn_norm_stem, "bias"),
                         kind=fam.norm)
        else:  # olmo2: no norm before the FFN
            cur = ffn_inp
        if b.has(il, "ffn_gate_inp"):
            moe = b.moe(il, cur, hp.n_expert, hp.n_expert_used, norm_w=b.norm_w(),
                        w_scale=float(b.key("expert_weights_scale", 0.0)), gating=b.gating(),
                        probs_b=b.lw(il, "exp_probs_b", "bias"))
            if b.has(il, "ffn_up_shexp"):
                moe = o.binary("ADD", moe, b.shared_expert(il, cur))
            cur = moe
        else:
            cur = b.ffn(il, cur, b.lw(il, "ffn_up"), b.lw(il, "ffn_gate"), b.lw(il, "ffn_down"),
                        up_b=b.lw(il, "ffn_up", "bias"), gate_b=b.lw(il, "ffn_gate", "bias"),
                        down_b=b.lw(il, "ffn_down", "bias"))
        post = b.lw(il, "post_ffw_norm")
        if post is not None:
            cur = b.norm(cur, post, -1)
        if residual_scale:
            cur = o.unary("SCALE", cur)
        cur = o.binary("ADD", cur, ffn_inp)
        b.cb(cur, "l_out", il)
        inpL = cur
    if fam.late_out_ids:
        inpL = o.get_rows(inpL, out_ids)
    b.output(inpL)
