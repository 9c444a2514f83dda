"""deepseek2 with MLA (``src/models/deepseek2.cpp``); without MLA, the generic decoder."""

from __future__ import annotations

from llamasplit.memory.graph import transformer
from llamasplit.memory.graph.builder import Builder
from llamasplit.memory.graph.family import Family
from llamasplit.memory.graph.ggml import row_size


def build(b: Builder) -> None:
    """MLA models get ``build_deepseek2``; the others the generic decoder."""
    if b.hp.is_mla:
        build_deepseek2(b)
    else:
        transformer.build_transformer(b)


def build_deepseek2(b: Builder) -> None:
    """src/models/deepseek2.cpp with MLA (absorbed K/V, a K-only cache)."""
    o = b.o
    hp = b.hp
    T_ = b.ctx.n_tokens
    n_head = hp.n_head[0]
    hd_k = hp.n_embd_head_k_mla
    rope = hp.n_rot
    nope = hd_k - rope
    kv_lora = hp.kv_lora_rank
    inpL = b.inp_embd()
    inp_pos = b.inp_pos()
    cache = b.cache(False, with_v=False, rot=False)
    out_ids = b.inp_out_ids()
    n_dense = int(b.key("leading_dense_block_count", 0))
    gating_id = int(b.key("expert_gating_func", 0))
    gating = {2: "sigmoid"}.get(gating_id, "softmax")
    n_layer = hp.n_layer_kv
    for il in b.ctx.layers:
        inpSA = inpL
        cur = b.norm(inpL, b.lw(il, "attn_norm"), il)
        b.cb(cur, "attn_norm", il)
        wq = b.lw(il, "attn_q")
        if wq is None:
            q = o.mul_mat(b.lw(il, "attn_q_a"), cur)
            q = b.norm(q, b.lw(il, "attn_q_a_norm"), il)
            q = o.mul_mat(b.lw(il, "attn_q_b"), q)
        else:
            q = o.mul_mat(wq, cur)
        q = o.reshape(q, hd_k, n_head, T_)
        kv_pe = o.mul_mat(b.lw(il, "attn_kv_a_mqa"), cur)
        row = row_size(kv_pe.type, kv_lora + rope)
        kv_cmpr = o.view(kv_pe, [kv_lora, T_], [row], 0)
        k_pe = o.view(kv_pe, [rope, 1, T_], [row, row], row_size(kv_pe.type, kv_lora))
        k_pe = o.rope(k_pe, inp_pos, None)
        kv_cmpr = b.norm(kv_cmpr, b.lw(il, "attn_kv_a_norm"), il)
        q_nope = o.view(q, [nope, n_head, T_], [q.nb[1], q.nb[2]], 0)
        q_pe = o.view(q, [rope, n_head, T_], [q.nb[1], q.nb[2]], row_size(q.type, nope))
        q_pe = o.rope(q_pe, inp_pos, None)
        q_nope = o.permute(q_nope, 0, 2, 1, 3)
        q_abs = o.mul_mat(b.lw(il, "attn_k_b"), q_nope)
        q_abs = o.permute(q_abs, 0, 2, 1, 3)
        q_cur = o.concat(q_abs, q_pe, 0)
        kv_cmpr = o.reshape(kv_cmpr, kv_lora, 1, T_)
        k_cur = o.concat(kv_cmpr, k_pe, 0)
        v_cur = kv_cmpr
        # build_attn(llm_graph_input_attn_k): q, v, k, store K only
        b.expand(q_cur)
        b.expand(v_cur)
        b.expand(k_cur)
        b.expand(b.cpy_k(il, k_cur, cache.k_idxs))
        k = b.get_k(il, cache)
        v = o.view(k, [v_cur.ne[0], k.ne[1], k.ne[2], k.ne[3]], [k.nb[1], k.nb[2], k.nb[3]], 0)
        cur = b.mha(q_cur, k, v, cache.mask, il, v_mla=b.lw(il, "attn_v_b"))
        b.cb(cur, "kqv_out", il)
        cur = o.mul_mat(b.lw(il, "attn_output"), cur)
        if il == n_layer - 1:
            cur = o.get_rows(cur, out_ids)
            inpSA = o.get_rows(inpSA, out_ids)
        ffn_inp = o.binary("ADD", cur, inpSA)
        cur = b.norm(ffn_inp, b.lw(il, "ffn_norm"), il)
        if il < n_dense or not b.has(il, "ffn_gate_inp"):
            cur = b.ffn(il, cur, b.lw(il, "ffn_up"), b.lw(il, "ffn_gate"), b.lw(il, "ffn_down"))
        else:
            norm_w = bool(b.md.get(f"{b.arch}.expert_weights_norm", False))
            moe = b.moe(il, cur, hp.n_expert, hp.n_expert_used, norm_w=norm_w,
                        w_scale=float(b.key("expert_weights_scale", 0.0)), gating=gating,
                        probs_b=b.lw(il, "exp_probs_b", "bias"))
            cur = o.binary("ADD", moe, b.shared_expert(il, cur))
        cur = o.binary("ADD", cur, ffn_inp)
        b.cb(cur, "l_out", il)
        inpL = cur
    b.output(inpL)


MLA = Family(build=build, mla=True)
FAMILIES = {"deepseek2": MLA, "deepseek2ocr": MLA, "glm4moe_lite": MLA}
