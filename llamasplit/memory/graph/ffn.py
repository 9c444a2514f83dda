"""Feed-forward blocks (``src/llama-graph.cpp``: ``build_ffn``, ``build_moe_ffn``): dense FFN with
GLU, MoE routing, expert groups, the experts' three ``MUL_MAT_ID``s, weighting and sum, shared experts."""

from __future__ import annotations

from llamasplit.memory.graph.base import BuilderBase
from llamasplit.memory.graph.ggml import T


class Ffn(BuilderBase):
    """The feed-forward blocks of the builder."""

    def ffn(self, il: int, cur: T, up: T | None, gate: T | None, down: T | None,
            up_b: T | None = None, gate_b: T | None = None, down_b: T | None = None, par: bool = True) -> T:
        """build_ffn: up, gate (parallel or sequential), activation, down.

        SwiGLU and GeGLU are the same GLU op to the allocator: the activation does not matter.
        """
        o = self.o
        tmp = self.mm(up, cur, up_b) if up is not None else cur
        if gate is None and down is not None and tmp.ne[0] == 2 * down.ne[0]:
            # phi3: ffn_up holds gate and up (2 x n_ff rows), LLM_FFN_SWIGLU splits them
            return self.mm(down, o.glu_fused(tmp), down_b)
        if gate is not None:
            cur = self.mm(gate, tmp if not par else cur, gate_b)
            if par:
                cur = o.glu(cur, tmp)
            else:
                cur = o.unary("UNARY", cur)
        else:
            cur = o.unary("UNARY", tmp)
        if down is not None:
            cur = self.mm(down, cur, down_b)
        return cur

    def moe(self, il: int, cur: T, n_expert: int, n_used: int, *, norm_w: bool, w_scale: float,
            gating: str, probs_b: T | None) -> T:
        """build_moe_ffn: router, top-k experts, three MUL_MAT_IDs, weighting, sum of experts."""
        o = self.o
        n_embd, n_tok = cur.ne[0], cur.ne[1]
        logits = o.mul_mat(self.lw(il, "ffn_gate_inp"), cur)
        b = self.lw(il, "ffn_gate_inp", "bias")
        if b is not None:
            logits = o.binary("ADD", logits, b)
        if gating == "softmax":
            probs = o.soft_max(logits)
        elif gating == "sigmoid":
            probs = o.unary("UNARY", logits)
        else:
            probs = logits
        sel = probs
        if probs_b is not None:
            sel = o.binary("ADD", probs, probs_b)
        n_groups = int(self.key("expert_group_count", 0))
        if n_groups > 1 and n_tok > 0:
            n_per = n_expert // n_groups
            groups = o.reshape(sel, n_per, n_groups, n_tok)
            scores = o.argsort_top_k(groups, 2)
            scores = o.get_rows(o.reshape(groups, 1, groups.ne[0], groups.ne[1], groups.ne[2]), scores)
            scores = o.sum_rows(o.reshape(scores, scores.ne[1], scores.ne[2], scores.ne[3]))
            scores = o.reshape(scores, scores.ne[1], scores.ne[2])
            top = o.argsort_top_k(scores, int(self.key("expert_group_used_count", 1)))
            sel = o.get_rows(groups, top)
            filled = o.dup("FILL", groups, groups)
            sel = o.set_rows(filled, sel, top)
            sel = o.reshape(sel, n_expert, n_tok)
        selected = o.argsort_top_k(sel, n_used)
        probs = o.reshape(probs, 1, n_expert, n_tok)
        weights = o.get_rows(probs, selected)
        if gating == "softmax_weight":
            weights = o.reshape(weights, n_used, n_tok)
            weights = o.soft_max(weights)
            weights = o.reshape(weights, 1, n_used, n_tok)
        if norm_w:
            weights = o.reshape(weights, n_used, n_tok)
            wsum = o.sum_rows(weights)
            wsum = o.unary("CLAMP", wsum)
            weights = o.binary("DIV", weights, wsum)
            weights = o.reshape(weights, 1, n_used, n_tok)
        if w_scale not in (0.0, 1.0):
            weights = o.unary("SCALE", weights)
        self.expand(weights)
        cur = o.reshape(cur, n_embd, 1, n_tok)
        # llama-graph.cpp build_moe_ffn: llama4's weights are applied to the input
        weight_before_ffn = self.family.moe_weight_before_ffn
        if weight_before_ffn:
            cur = o.binary("MUL", o.repeat(cur, n_embd, n_used, n_tok, 1), weights)
        gate_up = self.lw(il, "ffn_gate_up_exps")
        if gate_up is not None:
            gu = o.mul_mat_id(gate_up, cur, selected)
            n_ff = gu.ne[0] // 2
            gate = o.view(gu, [n_ff, gu.ne[1], gu.ne[2]], [gu.nb[1], gu.nb[2]], 0)
            up = o.view(gu, [n_ff, gu.ne[1], gu.ne[2]], [gu.nb[1], gu.nb[2]], n_ff * gu.nb[0])
        else:
            up = o.mul_mat_id(self.lw(il, "ffn_up_exps"), cur, selected)
            up_b = self.lw(il, "ffn_up_exps", "bias")
            if up_b is not None:  # gpt-oss: expert biases (ggml_add_id)
                up = o.add_id(up, up_b, selected)
            gate_w = self.lw(il, "ffn_gate_exps")
            gate = o.mul_mat_id(gate_w, cur, selected) if gate_w is not None else up
            gate_b = self.lw(il, "ffn_gate_exps", "bias")
            if gate_b is not None:
                gate = o.add_id(gate, gate_b, selected)
        has_gate = gate is not up
        act = o.glu(gate, up) if has_gate else o.unary("UNARY", gate)
        experts = o.mul_mat_id(self.lw(il, "ffn_down_exps"), act, selected)
        down_b = self.lw(il, "ffn_down_exps", "bias")
        if down_b is not None:
            experts = o.add_id(experts, down_b, selected)
        if not weight_before_ffn:
            experts = o.binary("MUL", experts, weights)
        self.expand(experts)
        views = []
        for i in range(n_used):
            v = o.view(experts, [n_embd, n_tok], [experts.nb[2]], i * experts.nb[1])
            self.expand(v)
            views.append(v)
        out = views[0]
        for v in views[1:]:
            out = o.binary("ADD", out, v)
            self.expand(out)
        if n_used == 1:
            out = o.cont(out)
        return out

    def shared_expert(self, il: int, cur: T) -> T:
        up, gate, down = (self.lw(il, f"ffn_{x}_shexp") for x in ("up", "gate", "down"))
        return self.ffn(il, cur, up, gate, down)

    def norm_w(self) -> bool:
        value = self.md.get(f"{self.arch}.expert_weights_norm")
        if isinstance(value, bool):
            return value
        return self.family.expert_weights_norm

    def gating(self) -> str:
        """``{arch}.expert_gating_func`` (llama-hparams.h LLAMA_EXPERT_GATING_FUNC_TYPE_*); unset:
        the family's default (``Family.expert_gating``)."""
        gating_id = int(self.key("expert_gating_func", 0))
        if gating_id == 0:
            return self.family.expert_gating
        return {1: "softmax", 2: "sigmoid", 3: "softmax_weight"}.get(gating_id, "softmax")
