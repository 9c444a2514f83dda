"""Attention blocks (``src/llama-graph.cpp``: ``build_attn_inp_kv(_iswa)``, ``build_attn``,
``build_attn_mha``; ``src/llama-kv-cache.cpp``: ``cpy_k``/``cpy_v``, ``get_k``/``get_v``, the Hadamard
rotations of a quantised cache): Q/K/V, the KV-cache stores and views, flash or plain attention."""

from __future__ import annotations

from llamasplit.memory.graph.base import BuilderBase, Cache
from llamasplit.memory.graph.ggml import F16, F32, I64, T, is_quantized, row_size


class Attention(BuilderBase):
    """The attention blocks of the builder."""

    def cache(self, swa: bool, with_v: bool, rot: bool) -> Cache:
        """build_attn_inp_kv(_iswa) / build_attn_inp_k: index, mask and rotation inputs of one cache."""
        c = self.ctx
        lay = c.layout
        kv_size = lay.swa_size if swa else lay.kv_size
        n_stream = lay.n_stream
        cache = Cache(n_kv=kv_size, kv_size=kv_size, n_stream=n_stream)
        o = self.o
        T_ = c.n_tokens
        cache.k_idxs = o.input("attn_inp_k_idxs", I64, [T_])
        if with_v:
            v_trans = not c.flash
            n_v = T_ * max(self.n_embd_v_gqa(il) for il in range(self.hp.n_layer_kv)) if v_trans else T_
            cache.v_idxs = o.input("attn_inp_v_idxs", I64, [n_v])
        mask_stream = 1 if c.kv_unified else c.n_seqs
        cache.mask = o.input("attn_inp_kq_mask", F16 if c.flash else F32, [kv_size, T_ // mask_stream, 1, mask_stream])
        if rot:
            cache.k_rot, cache.v_rot = self.rot_inputs()
        return cache

    def rot_inputs(self) -> tuple[T | None, T | None]:
        """build_input_k_rot / _v_rot: Hadamard rotations of a quantised cache (llama-kv-cache.cpp)."""
        heads_k = {self.n_embd_head_k(il) for il in range(self.hp.n_layer_kv)}
        heads_v = {self.n_embd_head_v(il) for il in range(self.hp.n_layer_kv)}
        head_k = heads_k.pop() if len(heads_k) == 1 else -1
        head_v = heads_v.pop() if len(heads_v) == 1 else -1
        k_rot = v_rot = None
        if head_k > 0 and is_quantized(self.ctx.type_k) and self.hp.n_embd_head_k % 64 == 0:
            nrot = 64
            while head_k % (nrot * 2) == 0:
                nrot *= 2
            k_rot = self.o.input("attn_inp_k_rot", F32, [nrot, nrot])
        if head_v > 0 and is_quantized(self.ctx.type_v) and self.hp.n_embd_head_v % 64 == 0:
            v_rot = self.o.input("attn_inp_v_rot", F32, [64, 64])
        return k_rot, v_rot

    def hadamard(self, cur: T, rot: T) -> T:
        o = self.o
        n = rot.ne[0]
        if not cur.is_contiguous():
            res = o.cont(cur, n, cur.nelements() // n)
        else:
            res = o.reshape(cur, n, cur.nelements() // n)
        res = o.mul_mat(rot, res)
        return o.reshape(res, *cur.ne)

    def qkv(self, il: int, cur: T, n_head: int, n_head_kv: int, hd_k: int, hd_v: int) -> tuple[T, T, T]:
        o = self.o
        T_ = self.ctx.n_tokens
        wqkv = self.lw(il, "attn_qkv")
        if wqkv is not None:
            qkv = self.mm(wqkv, cur, self.lw(il, "attn_qkv", "bias"))
            f = row_size(qkv.type, 1)
            q = o.view(qkv, [hd_k, n_head, T_], [f * hd_k, qkv.nb[1]], 0)
            k = o.view(qkv, [hd_k, n_head_kv, T_], [f * hd_k, qkv.nb[1]], f * hd_k * n_head)
            v = o.view(qkv, [hd_v, n_head_kv, T_], [f * hd_v, qkv.nb[1]], f * hd_k * (n_head + n_head_kv))
            return q, k, v
        q = self.mm(self.lw(il, "attn_q"), cur, self.lw(il, "attn_q", "bias"))
        k = self.mm(self.lw(il, "attn_k"), cur, self.lw(il, "attn_k", "bias"))
        v = self.mm(self.lw(il, "attn_v"), cur, self.lw(il, "attn_v", "bias"))
        return o.reshape(q, hd_k, n_head, T_), o.reshape(k, hd_k, n_head_kv, T_), o.reshape(v, hd_v, n_head_kv, T_)

    def cache_tensor(self, il: int, kind: str) -> T:
        """Layer il's K or V cache tensor: a leaf in the layer's (or the CPU's) KV buffer."""
        key = (il, kind)
        if key not in self.kv:
            lay = self.ctx.layout
            swa = self.hp.is_swa[il]
            cells = lay.swa_size if swa else lay.kv_size
            if kind == "k":
                width = self.n_embd_head_k(il) * self.hp.n_head_kv[il]
                typ = self.ctx.type_k
            else:
                width = self.n_embd_v_gqa(il)
                typ = self.ctx.type_v
            t = T(self.g, "NONE", typ, [width, cells, lay.n_stream])
            t.name = f"cache_{kind}_l{il}"
            t.owner = self.ctx.layer_backend[il] if self.ctx.offload_kqv else self.ctx.cpu
            self.kv[key] = t
        return self.kv[key]

    def cpy_k(self, il: int, k_cur: T, idxs: T) -> T:
        o = self.o
        k = self.cache_tensor(il, "k")
        n_gqa = k_cur.ne[0] * k_cur.ne[1]
        k_cur = o.view(k_cur, [n_gqa, k_cur.ne[2]], [k_cur.nb[2]], 0)
        if k.ne[2] > 1:
            k = o.reshape(k, n_gqa, k.ne[1] * k.ne[2])
        return o.set_rows(k, k_cur, idxs)

    def cpy_v(self, il: int, v_cur: T, idxs: T) -> T:
        o = self.o
        v = self.cache_tensor(il, "v")
        n_gqa = v_cur.ne[0] * v_cur.ne[1]
        n_tok = v_cur.ne[2]
        if self.ctx.flash:  # the V cache is not transposed
            v_cur = o.view(v_cur, [n_gqa, n_tok], [v_cur.nb[2]], 0)
            if v.ne[2] > 1:
                v = o.reshape(v, n_gqa, v.ne[1] * v.ne[2])
            return o.set_rows(v, v_cur, idxs)
        if row_size(v_cur.type, n_gqa) == v_cur.nb[2]:
            v_cur = o.reshape(v_cur, n_gqa, n_tok)
        else:
            v_cur = o.cont(v_cur, n_gqa, n_tok)
        v_view = o.reshape(v, 1, v.nelements())
        v_cur = o.reshape(v_cur, 1, v_cur.nelements())
        return o.set_rows(v_view, v_cur, idxs)

    def get_k(self, il: int, cache: Cache) -> T:
        k = self.cache_tensor(il, "k")
        hd = self.n_embd_head_k(il)
        n_gqa = k.ne[0]
        r = lambda n: row_size(k.type, n)  # noqa: E731
        return self.o.view(k, [hd, self.hp.n_head_kv[il], cache.n_kv, cache.n_stream],
                           [r(hd), r(n_gqa), r(n_gqa * cache.kv_size)], 0)

    def get_v(self, il: int, cache: Cache) -> T:
        v = self.cache_tensor(il, "v")
        hd = self.n_embd_head_v(il)
        n_gqa = v.ne[0]
        r = lambda n: row_size(v.type, n)  # noqa: E731
        if self.ctx.flash:
            return self.o.view(v, [hd, self.hp.n_head_kv[il], cache.n_kv, cache.n_stream],
                               [r(hd), r(n_gqa), r(n_gqa * cache.kv_size)], 0)
        return self.o.view(v, [cache.n_kv, self.hp.n_head_kv[il], hd, cache.n_stream],
                           [r(cache.kv_size * hd), r(cache.kv_size), r(cache.kv_size * n_gqa)], 0)

    def mha(self, q: T, k: T, v: T, mask: T, il: int, v_mla: T | None = None, soft_cap: bool = False) -> T:
        """build_attn_mha: flash attention, or KQ, softmax and KQV."""
        o = self.o
        v_trans = v.nb[1] > v.nb[2]
        n_stream = k.ne[3]
        q = o.view(q, [q.ne[0], q.ne[1], q.ne[2] // n_stream, n_stream],
                   [q.nb[1], q.nb[2], q.nb[2] * (q.ne[2] // n_stream)], 0)
        q = o.permute(q, 0, 2, 1, 3)
        k = o.permute(k, 0, 2, 1, 3)
        v = o.permute(v, 0, 2, 1, 3)
        if self.ctx.flash:
            if v_trans:
                v = o.transpose(v)
            if k.type == F32:
                k = o.cast(k, F16)
            if v.type == F32:
                v = o.cast(v, F16)
            cur = o.flash_attn_ext(q, k, v, mask)
            if v_mla is not None:
                cur = o.permute(cur, 0, 2, 1, 3)
                cur = o.mul_mat(v_mla, cur)
                cur = o.permute(cur, 0, 2, 1, 3)
                cur = o.cont(cur)
            cur = o.reshape(cur, cur.ne[0] * cur.ne[1], cur.ne[2] * cur.ne[3])
        else:
            kq = o.mul_mat(k, q)
            self.cb(kq, "kq", il)
            if soft_cap:
                kq = o.unary("SCALE", kq)
                kq = o.unary("UNARY", kq)
                kq = o.unary("SCALE", kq)
            kq = o.soft_max(kq, mask)
            if not v_trans:
                v = o.cont(o.transpose(v))
            kqv = o.mul_mat(v, kq)
            if v_mla is not None:
                kqv = o.mul_mat(v_mla, kqv)
            cur = o.permute(kqv, 0, 2, 1, 3)
            cur = o.cont(cur, cur.ne[0] * cur.ne[1], cur.ne[2] * cur.ne[3])
            if not self.ctx.offload_kqv:
                self.ctx.pins[cur.idx] = self.ctx.cpu
        self.expand(cur)
        return cur

    def attn(self, il: int, cache: Cache, wo: T | None, wo_b: T | None, q: T, k: T, v: T,
             iswa: bool, soft_cap: bool = False) -> T:
        """build_attn with a KV cache (llm_graph_input_attn_kv and _kv_iswa)."""
        o = self.o
        if cache.k_rot is not None:
            q = self.hadamard(q, cache.k_rot)
            k = self.hadamard(k, cache.k_rot)
        if cache.v_rot is not None:
            v = self.hadamard(v, cache.v_rot)
        self.expand(q)
        if iswa:
            self.expand(k)
            self.expand(v)
        else:
            self.expand(v)
            self.expand(k)
        self.expand(self.cpy_k(il, k, cache.k_idxs))
        self.expand(self.cpy_v(il, v, cache.v_idxs))
        cur = self.mha(q, self.get_k(il, cache), self.get_v(il, cache), cache.mask, il, soft_cap=soft_cap)
        self.cb(cur, "kqv_out", il)
        if cache.v_rot is not None:
            cur = self.hadamard(cur, cache.v_rot)
        if wo is not None:
            cur = o.mul_mat(wo, cur)
        if wo_b is not None:
            cur = o.binary("ADD", cur, wo_b)
        return cur
