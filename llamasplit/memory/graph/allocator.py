"""The graph allocator (``ggml/src/ggml-alloc.c``): ``ggml_gallocr_alloc_graph_impl`` and
``ggml_dyn_tallocr`` (best fit among free blocks, the tail grows the buffer, in-place reuse of a
parent with one consumer, outputs never freed, frees merged with neighbours), each backend's
alignment and ``get_alloc_size``."""

from __future__ import annotations

from llamasplit.memory import cuda_rules
from llamasplit.memory.graph.ggml import FLAG_INPUT, FLAG_OUTPUT, T, is_quantized, row_size
from llamasplit.memory.graph.scheduler import Backend
from llamasplit.memory.weights import CUDA_MATRIX_ROW_PADDING

INPLACE_OPS = frozenset({
    "FILL", "SCALE", "DIAG_MASK_ZERO", "DIAG_MASK_INF", "ADD", "ADD_ID", "ADD1", "SUB", "MUL", "DIV",
    "SQR", "SQRT", "LOG", "UNARY", "ROPE", "ROPE_BACK", "SILU_BACK", "RMS_NORM", "RMS_NORM_BACK",
    "CLAMP", "SOFT_MAX", "SOFT_MAX_BACK",
})
"""``ggml_op_can_inplace`` (ggml-alloc.c): ops whose result may take over a parent's memory."""


class DynAlloc:
    """ggml_dyn_tallocr with one chunk (every backend here allows buffers of any size).

    Best fit among the free blocks before the tail; else the tail, which grows the buffer;
    frees merge with their neighbours.

    >>> a = DynAlloc(32)
    >>> a.alloc(100), a.alloc(64), a.alloc(10)
    (0, 128, 192)
    >>> a.free(0, 100)
    >>> a.alloc(50), a.alloc(40), a.max_size
    (0, 64, 224)
    """

    __slots__ = ("align", "blocks", "max_size", "started")

    def __init__(self, align: int) -> None:
        self.align = align
        self.blocks: list[list[int]] = []  # [offset, size], sorted by offset; the last one is the tail
        self.max_size = 0
        self.started = False

    def alloc(self, size: int) -> int:
        a = self.align
        size = (size + a - 1) // a * a
        if not self.started:
            self.started = True
            self.blocks = [[0, 1 << 62]]
        blocks = self.blocks
        best = -1
        best_size = 1 << 63
        for i in range(len(blocks) - 1):
            bs = blocks[i][1]
            if bs >= size and bs <= best_size:
                best, best_size = i, bs
        if best == -1:
            best = len(blocks) - 1
        block = blocks[best]
        offset = block[0]
        block[0] += size
        block[1] -= size
        if block[1] == 0:
            del blocks[best]
        if offset + size > self.max_size:
            self.max_size = offset + size
        return offset

    def free(self, offset: int, size: int) -> None:
        a = self.align
        size = (size + a - 1) // a * a
        blocks = self.blocks
        for i, block in enumerate(blocks):
            if block[0] + block[1] == offset:
                block[1] += size
                if i < len(blocks) - 1 and block[0] + block[1] == blocks[i + 1][0]:
                    block[1] += blocks[i + 1][1]
                    del blocks[i + 1]
                return
            if offset + size == block[0]:
                block[0] = offset
                block[1] += size
                if i > 0 and blocks[i - 1][0] + blocks[i - 1][1] == block[0]:
                    blocks[i - 1][1] += block[1]
                    del blocks[i]
                return
        pos = 0
        while pos < len(blocks) and blocks[pos][0] < offset:
            pos += 1
        blocks.insert(pos, [offset, size])


def alloc_size(t: T, backend: Backend) -> int:
    """ggml_backend_buft_get_alloc_size: ggml_nbytes, plus CUDA's extras (ggml-cuda.cu)."""
    size = t.nbytes()
    if backend.alloc != "CUDA":
        return size
    if t.op == "FLASH_ATTN_EXT":
        # ggml_cuda_flash_attn_ext_get_alloc_size: f16 copies of K/V where the chosen kernel needs them
        q, k, v, mask = t.src[0], t.src[1], t.src[2], t.src[3] if len(t.src) > 3 else None
        if q is None or k is None or v is None:
            return size
        kernel = cuda_rules.best_fattn_kernel(
            backend.cc if backend.cc is not None else cuda_rules.CC_TURING,  # unknown: the common MMA path
            head_k=k.ne[0], head_v=v.ne[0], n_tokens=q.ne[1], gqa_ratio=max(q.ne[2] // max(k.ne[2], 1), 1),
            n_kv=k.ne[1], type_k=k.type, type_v=v.type, has_mask=mask is not None,
            mask_ne2=mask.ne[2] if mask is not None else 1, n_seq_q=q.ne[3])
        need_k, need_v = cuda_rules.fattn_needs_f16(kernel, k.ne[0], k.type, v.type)
        v_is_k = v.view_src is not None and (v.view_src is k or (v.view_src is k.view_src and v.view_offs == k.view_offs))
        size = cuda_rules.fattn_alloc_bytes(size, need_k, need_v, k.type, v.type, k.nelements(), v.nelements(), v_is_k)
    elif is_quantized(t.type) and t.ne[0] % CUDA_MATRIX_ROW_PADDING:
        # a quantised tensor (a weight copied here by op offload) gets one padded row
        size += row_size(t.type, CUDA_MATRIX_ROW_PADDING - t.ne[0] % CUDA_MATRIX_ROW_PADDING)
    return size


def allocate_graph(nodes: list[T], node_b: list[int], leafs: list[T], leaf_b: list[int], backends: list[Backend],
              n_tensors: int) -> list[int]:
    """ggml_gallocr_alloc_graph_impl: the high-water mark of each backend's buffer."""
    allocs = [DynAlloc(b.alignment) for b in backends]
    n_children = [0] * n_tensors
    n_views = [0] * n_tensors
    where_b = [-1] * n_tensors  # backend of a tensor allocated here (-1: not allocated by us)
    where_off = [0] * n_tensors
    sizes: dict[tuple[int, int], int] = {}

    def size_of(t: T, b: int) -> int:
        key = (t.idx, b)
        v = sizes.get(key)
        if v is None:
            v = sizes[key] = alloc_size(t, backends[b])
        return v

    def allocate(t: T, b: int) -> None:
        if t.owner is not None or where_b[t.idx] != -1 or t.view_src is not None:
            return
        if t.op in INPLACE_OPS:
            for p in t.src:
                if p is None:
                    continue
                pi = p.idx
                if where_b[pi] == -1 or p.view_src is not None or p.flags & FLAG_OUTPUT:
                    continue
                if p.type != t.type or p.ne != t.ne or p.nb != t.nb:
                    continue
                if n_children[pi] == 1 and n_views[pi] == 0:
                    pb, off = where_b[pi], where_off[pi]
                    where_b[pi] = -1
                    where_b[t.idx], where_off[t.idx] = pb, off
                    a = allocs[pb].align
                    ps = (size_of(p, pb) + a - 1) // a * a
                    ts = (size_of(t, pb) + a - 1) // a * a
                    if ps > ts:
                        allocs[pb].free(off + ts, ps - ts)
                    return
        where_off[t.idx] = allocs[b].alloc(size_of(t, b))
        where_b[t.idx] = b

    def free(t: T) -> None:
        if t.flags & FLAG_OUTPUT:
            return
        b = where_b[t.idx]
        allocs[b].free(where_off[t.idx], size_of(t, b))
        where_b[t.idx] = -1

    for leaf, b in zip(leafs, leaf_b):
        allocate(leaf, b)
    for node, b in zip(nodes, node_b):
        if node.view_src is not None and node.op != "NONE":
            n_views[node.view_src.idx] += 1
        if node.flags & FLAG_INPUT:
            allocate(node, b)
        for s in node.src:
            if s is None:
                continue
            n_children[s.idx] += 1
            if s.flags & FLAG_INPUT:
                allocate(s, b)
    for node, b in zip(nodes, node_b):
        for p in node.src:
            if p is not None:
                allocate(p, b)
        allocate(node, b)
        for p in node.src:
            if p is None:
                continue
            pi = p.idx
            n_children[pi] -= 1
            if n_children[pi] == 0 and n_views[pi] == 0:
                vs = p.view_src
                if vs is not None:
                    vi = vs.idx
                    n_views[vi] -= 1
                    if n_views[vi] == 0 and n_children[vi] == 0 and where_b[vi] != -1:
                        free(vs)
                elif where_b[pi] != -1:
                    free(p)
    return [a.max_size for a in allocs]
