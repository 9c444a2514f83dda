"""cohere2 (``src/models/cohere2.cpp``)."""

from __future__ import annotations

from llamasplit.memory.graph.builder import Builder
from llamasplit.memory.graph.family import Family


def build_cohere2(b: Builder) -> None:
    """src/models/cohere2.cpp: layer norm, attention and FFN in parallel on the same normed
    input, RoPE on the sliding-window layers only, logits scaled."""
    o = b.o
    hp = b.hp
    inpL = b.inp_embd()
    inp_pos = b.inp_pos()
    base = b.cache(False, True, rot=False)
    swa_cache = b.cache(True, True, rot=False)
    base.k_rot, base.v_rot = b.rot_inputs()
    swa_cache.k_rot, swa_cache.v_rot = b.rot_inputs()
    out_ids = b.inp_out_ids()
    n_layer = hp.n_layer_kv
    for il in b.ctx.layers:
        cur = b.norm(inpL, b.lw(il, "attn_norm"), il, b.lw(il, "attn_norm", "bias"), kind="NORM")
        ffn_inp = cur
        hd_k, hd_v = b.n_embd_head_k(il), b.n_embd_head_v(il)
        q, k, v = b.qkv(il, cur, hp.n_head[il], hp.n_head_kv[il], hd_k, hd_v)
        if hp.is_swa[il]:
            q = o.rope(q, inp_pos, None)
            k = o.rope(k, inp_pos, None)
        cache = swa_cache if hp.is_swa[il] else base
        cur = b.attn(il, cache, b.lw(il, "attn_output"), b.lw(il, "attn_output", "bias"), q, k, v,
                     iswa=True)
        if il == n_layer - 1:
            cur = o.get_rows(cur, out_ids)
            inpL = o.get_rows(inpL, out_ids)
            ffn_inp = o.get_rows(ffn_inp, out_ids)
        attn_out = cur
        cur = b.ffn(il, ffn_inp, b.lw(il, "ffn_up"), b.lw(il, "ffn_gate"), b.lw(il, "ffn_down"))
        cur = o.binary("ADD", cur, inpL)
        cur = o.binary("ADD", cur, attn_out)
        b.cb(cur, "l_out", il)
        inpL = cur
    b.output(inpL)


FAMILIES = {"cohere2": Family(build=build_cohere2, norm="NORM")}
