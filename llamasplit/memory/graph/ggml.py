"""A small ggml: tensors with shapes, strides and sources, and the ops llama.cpp's graphs use
(``ggml/src/ggml.c``: each op's result shape and which tensor it views)."""

from __future__ import annotations

from collections.abc import Sequence

from llamasplit.gguf_constants import GGML_QUANT_SIZES, GGMLQuantizationType

F32 = int(GGMLQuantizationType.F32)
F16 = int(GGMLQuantizationType.F16)
I32 = int(GGMLQuantizationType.I32)
I64 = int(GGMLQuantizationType.I64)

FLAG_INPUT = 1
FLAG_OUTPUT = 2

VIEW_OPS = frozenset({"VIEW", "RESHAPE", "PERMUTE", "TRANSPOSE"})
"""``ggml_is_view_op``: skipped by the scheduler's passes."""


_BLCK: dict[int, tuple[int, int]] = {int(k): v for k, v in GGML_QUANT_SIZES.items()}


def _blck_type(t: int) -> tuple[int, int]:
    return _BLCK[t]


def row_size(t: int, n: int) -> int:
    blck, size = _blck_type(t)
    return size * n // blck


def is_quantized(t: int) -> bool:
    return _blck_type(t)[0] > 1


class T:
    """A ggml tensor as far as allocation cares: type, ``ne``, ``nb``, sources, view base, flags."""

    __slots__ = ("idx", "name", "op", "type", "ne", "nb", "src", "view_src", "view_offs", "flags", "owner", "weights")

    def __init__(self, g: Graph, op: str, typ: int, ne: Sequence[int], src: Sequence[T | None] = (),
                 view_of: T | None = None, offs: int = 0, nb: Sequence[int] | None = None) -> None:
        self.idx = len(g.all)
        g.all.append(self)
        self.name = ""
        self.op = op
        self.type = typ
        ne = list(ne)
        while len(ne) < 4:
            ne.append(1)
        self.ne = ne
        if nb is None:
            blck, size = _BLCK[typ]
            nb1 = size * (ne[0] // blck)
            nb = [size, nb1, nb1 * ne[1], nb1 * ne[1] * ne[2]]
        self.nb = list(nb)
        self.src = list(src)
        if view_of is not None and view_of.view_src is not None:
            offs += view_of.view_offs
            view_of = view_of.view_src
        self.view_src = view_of
        self.view_offs = offs
        self.flags = 0
        self.owner: int | None = None  # backend holding a pre-allocated buffer (weights, KV cache)
        self.weights = False  # the buffer is a weights buffer (GGML_BACKEND_BUFFER_USAGE_WEIGHTS)

    def nbytes(self) -> int:
        ne, nb = self.ne, self.nb
        if min(ne) <= 0:
            return 0
        blck, size = _blck_type(self.type)
        if blck == 1:
            n = size
            for i in range(4):
                n += (ne[i] - 1) * nb[i]
            return n
        n = ne[0] * nb[0] // blck
        for i in range(1, 4):
            n += (ne[i] - 1) * nb[i]
        return n

    def nelements(self) -> int:
        return self.ne[0] * self.ne[1] * self.ne[2] * self.ne[3]

    def is_contiguous(self) -> bool:
        blck, size = _blck_type(self.type)
        nb = self.nb
        if nb[0] != size:
            return False
        expect = size * (self.ne[0] // blck)
        for i in range(1, 4):
            if self.ne[i] != 1 and nb[i] != expect:
                return False
            expect *= self.ne[i]
        return True

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"T({self.name or self.op}, {self.op}, ne={self.ne})"


class Graph:
    """Tensors, and the node/leaf order of ``ggml_build_forward_expand``."""

    def __init__(self) -> None:
        self.all: list[T] = []
        self.nodes: list[T] = []
        self.leafs: list[T] = []
        self.visited: set[int] = set()

    def expand(self, t: T) -> None:
        """ggml_visit_parents_graph: depth first, sources left to right, each tensor once."""
        if t.idx in self.visited:
            return
        stack: list[tuple[T, int]] = [(t, 0)]
        self.visited.add(t.idx)
        while stack:
            node, i = stack[-1]
            src = node.src
            while i < len(src) and (src[i] is None or src[i].idx in self.visited):
                i += 1
            if i < len(src):
                stack[-1] = (node, i + 1)
                child = src[i]
                self.visited.add(child.idx)
                stack.append((child, 0))
                continue
            stack.pop()
            (self.leafs if node.op == "NONE" else self.nodes).append(node)


class Ops:
    def __init__(self, g: Graph) -> None:
        self.g = g

    def new(self, op: str, typ: int, ne: Sequence[int], *src: T | None) -> T:
        return T(self.g, op, typ, ne, src)

    def dup(self, op: str, a: T, *src: T | None) -> T:
        """An op whose result is ``ggml_dup_tensor(a)``: a new contiguous tensor of a's shape."""
        return T(self.g, op, a.type, a.ne, src)

    def input(self, name: str, typ: int, ne: Sequence[int]) -> T:
        t = T(self.g, "NONE", typ, ne)
        t.name = name
        t.flags |= FLAG_INPUT
        return t

    # views
    def view(self, a: T, ne: Sequence[int], nb: Sequence[int] | None, offs: int, op: str = "VIEW") -> T:
        ne = list(ne) + [1] * (4 - len(ne))
        if nb is None:
            v = T(self.g, op, a.type, ne, (a,), view_of=a, offs=offs)
        else:
            nb = list(nb)
            full = [a.nb[0]] + nb + [0] * (3 - len(nb))
            # ggml_view_impl: unset higher strides follow contiguously
            for i in range(len(nb) + 1, 4):
                full[i] = full[i - 1] * ne[i - 1]
            v = T(self.g, op, a.type, ne, (a,), view_of=a, offs=offs, nb=full)
        v.name = f"{a.name} (view)"
        return v

    def view_tensor(self, a: T, op: str, *src: T | None) -> T:
        """``ggml_view_tensor(a)`` given an op: same shape and strides, a's memory."""
        v = T(self.g, op, a.type, a.ne, src, view_of=a, offs=0, nb=a.nb)
        return v

    def reshape(self, a: T, *ne: int) -> T:
        return self.view(a, ne, None, 0, op="RESHAPE")

    def permute(self, a: T, ax0: int, ax1: int, ax2: int, ax3: int) -> T:
        v = T(self.g, "PERMUTE", a.type, a.ne, (a,), view_of=a, offs=0, nb=a.nb)
        ne, nb = [0] * 4, [0] * 4
        for i, ax in enumerate((ax0, ax1, ax2, ax3)):
            ne[ax] = a.ne[i]
            nb[ax] = a.nb[i]
        v.ne, v.nb = ne, nb
        v.name = f"{a.name} (permuted)"
        return v

    def transpose(self, a: T) -> T:
        v = T(self.g, "TRANSPOSE", a.type, a.ne, (a,), view_of=a, offs=0, nb=a.nb)
        v.ne = [a.ne[1], a.ne[0], a.ne[2], a.ne[3]]
        v.nb = [a.nb[1], a.nb[0], a.nb[2], a.nb[3]]
        return v

    # compute ops
    def mul_mat(self, a: T, b: T) -> T:
        return self.new("MUL_MAT", F32, [a.ne[1], b.ne[1], b.ne[2], b.ne[3]], a, b)

    def mul_mat_id(self, a: T, b: T, ids: T) -> T:
        return self.new("MUL_MAT_ID", F32, [a.ne[1], ids.ne[0], b.ne[2], 1], a, b, ids)

    def get_rows(self, a: T, b: T) -> T:
        typ = I32 if a.type == I32 else F32
        return self.new("GET_ROWS", typ, [a.ne[0], b.ne[0], b.ne[1], b.ne[2]], a, b)

    def set_rows(self, a: T, b: T, c: T) -> T:
        return self.view_tensor(a, "SET_ROWS", b, c, a)

    def unary(self, op: str, a: T) -> T:
        return self.dup(op, a, a)

    def binary(self, op: str, a: T, b: T) -> T:
        return self.dup(op, a, a, b)

    def rms_norm(self, a: T) -> T:
        return self.dup("RMS_NORM", a, a)

    def rope(self, a: T, pos: T, factors: T | None) -> T:
        return self.dup("ROPE", a, a, pos, factors)

    def soft_max(self, a: T, mask: T | None = None) -> T:
        return self.dup("SOFT_MAX", a, a, mask)

    def glu(self, a: T, b: T) -> T:
        return self.new("GLU", a.type, a.ne, a, b)

    def add_id(self, a: T, b: T, ids: T) -> T:
        """``ggml_add_id``: a per-expert bias row added to each selected expert's output."""
        return self.dup("ADD_ID", a, a, b, ids)

    def glu_fused(self, a: T) -> T:
        """``ggml_swiglu(a)``: gate and up are the two halves of a's rows."""
        return self.new("GLU", a.type, [a.ne[0] // 2, a.ne[1], a.ne[2], a.ne[3]], a)

    def cont(self, a: T, *ne: int) -> T:
        return self.new("CONT", a.type, list(ne) if ne else a.ne, a)

    def concat(self, a: T, b: T, dim: int) -> T:
        ne = list(a.ne)
        ne[dim] = a.ne[dim] + b.ne[dim]
        return self.new("CONCAT", a.type, ne, a, b)

    def argsort_top_k(self, a: T, k: int) -> T:
        s = self.new("ARGSORT", I32, a.ne, a)
        return self.view(s, [k, s.ne[1], s.ne[2], s.ne[3]], [s.nb[1], s.nb[2], s.nb[3]], 0)

    def sum_rows(self, a: T) -> T:
        return self.new("SUM_ROWS", a.type, [1, a.ne[1], a.ne[2], a.ne[3]], a)

    def cast(self, a: T, typ: int) -> T:
        t = self.new("CPY", typ, a.ne, a)
        t.src.append(t)  # ggml_cast's self-reference
        return t

    def flash_attn_ext(self, q: T, k: T, v: T, mask: T | None) -> T:
        return self.new("FLASH_ATTN_EXT", F32, [v.ne[0], q.ne[2], q.ne[1], q.ne[3]], q, k, v, mask)

    def repeat(self, a: T, *ne: int) -> T:
        return self.new("REPEAT", a.type, ne, a)

    # state-space ops (Mamba-2, LFM2's short convolution)
    def cpy(self, a: T, b: T) -> T:
        """``ggml_cpy(a, b)``: a copied into b; the result is a view of b."""
        return self.view_tensor(b, "CPY", a, b)

    def scale_inplace(self, a: T) -> T:
        """``ggml_scale_inplace``: the result is a view of a."""
        return self.view_tensor(a, "SCALE", a)

    def ssm_conv(self, sx: T, c: T) -> T:
        """``ggml_ssm_conv``: F32 ``{d_inner, n_t, n_s}`` with ``d_inner = c.ne[1]``,
        ``n_t = sx.ne[0] - c.ne[0] + 1``, ``n_s = sx.ne[2]``."""
        return self.new("SSM_CONV", F32, [c.ne[1], sx.ne[0] - c.ne[0] + 1, sx.ne[2]], sx, c)

    def ssm_scan(self, s: T, x: T, dt: T, a: T, b: T, c: T, ids: T, k: int = 1) -> T:
        """``ggml_ssm_scan``: y and the last states concatenated, F32 1-d of
        ``nelements(x) + K * s.ne[0] * s.ne[1] * s.ne[2] * ids.ne[0]``."""
        n = x.nelements() + k * s.ne[0] * s.ne[1] * s.ne[2] * ids.ne[0]
        return self.new("SSM_SCAN", F32, [n], s, x, dt, a, b, c, ids)
