"""Recurrent-state blocks: the recurrent memory's inputs and state tensors
(``src/llama-graph.cpp`` ``build_rs_inp_impl``, ``build_rs``; ``src/llama-memory-recurrent.cpp``),
the Mamba-2 layer (``src/models/mamba-base.cpp`` ``build_mamba2_layer``) and LFM2's short
convolution (``src/models/lfm2.cpp`` ``build_shortconv_block``).

The worst-case graph is built against the full memory (``llama_memory_recurrent_context`` with
``is_full``): ``n_rs`` = the memory's size, ``head`` = 0, ``rs_z`` = 0; the memory holds
``max(1, n_seq_max)`` cells (``llama-model.cpp`` ``create_memory``), the ubatch ``n_seq_max``
sequences of ``n_tokens / n_seq_max`` tokens (``llama_context::graph_reserve``). With
``n_rs_seq`` rollback snapshots (speculative decoding on an arch that rolls back,
``llm_arch_supports_rs_rollback``) each state tensor holds ``mem_size * (1 + n_rs_seq)`` rows and
the Mamba-2 and short-conv blocks write ``K = n_rs_seq + 1`` slots (``min(n_seq_tokens, K)`` copies).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from llamasplit.memory.graph.base import BuilderBase
from llamasplit.memory.graph.ggml import F32, I32, T, row_size


@dataclass
class Rs:
    """``llm_graph_input_rs``: the state-copy indices of the recurrent memory."""

    n_rs: int
    s_copy_main: T
    s_copy_extra: T


class Ssm(BuilderBase):
    """The recurrent blocks of the builder."""

    def rs_inputs(self) -> Rs:
        """build_rs_inp_impl: ``rs_s_copy`` (I32, ``n_rs``) and its two views."""
        n_rs = max(1, self.ctx.n_seqs)
        n_seqs = self.ctx.n_seqs
        s_copy = self.o.input("rs_s_copy", I32, [n_rs])
        main = self.o.view(s_copy, [n_seqs], None, 0)
        extra = self.o.view(s_copy, [n_rs - n_seqs], None, n_seqs * s_copy.nb[0])
        return Rs(n_rs=n_rs, s_copy_main=main, s_copy_extra=extra)

    def n_embd_r(self) -> int:
        """llama-hparams.cpp n_embd_r: LFM2's ``n_embd * (l_cache - 1)``, else Mamba's conv state."""
        hp = self.hp
        if hp.n_shortconv_l_cache:
            return hp.n_embd * (hp.n_shortconv_l_cache - 1)
        return (max(hp.ssm_d_conv, 1) - 1) * (hp.ssm_d_inner + 2 * hp.ssm_n_group * hp.ssm_d_state)

    def n_embd_s(self) -> int:
        """llama-hparams.cpp n_embd_s: Mamba's ssm state ``d_state * d_inner``."""
        return self.hp.ssm_d_state * self.hp.ssm_d_inner

    def state_tensor(self, il: int, kind: str) -> T:
        """``cache_r_l{il}`` / ``cache_s_l{il}``: F32 ``{n_embd_r or n_embd_s, mem_size}`` in the
        layer's device buffer (the CPU's without KV offload), llama_memory_recurrent's constructor."""
        key = (il, kind)
        if key not in self.kv:
            width = self.n_embd_r() if kind == "r" else self.n_embd_s()
            t = T(self.g, "NONE", F32, [width, max(1, self.ctx.n_seqs) * (1 + self.ctx.n_rs_seq)])
            t.name = f"cache_{kind}_l{il}"
            t.owner = self.ctx.layer_backend[il] if self.ctx.offload_kqv else self.ctx.cpu
            self.kv[key] = t
        return self.kv[key]

    def build_rs(self, rs: Rs, s: T, state_size: int,
                 get_rows: Callable[[T, T], T] | None = None) -> T:
        """llm_graph_context::build_rs: clear the zero state, gather the sequences' states, copy
        the others (none in the worst case: ``n_rs == n_seqs``)."""
        o = self.o
        n_seqs = self.ctx.n_seqs
        states = o.reshape(s, state_size, s.ne[1])
        zero = o.view(states, [state_size], None, 0)  # rs_z = 0
        self.expand(o.scale_inplace(zero))
        out = get_rows(states, rs.s_copy_main) if get_rows is not None else o.get_rows(states, rs.s_copy_main)
        self.expand(out)
        extra = o.get_rows(states, rs.s_copy_extra)
        dst = o.view(s, [state_size, rs.n_rs - n_seqs], [s.nb[1]], n_seqs * s.nb[1])
        self.expand(o.cpy(extra, dst))
        return out

    def mamba2_layer(self, rs: Rs, cur: T, il: int) -> T:
        """mamba-base.cpp build_mamba2_layer: in-projection, causal conv over the conv state,
        the selective scan over the ssm state, D skip, SiLU gate by z, grouped RMS norm, out-projection."""
        o = self.o
        hp = self.hp
        d_conv, d_inner, d_state = hp.ssm_d_conv, hp.ssm_d_inner, hp.ssm_d_state
        n_head = hp.ssm_dt_rank
        head_dim = d_inner // n_head
        n_group = hp.ssm_n_group
        n_seqs = self.ctx.n_seqs
        n_seq_tokens = self.ctx.n_tokens // n_seqs
        conv_dim = d_inner + 2 * n_group * d_state
        k_slots = self.ctx.n_rs_seq + 1 if self.ctx.n_rs_seq > 0 else 1
        n_written = min(n_seq_tokens, k_slots)
        mem_size = max(1, n_seqs)
        r_all, s_all = self.state_tensor(il, "r"), self.state_tensor(il, "s")
        state_slots = s_all.ne[1]
        conv = self.build_rs(rs, r_all, self.n_embd_r())
        conv = o.reshape(conv, d_conv - 1, conv_dim, n_seqs)
        zxbcdt = o.mul_mat(self.lw(il, "ssm_in"), cur)
        zxbcdt = o.reshape(zxbcdt, zxbcdt.ne[0], n_seq_tokens, n_seqs)
        f = row_size(zxbcdt.type, 1)
        z = o.view(zxbcdt, [head_dim, n_head, n_seq_tokens, n_seqs], [head_dim * f, zxbcdt.nb[1], zxbcdt.nb[2]], 0)
        xbc = o.view(zxbcdt, [conv_dim, n_seq_tokens, n_seqs], [zxbcdt.nb[1], zxbcdt.nb[2]], d_inner * f)
        dt = o.view(zxbcdt, [n_head, n_seq_tokens, n_seqs], [zxbcdt.nb[1], zxbcdt.nb[2]],
                    (2 * d_inner + 2 * n_group * d_state) * f)
        conv_x = o.concat(conv, o.transpose(xbc), 0)
        # the last d_conv - 1 columns back into the conv state, one copy per rollback slot
        row_count = (d_conv - 1) * conv_dim
        for slot in range(n_written):
            last = o.view(conv_x, [d_conv - 1, conv_dim, n_seqs], [conv_x.nb[1], conv_x.nb[2]],
                          (n_seq_tokens - slot) * conv_x.nb[0])
            dst = o.view(r_all, [row_count, n_seqs], [r_all.nb[1]], slot * mem_size * r_all.nb[1])
            self.expand(o.cpy(last, dst))
        xbc = o.ssm_conv(conv_x, self.lw(il, "ssm_conv1d"))
        xbc = o.binary("ADD", xbc, self.lw(il, "ssm_conv1d", "bias"))
        xbc = o.unary("UNARY", xbc)  # silu
        fx = row_size(xbc.type, 1)
        x = o.view(xbc, [head_dim, n_head, n_seq_tokens, n_seqs], [head_dim * fx, xbc.nb[1], xbc.nb[2]], 0)
        b_ = o.view(xbc, [d_state, n_group, n_seq_tokens, n_seqs], [d_state * fx, xbc.nb[1], xbc.nb[2]],
                    d_inner * fx)
        c_ = o.view(xbc, [d_state, n_group, n_seq_tokens, n_seqs], [d_state * fx, xbc.nb[1], xbc.nb[2]],
                    (d_inner + n_group * d_state) * fx)
        dt = o.binary("ADD", o.cont(dt), self.lw(il, "ssm_dt", "bias"))
        a = self.w(f"blk.{il}.ssm_a")

        def ssm_rows(states: T, ids: T) -> T:
            ssm = o.reshape(states, d_state, head_dim, n_head, state_slots)
            return o.ssm_scan(ssm, x, dt, a, b_, c_, ids, k_slots)

        y_ssm = self.build_rs(rs, s_all, self.n_embd_s(), ssm_rows)
        d = d_state * d_inner
        y_row = row_size(y_ssm.type, d)
        state_offset = x.nelements() * row_size(x.type, 1)
        src = o.view(y_ssm, [d, n_seqs, n_written], [y_row, y_row * n_seqs], state_offset)
        dst = o.view(s_all, [d, n_seqs, n_written], [s_all.nb[1], mem_size * row_size(s_all.type, d)], 0)
        self.expand(o.cpy(src, dst))
        y = o.view(y_ssm, [head_dim, n_head, n_seq_tokens, n_seqs],
                   [x.nb[1], n_head * x.nb[1], n_seq_tokens * n_head * x.nb[1]], 0)
        y = o.binary("ADD", y, o.binary("MUL", x, self.w(f"blk.{il}.ssm_d")))
        y = o.glu(o.cont(z), y)  # ggml_swiglu_split(z, y)
        norm = self.lw(il, "ssm_norm")
        if norm is not None:
            y = o.reshape(y, d_inner // n_group, n_group, n_seq_tokens, n_seqs)
            y = self.norm(y, norm, il)
        y = o.reshape(y, d_inner, n_seq_tokens * n_seqs)
        cur = o.mul_mat(self.lw(il, "ssm_out"), y)
        return self.cb(cur, "mamba_out", il)

    def mamba_layer(self, rs: Rs, cur: T, il: int) -> T:
        """mamba-base.cpp build_mamba_layer (Mamba-1, one head per channel): in-projection into x
        and z, causal conv over the conv state, x_db projection into dt, B, C (RMS-normed with
        ``ssm.dt_b_c_rms`` or their norm tensors, falcon-mamba), dt projection, the selective scan
        with ``{d_state, d_inner}`` decays, D skip, SiLU gate by z, out-projection."""
        o = self.o
        hp = self.hp
        d_conv, d_inner, d_state, dt_rank = hp.ssm_d_conv, hp.ssm_d_inner, hp.ssm_d_state, hp.ssm_dt_rank
        n_seqs = self.ctx.n_seqs
        n_seq_tokens = self.ctx.n_tokens // n_seqs
        r_all, s_all = self.state_tensor(il, "r"), self.state_tensor(il, "s")
        conv = self.build_rs(rs, r_all, self.n_embd_r())
        conv = o.reshape(conv, d_conv - 1, d_inner, n_seqs)
        cur = o.reshape(cur, cur.ne[0], n_seq_tokens, n_seqs)
        xz = o.mul_mat(self.lw(il, "ssm_in"), cur)
        f = row_size(xz.type, 1)
        x = o.view(xz, [d_inner, xz.ne[1], xz.ne[2]], [xz.nb[1], xz.nb[2]], 0)
        z = o.view(xz, [d_inner, xz.ne[1], xz.ne[2]], [xz.nb[1], xz.nb[2]], d_inner * f)
        conv_x = o.concat(conv, o.transpose(x), 0)
        last = o.view(conv_x, [d_conv - 1, d_inner, n_seqs], [conv_x.nb[1], conv_x.nb[2]],
                      n_seq_tokens * conv_x.nb[0])
        self.expand(o.cpy(last, o.view(r_all, [(d_conv - 1) * d_inner * n_seqs], None, 0)))
        x = o.ssm_conv(conv_x, self.lw(il, "ssm_conv1d"))
        x = o.binary("ADD", x, self.lw(il, "ssm_conv1d", "bias"))
        x = o.unary("UNARY", x)  # silu
        x_db = o.mul_mat(self.lw(il, "ssm_x"), x)
        fd = row_size(x_db.type, 1)
        dt = o.view(x_db, [dt_rank, n_seq_tokens, n_seqs], [x_db.nb[1], x_db.nb[2]], 0)
        b_ = o.view(x_db, [d_state, 1, n_seq_tokens, n_seqs], [d_state * fd, x_db.nb[1], x_db.nb[2]], fd * dt_rank)
        c_ = o.view(x_db, [d_state, 1, n_seq_tokens, n_seqs], [d_state * fd, x_db.nb[1], x_db.nb[2]],
                    fd * (dt_rank + d_state))
        norms = [self.lw(il, n) for n in ("ssm_dt_norm", "ssm_b_norm", "ssm_c_norm")]
        if bool(self.md.get(f"{self.arch}.ssm.dt_b_c_rms", False)) or all(n is not None for n in norms):
            dt = self.norm(dt, norms[0], il)
            b_ = self.norm(b_, norms[1], il)
            c_ = self.norm(c_, norms[2], il)
        else:
            dt = o.cont(dt)
        dt = o.mul_mat(self.lw(il, "ssm_dt"), dt)
        dt = o.binary("ADD", dt, self.lw(il, "ssm_dt", "bias"))
        cur = x
        x = o.reshape(x, 1, d_inner, n_seq_tokens, n_seqs)
        a = self.w(f"blk.{il}.ssm_a")
        mem_size = s_all.ne[1]

        def ssm_rows(states: T, ids: T) -> T:
            return o.ssm_scan(o.reshape(states, d_state, 1, d_inner, mem_size), x, dt, a, b_, c_, ids)

        y_ssm = self.build_rs(rs, s_all, self.n_embd_s(), ssm_rows)
        n_state = d_state * d_inner * n_seqs
        self.expand(o.cpy(o.view(y_ssm, [n_state], None, x.nb[3] * x.ne[3]), o.view(s_all, [n_state], None, 0)))
        y = o.view(y_ssm, [d_inner, n_seq_tokens, n_seqs], [x.nb[2], x.nb[3]], 0)
        y = o.binary("ADD", y, o.binary("MUL", cur, self.w(f"blk.{il}.ssm_d")))
        y = o.glu(o.cont(z), y)  # ggml_swiglu_split(z, y)
        cur = o.mul_mat(self.lw(il, "ssm_out"), y)
        return o.reshape(cur, cur.ne[0], n_seq_tokens * n_seqs)

    def shortconv_layer(self, rs: Rs, cur: T, il: int) -> T:
        """lfm2.cpp build_shortconv_block (causal): in-projection into B, C, x; B*x transposed
        after the conv state; the state's last ``l_cache - 1`` columns stored; ``ssm_conv``; C * conv;
        out-projection."""
        o = self.o
        hp = self.hp
        n_embd = hp.n_embd
        n_seqs = self.ctx.n_seqs
        n_seq_tokens = self.ctx.n_tokens // n_seqs
        d_conv = hp.n_shortconv_l_cache - 1
        cur = o.reshape(cur, cur.ne[0], n_seq_tokens, n_seqs)
        bcx = o.mul_mat(self.lw(il, "shortconv.in_proj"), cur)
        chunk = bcx.ne[0] // 3
        f = row_size(bcx.type, 1)
        b_ = o.view(bcx, [chunk, bcx.ne[1], bcx.ne[2]], [bcx.nb[1], bcx.nb[2]], 0)
        c_ = o.view(bcx, [chunk, bcx.ne[1], bcx.ne[2]], [bcx.nb[1], bcx.nb[2]], chunk * f)
        x = o.view(bcx, [chunk, bcx.ne[1], bcx.ne[2]], [bcx.nb[1], bcx.nb[2]], 2 * chunk * f)
        bx = o.transpose(o.binary("MUL", b_, x))
        r_all = self.state_tensor(il, "r")
        conv = self.build_rs(rs, r_all, self.n_embd_r())
        conv = o.reshape(conv, d_conv, n_embd, n_seqs)
        bx = o.concat(conv, bx, 0)
        # slot 0 the final state, slot s the state s tokens back (causal: K = n_rs_seq + 1)
        k_slots = self.ctx.n_rs_seq + 1 if self.ctx.n_rs_seq > 0 else 1
        mem_size = max(1, n_seqs)
        for slot in range(min(n_seq_tokens, k_slots)):
            snap = o.view(bx, [d_conv, bx.ne[1], bx.ne[2]], [bx.nb[1], bx.nb[2]],
                          (bx.ne[0] - d_conv - slot) * row_size(bx.type, 1))
            dst = o.view(r_all, [d_conv * n_embd, n_seqs], [r_all.nb[1]], slot * mem_size * r_all.nb[1])
            self.expand(o.cpy(snap, dst))
        conv_out = o.ssm_conv(bx, self.lw(il, "shortconv.conv"))
        y = o.binary("MUL", c_, conv_out)
        y = o.mul_mat(self.lw(il, "shortconv.out_proj"), y)
        return o.reshape(y, y.ne[0], n_seq_tokens * n_seqs)
