"""qwen3next (``src/models/qwen3next.cpp``): a hybrid of gated delta-net linear attention blocks
(a recurrent state per sequence, ``src/models/delta-net-base.cpp``) and gated full-attention
blocks (Q carries a gate of the same width), every block an MoE with a sigmoid-gated shared
expert, the output norm over every token (the MTP head's ``h_nextn``) before the rows are picked."""

from __future__ import annotations

from llamasplit.model.profile import ModelProfile
from llamasplit.memory.graph.base import Cache
from llamasplit.memory.graph.builder import Builder
from llamasplit.memory.graph.family import Family
from llamasplit.memory.graph.ggml import F32, FLAG_OUTPUT, I32, T, row_size


class _Rs:
    """build_rs_inp_impl (src/llama-graph.cpp): the state-copy input of the recurrent memory. At
    reservation the memory context is full (llama-memory-recurrent.cpp: ``get_n_rs`` = size,
    ``get_head`` = 0, ``get_rs_z`` = 0)."""

    def __init__(self, b: Builder) -> None:
        o = b.o
        c = b.ctx
        self.n_seqs = c.n_seqs
        self.n_rs = max(1, c.n_seqs)  # recurrent_kv_size = max(1, n_seq_max) (llama-model.cpp create_memory)
        self.s_copy = o.input("rs_s_copy", I32, [self.n_rs])
        self.main = o.view(self.s_copy, [self.n_seqs], None, 0)
        self.extra = o.view(self.s_copy, [self.n_rs - self.n_seqs], None, self.n_seqs * 4)


def _state(b: Builder, il: int, kind: str, width: int, n_rs: int) -> T:
    """cache_r_l / cache_s_l: F32 ``[width, mem_size]`` in the layer's RS buffer (llama-memory-recurrent.cpp)."""
    key = (il, kind)
    if key not in b.kv:
        t = T(b.g, "NONE", F32, [width, n_rs])
        t.name = f"cache_{kind}_l{il}"
        t.owner = b.ctx.layer_backend[il] if b.ctx.offload_kqv else b.ctx.cpu
        b.kv[key] = t
    return b.kv[key]


def _cpy(b: Builder, a: T, dst: T) -> T:
    """ggml_cpy: a view of ``dst`` computed from ``a``."""
    return b.o.view_tensor(dst, "CPY", a, dst)


def _build_rs(b: Builder, rs: _Rs, s: T, state_size: int) -> T:
    """llm_graph_context::build_rs: zero one state, gather the sequences' states, copy the rest."""
    o = b.o
    states = o.reshape(s, state_size, s.ne[1])
    zero = o.view(states, [state_size], None, 0)
    b.expand(o.view_tensor(zero, "SCALE", zero))  # ggml_scale_inplace(state_zero, 0)
    out = o.get_rows(states, rs.main)
    b.expand(out)
    extra = o.get_rows(states, rs.extra)
    dst = o.view(s, [state_size, rs.n_rs - rs.n_seqs], [s.nb[1]], rs.n_seqs * s.nb[1])
    b.expand(_cpy(b, extra, dst))
    return out


def _linear_attn(b: Builder, rs: _Rs, cur: T, il: int) -> T:
    """build_layer_attn_linear: the fused QKV path (``attn_qkv`` + ``attn_gate``), beta and the
    decay gate, the short convolution over the conv state, L2-normed Q/K, ``ggml_gated_delta_net``
    (llama-context.cpp: ``fused_gdn_ar`` and ``fused_gdn_ch`` are on), the gated RMS norm, ``ssm_out``."""
    o = b.o
    hp = b.hp
    T_ = b.ctx.n_tokens
    n_s = rs.n_seqs
    n_st = T_ // n_s
    head_k = hp.ssm_d_state
    n_k = hp.ssm_n_group
    n_v = hp.ssm_dt_rank
    head_v = hp.ssm_d_inner // n_v
    d_conv = hp.ssm_d_conv
    conv_ch = hp.ssm_d_inner + 2 * n_k * head_k
    n_embd_r = (d_conv - 1) * conv_ch
    n_embd_s = hp.ssm_d_state * hp.ssm_d_inner
    wqkv = b.lw(il, "attn_qkv")
    if wqkv is not None:
        qkv = o.mul_mat(wqkv, cur)
        qkv = o.reshape(qkv, qkv.ne[0], n_st, n_s)
        z = o.mul_mat(b.lw(il, "attn_gate"), cur)
    else:  # legacy ssm_in: one projection split into q, k, v, z
        mixed = o.mul_mat(b.lw(il, "ssm_in"), cur)
        per = 2 * head_k + 2 * head_v * (n_v // n_k)
        mixed = o.reshape(mixed, per, n_k, n_st, n_s)
        nb = [mixed.nb[1], mixed.nb[2], mixed.nb[3]]
        f = row_size(mixed.type, 1)
        vz = head_v * n_v // n_k
        q = o.view(mixed, [head_k, n_k, n_st, n_s], nb, 0)
        k = o.view(mixed, [head_k, n_k, n_st, n_s], nb, head_k * f)
        v = o.view(mixed, [vz, n_k, n_st, n_s], nb, 2 * head_k * f)
        z = o.view(mixed, [vz, n_k, n_st, n_s], nb, (2 * head_k + vz) * f)
        z = o.cont(z)
        qf = o.cont(q, head_k * n_k, n_st, n_s)
        kf = o.cont(k, head_k * n_k, n_st, n_s)
        vf = o.cont(v, head_v * n_v, n_st, n_s)
        qkv = o.concat(o.concat(qf, kf, 0), vf, 0)
    ba = o.mul_mat(b.lw(il, "ssm_ba"), cur)
    per_k = n_v // n_k
    ba = o.reshape(ba, 2 * per_k, n_k, n_st, n_s)
    nb = [ba.nb[1], ba.nb[2], ba.nb[3]]
    beta = o.view(ba, [per_k, n_k, n_st, n_s], nb, 0)
    alpha = o.view(ba, [per_k, n_k, n_st, n_s], nb, per_k * row_size(ba.type, 1))
    beta = o.cont(beta)
    beta = o.unary("UNARY", beta)  # sigmoid
    alpha = o.cont(alpha, n_v, n_st, n_s)
    alpha = o.binary("ADD", alpha, b.lw(il, "ssm_dt", "bias"))
    alpha = o.unary("UNARY", alpha)  # softplus
    gate = o.binary("MUL", alpha, b.w(f"blk.{il}.ssm_a"))
    beta = o.reshape(beta, 1, n_v, n_st, n_s)
    gate = o.reshape(gate, 1, n_v, n_st, n_s)
    conv_all = _state(b, il, "r", n_embd_r, rs.n_rs)
    ssm_all = _state(b, il, "s", n_embd_s, rs.n_rs)
    # build_conv_state (delta-net-base.cpp), n_rs_seq = 0
    conv_states = _build_rs(b, rs, conv_all, n_embd_r)
    conv_states = o.reshape(conv_states, d_conv - 1, conv_ch, n_s)
    conv_in = o.concat(conv_states, o.transpose(qkv), 0)
    last = o.view(conv_in, [d_conv - 1, conv_ch, n_s], [conv_in.nb[1], conv_in.nb[2]],
                  row_size(conv_in.type, conv_in.ne[0] - conv_states.ne[0]))
    update = o.view(conv_all, [n_embd_r, n_s], [conv_all.nb[1]], 0)
    b.expand(_cpy(b, last, update))
    state = _build_rs(b, rs, ssm_all, n_embd_s)
    state = o.reshape(state, head_v, head_v, n_v, n_s)
    conv = o.new("SSM_CONV", F32, [conv_ch, n_st, n_s], conv_in, b.lw(il, "ssm_conv1d"))
    conv = o.unary("UNARY", conv)  # silu
    f = row_size(conv.type, 1)
    nb1 = row_size(conv.type, head_k * n_k * 2 + head_v * n_v)
    q = o.view(conv, [head_k, n_k, n_st, n_s], [f * head_k, nb1, nb1 * n_st], 0)
    k = o.view(conv, [head_k, n_k, n_st, n_s], [f * head_k, nb1, nb1 * n_st], head_k * n_k * f)
    v = o.view(conv, [head_v, n_v, n_st, n_s], [f * head_v, nb1, nb1 * n_st], 2 * head_k * n_k * f)
    q = o.unary("SCALE", o.rms_norm(q))  # build_gdn_l2_norm (models.h)
    k = o.unary("SCALE", o.rms_norm(k))
    if n_k != n_v:
        rf = n_v // n_k
        qr = o.reshape(q, head_k, 1, n_k, n_st * n_s)
        kr = o.reshape(k, head_k, 1, n_k, n_st * n_s)
        qr = o.repeat(qr, head_k, rf, n_k, n_st * n_s)
        kr = o.repeat(kr, head_k, rf, n_k, n_st * n_s)
        q = o.reshape(qr, head_k, n_v, n_st, n_s)
        k = o.reshape(kr, head_k, n_v, n_st, n_s)
    # build_recurrent_attn -> build_delta_net_fused: ggml_gated_delta_net with K = 1 snapshot
    s_v = v.ne[0]
    res = o.new("GATED_DELTA_NET", F32, [s_v * n_v, n_st * n_s + s_v * n_s], q, k, v, gate, beta, state)
    r = lambda n: row_size(F32, n)  # noqa: E731
    out = o.view(res, [s_v, n_v, n_st, n_s], [r(s_v), r(s_v * n_v), r(s_v * n_v * n_st)], 0)
    new_state = o.view(res, [s_v, s_v, n_v, n_s], [r(s_v), r(s_v * s_v), r(s_v * s_v * n_v)],
                       r(s_v * n_v * n_st * n_s))
    b.expand(_cpy(b, new_state, o.view(ssm_all, [n_embd_s, n_s], [ssm_all.nb[1]], 0)))
    z = o.reshape(z, head_v, n_v, n_st, n_s)
    normed = b.norm(out, b.lw(il, "ssm_norm"), il)  # build_norm_gated
    cur = o.binary("MUL", normed, o.unary("UNARY", z))
    cur = o.reshape(cur, head_v * n_v, n_st, n_s)
    cur = o.mul_mat(b.lw(il, "ssm_out"), cur)
    return o.reshape(cur, hp.n_embd, n_st * n_s)


def _full_attn(b: Builder, cache: Cache, cur: T, inp_pos: T, il: int) -> T:
    """build_layer_attn: Q and its gate from one projection, Q/K norms, RoPE, attention, the
    sigmoid gate, the output projection."""
    o = b.o
    hp = b.hp
    T_ = b.ctx.n_tokens
    hd = hp.n_embd_head_v
    n_head, n_kv = hp.n_head[il], hp.n_head_kv[il]
    q_full = o.mul_mat(b.lw(il, "attn_q"), cur)  # build_qkv(..., reshape = false): separate Q/K/V
    k = o.mul_mat(b.lw(il, "attn_k"), cur)
    v = o.mul_mat(b.lw(il, "attn_v"), cur)
    q_full = o.reshape(q_full, hd * 2, n_head, T_, 1)
    nb = [q_full.nb[1], q_full.nb[2], q_full.nb[3]]
    q = o.view(q_full, [hd, n_head, T_, 1], nb, 0)
    gate = o.view(q_full, [hd, n_head, T_, 1], nb, hd * row_size(q_full.type, 1))
    k = o.reshape(k, hd, n_kv, T_)
    v = o.reshape(v, hd, n_kv, T_)
    q = b.norm(q, b.lw(il, "attn_q_norm"), il)
    k = b.norm(k, b.lw(il, "attn_k_norm"), il)
    q = o.rope(q, inp_pos, None)
    k = o.rope(k, inp_pos, None)
    cur = b.attn(il, cache, None, None, q, k, v, iswa=False)
    gate = o.cont(gate, hd * n_head, T_)
    gate = o.unary("UNARY", gate)  # sigmoid
    cur = o.binary("MUL", cur, gate)
    return o.mul_mat(b.lw(il, "attn_output"), cur)


def _ffn(b: Builder, cur: T, il: int) -> T:
    """build_layer_ffn: softmax-routed experts (weights renormalised), plus the shared expert
    times ``sigmoid(ffn_gate_inp_shexp . x)``."""
    o = b.o
    hp = b.hp
    if not b.has(il, "ffn_gate_inp"):
        return b.ffn(il, cur, b.lw(il, "ffn_up"), b.lw(il, "ffn_gate"), b.lw(il, "ffn_down"))
    moe = b.moe(il, cur, hp.n_expert, hp.n_expert_used, norm_w=True,
                w_scale=float(b.key("expert_weights_scale", 0.0)), gating="softmax", probs_b=None)
    if not b.has(il, "ffn_up_shexp"):
        return moe
    shexp = b.shared_expert(il, cur)
    shared_gate = o.mul_mat(b.lw(il, "ffn_gate_inp_shexp"), cur)
    shared_gate = o.unary("UNARY", shared_gate)  # sigmoid
    shexp = o.binary("MUL", shexp, shared_gate)
    return o.binary("ADD", moe, shexp)


def build_qwen3next(b: Builder) -> None:
    """llama_model_qwen3next::graph: the trunk blocks (MTP blocks are not run by the main graph)."""
    o = b.o
    hp = b.hp
    inpL = b.inp_embd()
    rs = _Rs(b)  # build_inp_mem_hybrid: the recurrent input, then the attention one
    cache = b.cache(False, True, rot=False)
    cache.k_rot, cache.v_rot = b.rot_inputs()
    inp_pos = b.inp_pos()
    out_ids = b.inp_out_ids()
    for il in b.ctx.layers:
        inpSA = inpL
        cur = b.norm(inpL, b.lw(il, "attn_norm"), il)
        b.cb(cur, "attn_norm", il)
        b.expand(cur)
        if hp.is_recurrent[il]:
            cur = _linear_attn(b, rs, cur, il)
        else:
            cur = _full_attn(b, cache, cur, inp_pos, il)
        # cparams.embeddings_nextn_masked is false (llama-context.cpp): no row pick at the last block
        cur = o.binary("ADD", cur, inpSA)
        residual = cur
        post = b.norm(cur, b.lw(il, "post_attention_norm"), il)
        cur = _ffn(b, post, il)
        cur = o.binary("ADD", cur, residual)
        b.cb(cur, "l_out", il)
        inpL = cur
    # the post-norm hidden state of every token is the MTP head's input (t_h_nextn, an output)
    h = b.norm(inpL, b.w("output_norm.weight"), -1)
    b.cb(h, "h_nextn", -1)
    h.flags |= FLAG_OUTPUT
    cur = o.get_rows(h, out_ids)
    b.cb(cur, "result_norm", -1)
    b.t_embd = cur
    out_w = b.w("output.weight")
    cur = o.mul_mat(out_w if out_w is not None else b.tied_output(), cur)
    b.cb(cur, "result_output", -1)
    b.t_logits = cur
    b.expand(cur)


def replayable(model: ModelProfile) -> bool:
    """The trunk blocks have what ``build_qwen3next`` reads, and the delta-net shapes divide
    (``load_arch_tensors``: head_v_dim = d_inner / n_v_heads, n_v_heads a multiple of n_k_heads)."""
    hp = model.hparams
    names = {t.name for t in model.tensors}
    n_k, n_v = hp.ssm_n_group, hp.ssm_dt_rank
    if hp.ssm_d_conv < 1 or not n_k or not n_v or n_v % n_k or hp.ssm_d_inner % n_v:
        return False
    for il in range(hp.n_layer_kv):
        def has(stem: str) -> bool:
            return f"blk.{il}.{stem}.weight" in names
        if hp.is_recurrent[il]:
            attn = ((has("attn_qkv") and has("attn_gate")) or has("ssm_in")) and all(
                has(x) for x in ("ssm_conv1d", "ssm_ba", "ssm_norm", "ssm_out"))
            attn = attn and f"blk.{il}.ssm_a" in names and f"blk.{il}.ssm_dt.bias" in names
        else:
            attn = all(has(x) for x in ("attn_q", "attn_k", "attn_v", "attn_output", "attn_q_norm", "attn_k_norm"))
        experts = has("ffn_gate_inp") and has("ffn_up_exps") and has("ffn_gate_exps") and has("ffn_down_exps")
        if not (attn and has("attn_norm") and has("post_attention_norm") and (experts or has("ffn_down"))):
            return False
    return "output_norm.weight" in names


FAMILIES = {"qwen3next": Family(build=build_qwen3next, replayable=replayable)}
