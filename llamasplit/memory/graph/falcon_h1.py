"""falcon-h1 (``src/models/falcon-h1.cpp``): in every block attention (RoPE) and a Mamba-2 mixer
(``build_mamba2_layer``) run side by side, each on its own RMS norm of the block's input
(``attn_norm`` applied twice), their sum joins the residual; then ``ffn_norm`` (a tensor named
without ``.weight``) and a SwiGLU FFN. The memory is ``llama_memory_hybrid`` with every layer in
both caches (``build_inp_mem_hybrid``; llama-model.cpp ``create_memory``: both filters true)."""

from __future__ import annotations

from llamasplit.memory.graph.builder import Builder
from llamasplit.memory.graph.family import Family
from llamasplit.memory.graph.mamba2 import has_mamba2, mamba2_shapes_ok
from llamasplit.model.profile import ModelProfile


def check(model: ModelProfile) -> bool:
    hp = model.hparams
    names = {t.name for t in model.tensors}
    if hp.n_swa or not hp.parallel_ssm or not mamba2_shapes_ok(model):
        return False
    for il in range(hp.n_layer_kv):
        stems = ("attn_norm.weight", "attn_q.weight", "attn_k.weight", "attn_v.weight", "attn_output.weight",
                 "ffn_norm", "ffn_up.weight", "ffn_gate.weight", "ffn_down.weight")
        if not (has_mamba2(names, il) and all(f"blk.{il}.{s}" in names for s in stems)):
            return False
    return True


def build(b: Builder) -> None:
    o = b.o
    hp = b.hp
    inp_l = b.inp_embd()
    inp_pos = b.inp_pos()
    rs = b.rs_inputs()
    cache = b.cache(False, True, rot=False)
    cache.k_rot, cache.v_rot = b.rot_inputs()
    out_ids = b.inp_out_ids()
    n_layer = hp.n_layer_kv
    for il in b.ctx.layers:
        inp_sa = inp_l
        cur = b.norm(inp_l, b.lw(il, "attn_norm"), il)
        b.cb(cur, "attn_norm", il)
        q, k, v = b.qkv(il, cur, hp.n_head[il], hp.n_head_kv[il], b.n_embd_head_k(il), b.n_embd_head_v(il))
        q = o.rope(q, inp_pos, None)
        k = o.rope(k, inp_pos, None)
        attn_out = b.attn(il, cache, b.lw(il, "attn_output"), None, q, k, v, iswa=False)
        cur = b.norm(inp_l, b.lw(il, "attn_norm"), il)
        ssm_out = b.mamba2_layer(rs, cur, il)
        cur = o.binary("ADD", attn_out, ssm_out)
        inp_sa = o.binary("ADD", cur, inp_sa)
        if il == n_layer - 1:  # the rows of cur picked here are never used
            inp_sa = o.get_rows(inp_sa, out_ids)
        cur = b.norm(inp_sa, b.w(f"blk.{il}.ffn_norm"), il)
        cur = b.ffn(il, cur, b.lw(il, "ffn_up"), b.lw(il, "ffn_gate"), b.lw(il, "ffn_down"),
                    up_b=b.lw(il, "ffn_up", "bias"), gate_b=b.lw(il, "ffn_gate", "bias"),
                    down_b=b.lw(il, "ffn_down", "bias"))
        cur = o.binary("ADD", cur, inp_sa)
        b.cb(cur, "l_out", il)
        inp_l = cur
    b.output(inp_l)


FAMILIES = {"falcon-h1": Family(build=build, replayable=check)}
