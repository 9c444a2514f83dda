"""The backend scheduler (``ggml/src/ggml-backend.cpp``, ``ggml_backend_sched_split_graph``):
passes 1-5 (weights pull their ops to their device, GPUs expand up and down, inputs start on the
CPU, a copy of every tensor a split reads from another device, ``GGML_SCHED_MAX_COPIES`` copies
of every input under pipeline parallelism), then the graph copy with those inputs in front."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from llamasplit.devices.device import Device
from llamasplit.memory import cuda_rules
from llamasplit.memory.graph.ggml import FLAG_INPUT, FLAG_OUTPUT, VIEW_OPS, Graph, T
from llamasplit.memory.weights import CPU_ALIGNMENT, CUDA_ALIGNMENT

GGML_SCHED_MAX_COPIES = 4
OP_OFFLOAD_MIN_BATCH = 32  # ggml-cuda.cu, GGML_OP_OFFLOAD_MIN_BATCH


@dataclass(frozen=True)
class Backend:
    kind: str  # "CPU", "RPC", "CUDA", ...
    alignment: int
    offload: bool  # has an offload_op (CUDA: ops with host weights run here for big batches)
    host_buft: bool  # its compute buffer type is host memory the CPU backend can read
    alloc: str = ""  # whose get_alloc_size applies ("CUDA" for a CUDA device or an RPC worker serving one)
    cc: int | None = None  # CUDA compute capability, ggml's integer (860)


def backends_of(devices: Sequence[Device]) -> list[Backend]:
    out = []
    for d in devices:
        kind, alloc = d.backend.upper(), d.alloc_backend
        cc = cuda_rules.cc_of(d.compute_capability)
        if kind == "CUDA":
            out.append(Backend("CUDA", CUDA_ALIGNMENT, True, False, "CUDA", cc))
        elif alloc == "CUDA":
            # RPC over CUDA: the worker's alignment and alloc sizes (ggml-rpc.cpp GET_ALIGNMENT /
            # GET_ALLOC_SIZE), but no offload_op (ggml_backend_rpc_device_i .offload_op = NULL)
            out.append(Backend(kind, CUDA_ALIGNMENT, False, False, "CUDA", cc))
        else:
            out.append(Backend(kind, CPU_ALIGNMENT, False, False, alloc))
    out.append(Backend("CPU", CPU_ALIGNMENT, False, True))
    return out


def batch_size(t: T) -> int:
    """ggml-cuda.cu get_op_batch_size."""
    if t.op == "GET_ROWS":
        return 0
    if t.op == "MUL_MAT":
        return t.ne[1]
    if t.op in ("MUL_MAT_ID", "ROPE"):
        return t.ne[2]
    return t.ne[1] * t.ne[2] * t.ne[3]


@dataclass
class _Split:
    backend: int
    i_start: int
    i_end: int = 0
    inputs: list[T] = field(default_factory=list)


def schedule(g: Graph, backends: list[Backend], pins: dict[int, int], n_copies: int,
              op_offload: bool = True) -> tuple[list[T], list[int], list[T], list[int]]:
    """Assign a backend to every tensor, split the graph and add the input copies.

    Returns the graph copy the allocator sees: its nodes and leafs, each with a backend.
    """
    n_b = len(backends)
    cpu = n_b - 1
    bid: dict[int, int] = dict(pins)

    def owner_backend(t: T) -> int:
        base = t.view_src if t.view_src is not None else t
        return base.owner if base.owner is not None else -1

    def from_cur(t: T) -> int:
        b = owner_backend(t)
        if b != -1:
            return b
        if t.flags & FLAG_INPUT:
            return cpu
        if t.op in ("ROPE", "FLASH_ATTN_EXT"):
            return -1
        for s in t.src:
            if s is not None and s.owner is not None and s.weights:
                sb = s.owner
                if op_offload and sb == cpu:
                    for b2 in range(cpu):
                        if backends[b2].offload and batch_size(t) >= OP_OFFLOAD_MIN_BATCH:
                            return b2
                return sb
        return -1

    for leaf in g.leafs:
        if bid.get(leaf.idx, -1) == -1:
            bid[leaf.idx] = from_cur(leaf)
    for node in g.nodes:
        if bid.get(node.idx, -1) == -1:
            bid[node.idx] = from_cur(node)

    nodes = g.nodes
    real = [n for n in nodes if n.op not in VIEW_OPS]

    def expand(seq: Sequence[T], skip_cpu: bool) -> None:
        cur = -1
        for n in seq:
            b = bid.get(n.idx, -1)
            if b != -1:
                cur = -1 if (skip_cpu and b == cpu) else b
            elif cur != -1:
                bid[n.idx] = cur

    expand(real, True)
    expand(real[::-1], True)
    expand(real, False)
    expand(real[::-1], False)

    def buft_of(t: T) -> int:
        """The backend whose buffer type holds t (for supports_buft)."""
        b = owner_backend(t)
        if b != -1:
            return b
        b = bid.get(t.idx, -1)
        if b == -1 and t.view_src is not None:
            b = bid.get(t.view_src.idx, -1)
        return b

    def supported(t: T, b: int) -> bool:
        """ggml_backend_sched_buffer_supported: can backend b read t where it is?"""
        where = buft_of(t)
        if where == -1:
            return False
        if where == b:
            return True
        # the CPU backend reads host buffers (the CPU's own, CUDA_Host); devices read only their own
        return b == cpu and backends[where].host_buft

    # pass 3: nodes left unassigned go where most of their inputs are
    for n in real:
        if bid.get(n.idx, -1) == -1:
            best, best_n = -1, -1
            for b in range(n_b):
                k = 0
                for s in n.src:
                    if s is None:
                        continue
                    known = bid.get(s.idx, -1) != -1 or (s.view_src is not None and bid.get(s.view_src.idx, -1) != -1)
                    if known and supported(s, b):
                        k += 1
                if k > best_n:
                    best, best_n = b, k
            bid[n.idx] = best
    # pass 4: sources and views follow
    for n in nodes:
        cur = bid.get(n.idx, -1)
        if n.view_src is not None and cur == -1:
            cur = bid[n.idx] = bid.get(n.view_src.idx, -1)
        for s in n.src:
            if s is None:
                continue
            if bid.get(s.idx, -1) == -1:
                if s.view_src is not None:
                    bid[s.idx] = bid.get(s.view_src.idx, -1)
                else:
                    bid[s.idx] = cur
        if cur == -1:
            bid[n.idx] = 0

    # pass 5: splits and copies of inputs that live elsewhere
    splits: list[_Split] = []
    copies: dict[tuple[int, int], list[T]] = {}
    i = 0
    while i < len(nodes) and nodes[i].op in VIEW_OPS:
        i += 1
    if i == len(nodes):
        return list(g.nodes), [bid[n.idx] for n in g.nodes], list(g.leafs), [bid[leaf.idx] for leaf in g.leafs]
    split = _Split(bid[nodes[i].idx], 0)
    splits.append(split)
    cur_b = split.backend
    for i in range(i, len(nodes)):
        node = nodes[i]
        if node.op in VIEW_OPS:
            continue
        nb_ = bid[node.idx]
        need_new = False
        if nb_ == cur_b and split.inputs:
            for s in node.src:
                if s is not None and s.owner is not None and s.weights:
                    if s.owner != cur_b and not supported(s, cur_b):
                        need_new = True
                        break
        if nb_ != cur_b or need_new:
            split.i_end = i
            split = _Split(nb_, i)
            splits.append(split)
            cur_b = nb_
        for j, s in enumerate(node.src):
            if s is None:
                continue
            sb = bid[s.idx]
            if sb != cur_b and not supported(s, cur_b):
                key = (s.idx, cur_b)
                if key not in copies:
                    cps = []
                    for _ in range(n_copies):
                        cp = T(g, "NONE", s.type, s.ne, nb=s.nb)
                        cp.name = f"copy#{s.name}"
                        if n_copies > 1:
                            cp.flags |= FLAG_INPUT | FLAG_OUTPUT
                        cps.append(cp)
                    copies[key] = cps
                    split.inputs.append(s)
                node.src[j] = copies[key][0]
    split.i_end = len(nodes)

    # pass 6: every graph input gets its copies under pipeline parallelism
    graph_inputs: list[T] = []
    in_copies: dict[int, list[T]] = {}
    if n_copies > 1:
        for leaf in g.leafs:
            if not leaf.flags & FLAG_INPUT:
                continue
            cps = [leaf]
            for _ in range(1, n_copies):
                cp = T(g, "NONE", leaf.type, leaf.ne, nb=leaf.nb)
                cp.name = f"copy#{leaf.name}"
                cps.append(cp)
            for cp in cps:
                cp.flags |= FLAG_INPUT | FLAG_OUTPUT
            in_copies[leaf.idx] = cps
            graph_inputs.append(leaf)

    out_nodes: list[T] = []
    out_nb: list[int] = []
    for sp in splits:
        for inp in sp.inputs:
            dep = T(g, "NONE", inp.type, inp.ne, (inp,), view_of=inp, offs=0, nb=inp.nb)
            out_nodes.append(dep)
            out_nb.append(bid[inp.idx])
            out_nodes.append(copies[(inp.idx, sp.backend)][0])
            out_nb.append(sp.backend)
        for j in range(sp.i_start, sp.i_end):
            out_nodes.append(nodes[j])
            out_nb.append(bid[nodes[j].idx])
    out_leafs: list[T] = []
    out_lb: list[int] = []
    if n_copies > 1:
        for inp in graph_inputs:
            for cp in in_copies[inp.idx]:
                out_leafs.append(cp)
                out_lb.append(bid[inp.idx])
        for sp in splits:
            for inp in sp.inputs:
                for cp in copies[(inp.idx, sp.backend)]:
                    out_leafs.append(cp)
                    out_lb.append(sp.backend)
    for leaf in g.leafs:
        out_leafs.append(leaf)
        out_lb.append(bid[leaf.idx])
    return out_nodes, out_nb, out_leafs, out_lb
