"""The MTP draft head's graph (``LLM_GRAPH_TYPE_DECODER_MTP``), reserved by the MTP context that
``--spec-type draft-mtp`` creates beside the main one (``memory.mtp``): the token's embedding and
the trunk's last hidden state, each RMS-normed, concatenated and projected (``nextn.eh_proj``),
one block on the NextN layer's weights with its own KV cache, the shared head norm, the LM head.

Two shapes, as the pinned llama.cpp builds them:

- ``build_mtp_glm4moe`` (src/models/glm4-moe.cpp ``graph_mtp``): Q/K/V with biases, optional Q/K
  norms, attention with its output projection, sigmoid-routed experts plus the shared expert,
  the rows picked after the head norm;
- ``build_mtp_qwen3next`` (src/models/qwen3next.cpp ``graph_mtp``): Q with its gate from one
  projection, Q/K norms, the sigmoid gate after attention, the rows picked before the residual,
  softmax-routed experts plus the sigmoid-gated shared expert.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from llamasplit.devices.device import Device
from llamasplit.model.profile import ModelProfile
from llamasplit.memory.graph.allocator import allocate_graph
from llamasplit.memory.graph.base import Ctx
from llamasplit.memory.graph.builder import Builder
from llamasplit.memory.graph.ggml import F32, FLAG_OUTPUT, I32, T, row_size
from llamasplit.memory.graph.registry import family_of
from llamasplit.memory.graph.replay import weight_backends
from llamasplit.memory.graph.scheduler import GGML_SCHED_MAX_COPIES, backends_of, schedule
from llamasplit.memory.kv import KvLayout, cache_type
from llamasplit.memory.settings import LlamaSettings

MTP_CACHE_TYPE = "f16"
"""The MTP context's cache type: the draft's ``-ctkd``/``-ctvd`` (common/common.h
``common_params_speculative_draft::cache_type_k``, default f16; ``common_base_params_to_speculative``)."""


def _inputs(b: Builder, il: int) -> tuple[T, T]:
    """llm_graph_input_embd_h: the draft tokens' embeddings (``nextn.embed_tokens`` if the block has
    one, else ``token_embd``) and the trunk's hidden state ``mtp_h_input``."""
    o = b.o
    n_tok = b.ctx.n_tokens
    tokens = o.input("inp_tokens", I32, [n_tok])
    emb_w = b.lw(il, "nextn.embed_tokens") or b.w("token_embd.weight")
    tok = o.get_rows(emb_w, tokens)
    h = o.input("mtp_h_input", F32, [b.hp.n_embd, n_tok])
    return tok, h


def _head(b: Builder, il: int, cur: T, out_ids: T | None) -> None:
    """The shared head norm (``nextn.shared_head_norm``, else ``output_norm``) as ``h_nextn`` (an
    output), then the LM head (``nextn.shared_head_head``, else ``output``)."""
    o = b.o
    norm_w = b.lw(il, "nextn.shared_head_norm") or b.w("output_norm.weight")
    cur = b.norm(cur, norm_w, -1)
    b.cb(cur, "h_nextn", -1)
    cur.flags |= FLAG_OUTPUT
    if out_ids is not None:
        cur = o.get_rows(cur, out_ids)
    head = b.lw(il, "nextn.shared_head_head") or b.w("output.weight")
    cur = o.mul_mat(head if head is not None else b.tied_output(), cur)
    b.cb(cur, "result_output", -1)
    b.t_logits = cur
    b.expand(cur)
    _sampling(b, cur)


DRAFT_TOP_K = 10
"""The draft-mtp implementation's backend sampler: ``llama_sampler_init_top_k(10)`` per sequence
(common/speculative.cpp ``common_speculative_impl_draft_mtp``, with ``backend_sampling``, default on)."""


def _sampling(b: Builder, logits: T) -> None:
    """llm_graph_context::build_sampling (src/llama-graph.cpp), which the MTP context's final
    reservation holds once draft-mtp has set a sampler on every sequence (``llama_set_sampler``):
    the logits padded by a dummy row, then per sequence a row's ``ggml_top_k`` and the chosen
    logits (``llama_sampler_top_k_backend_apply``), both outputs."""
    o = b.o
    n_vocab = logits.ne[0]
    padded = o.new("PAD", F32, [n_vocab, logits.ne[1] + 1], logits)
    for seq in range(b.ctx.n_seqs):
        row = o.view(padded, [n_vocab], None, 0)
        top = o.new("TOP_K", I32, [DRAFT_TOP_K], row)
        top.flags |= FLAG_OUTPUT
        chosen = o.get_rows(o.reshape(row, 1, n_vocab), top)
        chosen.flags |= FLAG_OUTPUT
        b.expand(logits)
        b.expand(chosen)
        b.expand(top)


def _prologue(b: Builder, il: int, with_v: bool = True):
    o = b.o
    tok, h = _inputs(b, il)
    inp_pos = b.inp_pos()
    out_ids = b.inp_out_ids()
    cache = b.cache(False, with_v, rot=False)
    cache.k_rot, cache.v_rot = b.rot_inputs()
    h_norm = b.norm(h, b.lw(il, "nextn.hnorm"), il)
    e_norm = b.norm(tok, b.lw(il, "nextn.enorm"), il)
    cur = o.mul_mat(b.lw(il, "nextn.eh_proj"), o.concat(e_norm, h_norm, 0))
    return cur, inp_pos, out_ids, cache


def build_mtp_glm4moe(b: Builder) -> None:
    """src/models/glm4-moe.cpp ``llama_model_glm4_moe::graph_mtp`` (the first NextN block)."""
    o = b.o
    hp = b.hp
    il = hp.n_layer_kv
    cur, inp_pos, out_ids, cache = _prologue(b, il)
    inpSA = cur
    cur = b.norm(cur, b.lw(il, "attn_norm"), il)
    hd = hp.n_embd_head_v
    q, k, v = b.qkv(il, cur, hp.n_head[il], hp.n_head_kv[il], hd, hd)
    if b.lw(il, "attn_q_norm") is not None:
        q = b.norm(q, b.lw(il, "attn_q_norm"), il)
    if b.lw(il, "attn_k_norm") is not None:
        k = b.norm(k, b.lw(il, "attn_k_norm"), il)
    q = o.rope(q, inp_pos, None)
    k = o.rope(k, inp_pos, None)
    cur = b.attn(il, cache, b.lw(il, "attn_output"), None, q, k, v, iswa=False)
    ffn_inp = o.binary("ADD", cur, inpSA)
    cur = b.norm(ffn_inp, b.lw(il, "post_attention_norm"), il)
    routed = b.moe(il, cur, hp.n_expert, hp.n_expert_used, norm_w=b.norm_w(),
                   w_scale=float(b.key("expert_weights_scale", 0.0)), gating=b.gating(),
                   probs_b=b.lw(il, "exp_probs_b", "bias"))
    cur = o.binary("ADD", routed, b.shared_expert(il, cur))
    cur = o.binary("ADD", cur, ffn_inp)
    _head(b, il, cur, out_ids)


def build_mtp_qwen3next(b: Builder) -> None:
    """src/models/qwen3next.cpp ``llama_model_qwen3next::graph_mtp`` (one NextN block)."""
    o = b.o
    hp = b.hp
    il = hp.n_layer_kv
    n_tok = b.ctx.n_tokens
    cur, inp_pos, out_ids, cache = _prologue(b, il)
    inpSA = cur
    cur = b.norm(cur, b.lw(il, "attn_norm"), il)
    hd = hp.n_embd_head_v
    n_head, n_kv = hp.n_head[il], hp.n_head_kv[il]
    q_full = o.mul_mat(b.lw(il, "attn_q"), cur)  # build_qkv(..., reshape = false)
    k = o.mul_mat(b.lw(il, "attn_k"), cur)
    v = o.mul_mat(b.lw(il, "attn_v"), cur)
    es = row_size(q_full.type, 1)
    q = o.view(q_full, [hd, n_head, n_tok], [es * hd * 2, es * hd * 2 * n_head], 0)
    q = b.norm(q, b.lw(il, "attn_q_norm"), il)
    k = b.norm(o.reshape(k, hd, n_kv, n_tok), b.lw(il, "attn_k_norm"), il)
    v = o.reshape(v, hd, n_kv, n_tok)
    q = o.rope(q, inp_pos, None)
    k = o.rope(k, inp_pos, None)
    cur = b.attn(il, cache, None, None, q, k, v, iswa=False)
    gate = o.view(q_full, [hd, n_head, n_tok], [es * hd * 2, es * hd * 2 * n_head], es * hd)
    gate = o.cont(gate, hd * n_head, n_tok)
    cur = o.binary("MUL", cur, o.unary("UNARY", gate))  # sigmoid
    cur = o.mul_mat(b.lw(il, "attn_output"), cur)
    cur = o.get_rows(cur, out_ids)
    inpSA = o.get_rows(inpSA, out_ids)
    cur = o.binary("ADD", cur, inpSA)
    residual = cur
    cur = b.norm(cur, b.lw(il, "post_attention_norm"), il)
    moe = b.moe(il, cur, hp.n_expert, hp.n_expert_used, norm_w=True,
                w_scale=float(b.key("expert_weights_scale", 0.0)), gating="softmax", probs_b=None)
    if b.has(il, "ffn_up_shexp"):
        shexp = b.shared_expert(il, cur)
        shared_gate = o.unary("UNARY", o.mul_mat(b.lw(il, "ffn_gate_inp_shexp"), cur))  # sigmoid
        moe = o.binary("ADD", moe, o.binary("MUL", shexp, shared_gate))
    cur = o.binary("ADD", moe, residual)
    _head(b, il, cur, None)


def build_mtp_deepseek2(b: Builder) -> None:
    """src/models/deepseek2.cpp ``llama_model_deepseek2::graph_mtp``: the block's MLA attention (Q
    through its LoRA, absorbed K, a K-only cache, ``attn_v_b`` after attention), sigmoid-routed
    experts with ``exp_probs_b`` plus the shared expert, the rows picked after the head norm."""
    o = b.o
    hp = b.hp
    il = hp.n_layer_kv
    n_tok = b.ctx.n_tokens
    n_head = hp.n_head[il]
    hd_k = hp.n_embd_head_k_mla
    rope = hp.n_rot
    nope = hd_k - rope
    kv_lora = hp.kv_lora_rank
    cur, inp_pos, out_ids, cache = _prologue(b, il, with_v=False)
    inpSA = cur
    cur = b.norm(cur, b.lw(il, "attn_norm"), il)
    q = o.mul_mat(b.lw(il, "attn_q_a"), cur)
    q = b.norm(q, b.lw(il, "attn_q_a_norm"), il)
    q = o.mul_mat(b.lw(il, "attn_q_b"), q)
    rq = row_size(q.type, hd_k)
    q_nope = o.view(q, [nope, n_head, n_tok], [rq, rq * n_head], 0)
    q_pe = o.view(q, [rope, n_head, n_tok], [rq, rq * n_head], row_size(q.type, nope))
    kv_pe = o.mul_mat(b.lw(il, "attn_kv_a_mqa"), cur)
    row = row_size(kv_pe.type, kv_lora + rope)
    kv_cmpr = o.view(kv_pe, [kv_lora, n_tok], [row], 0)
    k_pe = o.view(kv_pe, [rope, 1, n_tok], [row, row], row_size(kv_pe.type, kv_lora))
    kv_cmpr = b.norm(kv_cmpr, b.lw(il, "attn_kv_a_norm"), il)
    q_pe = o.rope(q_pe, inp_pos, None)
    k_pe = o.rope(k_pe, inp_pos, None)
    q_abs = o.permute(o.mul_mat(b.lw(il, "attn_k_b"), o.permute(q_nope, 0, 2, 1, 3)), 0, 2, 1, 3)
    q_cur = o.concat(q_abs, q_pe, 0)
    kv_cmpr = o.reshape(kv_cmpr, kv_lora, 1, n_tok)
    k_cur = o.concat(kv_cmpr, k_pe, 0)
    v_cur = kv_cmpr
    # build_attn(llm_graph_input_attn_k): q, v, k, store K only (graph/deepseek2.py)
    b.expand(q_cur)
    b.expand(v_cur)
    b.expand(k_cur)
    b.expand(b.cpy_k(il, k_cur, cache.k_idxs))
    k = b.get_k(il, cache)
    v = o.view(k, [v_cur.ne[0], k.ne[1], k.ne[2], k.ne[3]], [k.nb[1], k.nb[2], k.nb[3]], 0)
    cur = b.mha(q_cur, k, v, cache.mask, il, v_mla=b.lw(il, "attn_v_b"))
    cur = o.mul_mat(b.lw(il, "attn_output"), cur)
    ffn_inp = o.binary("ADD", cur, inpSA)
    cur = b.norm(ffn_inp, b.lw(il, "ffn_norm"), il)
    gating = {2: "sigmoid"}.get(int(b.key("expert_gating_func", 0)), "softmax")
    moe = b.moe(il, cur, hp.n_expert, hp.n_expert_used, norm_w=bool(b.md.get(f"{b.arch}.expert_weights_norm", False)),
                w_scale=float(b.key("expert_weights_scale", 0.0)), gating=gating,
                probs_b=b.lw(il, "exp_probs_b", "bias"))
    cur = o.binary("ADD", moe, b.shared_expert(il, cur))
    cur = o.binary("ADD", cur, ffn_inp)
    _head(b, il, cur, out_ids)


MTP_BUILDERS: dict[str, Callable[[Builder], None]] = {
    "glm4moe": build_mtp_glm4moe,
    "qwen3next": build_mtp_qwen3next,
    "deepseek2": build_mtp_deepseek2,
}
"""Archs whose MTP graph is replayed; the other MTP archs (``memory.mtp.MTP_ARCHS``) are estimated."""


def mtp_compute_bytes(model: ModelProfile, devices: Sequence[Device], layer_dev: Sequence[int | None],
                      settings: LlamaSettings, *, layout: KvLayout, n_ubatch: int, n_outputs: int,
                      flash: bool, type_k: str = MTP_CACHE_TYPE, type_v: str = MTP_CACHE_TYPE) -> list[int] | None:
    """The MTP context's compute buffer per device, then the host (last): its scheduler reserves
    the MTP graph the way the main context reserves its own (llama-context.cpp ``sched_reserve``,
    the same batch, slots, pipeline copies and pins; ``replay.compute_bytes``). ``None``: the
    arch's MTP graph is not replayed here. ``model`` has its NextN weights loaded."""
    build = MTP_BUILDERS.get(model.arch)
    if build is None:
        return None
    hp = model.hparams
    n_dev = len(devices)
    cpu = n_dev
    n_seq = settings.seq_count
    n_tokens = n_ubatch
    if n_tokens % n_seq:
        n_tokens = (n_tokens + n_seq - 1) // n_seq * n_seq
    full_offload = settings.n_gpu_layers is None or settings.n_gpu_layers < 0 or settings.n_gpu_layers > hp.n_layer
    ctx = Ctx(
        n_tokens=n_tokens, n_outputs=max(1, min(n_outputs, n_tokens)), n_seqs=n_seq, flash=flash,
        kv_unified=settings.unified, offload_kqv=settings.offload_kqv,
        type_k=int(cache_type(type_k)), type_v=int(cache_type(type_v)), cpu=cpu,
        layer_backend=[cpu if d is None else d for d in layer_dev],
        weight_backend=weight_backends(model, devices, layer_dev, settings), layout=layout,
        pin_norms=(n_tokens < 32 or full_offload),
    )
    ctx.layers = list(range(hp.n_layer_kv, hp.n_layer))
    b = Builder(model, ctx, family_of(model.arch))
    build(b)
    graph = b.finish()
    pipeline = n_dev > 1 and full_offload and settings.split_mode == "layer" and settings.offload_kqv \
        and not settings.effective_overrides
    backends = backends_of(devices)
    nodes, node_b, leafs, leaf_b = schedule(graph, backends, ctx.pins, GGML_SCHED_MAX_COPIES if pipeline else 1)
    return allocate_graph(nodes, node_b, leafs, leaf_b, backends, len(graph.all))
