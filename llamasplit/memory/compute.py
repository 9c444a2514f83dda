"""llama.cpp's compute buffers, by replaying how llama.cpp sizes them.

llama.cpp has no formula for its compute buffers: ``llama_context::sched_reserve`` builds the
worst-case graph (a ubatch of ``min(n_ctx, n_ubatch)`` tokens against a full KV cache), the
backend scheduler (``ggml/src/ggml-backend.cpp``, ``ggml_backend_sched_split_graph``) assigns
every node to a device and adds copies of the tensors that cross devices, and the graph
allocator (``ggml/src/ggml-alloc.c``, ``ggml_gallocr_reserve_n``) places every intermediate
tensor in one buffer per device, reusing memory as soon as a tensor's last consumer has run.
Each device's compute buffer is that allocator's high-water mark.

This module does the same three steps, in Python, from the model header alone:

1. **Graph** (``_Builder``): the nodes of the arch's graph in ggml's order (depth-first from
   each ``ggml_build_forward_expand``), each with its shape, type and strides, following
   ``src/llama-graph.cpp`` (inputs, norms, Q/K/V, RoPE, the KV-cache stores and views, flash or
   plain attention, Hadamard rotations of a quantised cache, dense FFN, MoE routing, expert
   groups and experts, logits) and ``src/models/{llama,gemma3,qwen3moe,deepseek2}.cpp``. Other
   decoder-only archs use the same builder with the features their tensors show (Q/K norms,
   post norms, biases, fused QKV, shared experts) plus the quirks of those checked against
   llama.cpp (tests/golden/fit_params.json, ``benchmarks/accuracy.py --families``): glm4moe
   (post_attention_norm before the FFN, sigmoid gating, NextN blocks not built), gpt-oss
   (expert biases, softmax over the chosen experts, output rows picked after the last layer),
   phi3 (fused SwiGLU, pre-scaled Q), granite (residual and logit scales), olmo2 (no pre-norms),
   cohere2 (its own parallel block). Archs it cannot follow (recurrent and hybrid, encoders,
   ``_NOT_REPLAYED``) get ``heuristic_bytes``, and the plan says "compute estimated, not replayed".
2. **Scheduler** (``_schedule``): passes 1-5 of ``ggml_backend_sched_split_graph`` (weights pull
   their ops to their device, GPUs expand up and down, inputs start on the CPU, a copy of every
   tensor a split reads from another device, four copies (``GGML_SCHED_MAX_COPIES``) of every
   input under pipeline parallelism), then the graph copy with those inputs in front.
3. **Allocator** (``_allocate``): ``ggml_gallocr_alloc_graph_impl`` and ``ggml_dyn_tallocr``
   (best fit among free blocks, the tail grows the buffer, in-place reuse of a parent with one
   consumer, outputs never freed, frees merged with neighbours), each backend's alignment.

What ends up in the buffers (the replay shows it; the allocator decides what overlaps):

- the host: the graph inputs, allocated first (token ids, positions, KV row indices, a KQ mask
  of ``n_kv x n_tokens`` per cache, f16 under flash attention else f32, the unused
  ``inp_embd`` of ``n_embd x n_tokens`` f32, ``out_ids``, Hadamard matrices), four times over
  under pipeline parallelism; plus the activations of any layer or expert run on the CPU;
- every device: copies of what its splits read from elsewhere (masks, positions, the residual
  stream from the previous device, weights left on the CPU by ``-ot`` whose op runs there);
  then the peak of its layers' live intermediates: Q/K/V and, without flash attention, the
  f32 KQ scores ``n_kv x n_tokens x n_head``; the FFN's gate/up/GLU ``n_ff x n_tokens`` f32;
  MoE router probabilities, expert activations ``n_ff_exp x n_used x n_tokens`` f32 and the
  weighted experts; MLA's absorbed queries and decompressed values;
- the output device: the final norm (a graph output, never freed) and the logits
  ``n_vocab x n_outputs`` f32.

Two llama.cpp behaviours matter for the numbers and are reproduced:

- the graph callback pins each layer's ``norm`` nodes to the layer's device (with every layer
  offloaded, or fewer than 32 tokens) and, under ``-nkvo``, attention to the CPU.
  ``llama-fit-params`` measures through ``ggml_backend_sched_reserve_size``, which resets the
  scheduler after the graph is built and so loses those pins (a device boundary then copies
  two tensors instead of one). ``settings.binary == "llama-fit-params"`` gives its figures; the
  binaries that allocate keep the pins.
- only the prompt-processing graph is sized: the token-generation graph llama.cpp also
  reserves is smaller on every device.

Accuracy (``tests/test_estimate_vs_llamacpp.py``, ``benchmarks/accuracy.py``): the same bytes as
llama.cpp on every device and the host of every configuration tried, on CPU and RPC devices:
1341/1341 device figures floor to fit-params' MiB and 1314/1314 print the same 0.01 MiB as
``llama-completion``'s allocations (SmolLM2, Gemma-3, synthetic llama, qwen3moe and deepseek2 MLA;
partial offload, ``-ot``/``--cpu-moe``/``--n-cpu-moe``, contexts 512-32k, f16/q8_0/q4_0 caches,
flash attention on and off, ubatches 32-1024, ``-np``, ``-nkvo``).

CUDA specifics (alignment 128, the host compute buffer in pinned memory, ops with host weights
offloaded to the GPU for batches of 32 or more with the weight copied into the GPU's compute
buffer, the padding of quantised tensors, flash attention's f16 copies of a quantised cache)
follow ``ggml-cuda.cu`` but could not be checked against a GPU here; the extra allocation
dependencies CUDA's fusion adds (``ggml_backend_cuda_graph_optimize``) are not modelled.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from llamasplit.gguf_constants import GGML_QUANT_SIZES, GGMLQuantizationType

from llamasplit.devices.device import Device
from llamasplit.model.profile import Block, ModelProfile, Role, TensorInfo
from llamasplit.memory.weights import CPU_ALIGNMENT, CUDA_ALIGNMENT, CUDA_MATRIX_ROW_PADDING, _override_map, _tables
from llamasplit.memory import cuda_rules
from llamasplit.memory.kv import KvLayout, cache_type
from llamasplit.memory.settings import LlamaSettings

# --------------------------------------------------------------------------------------------
# a small ggml: tensors with shapes, strides and sources
# --------------------------------------------------------------------------------------------

F32 = int(GGMLQuantizationType.F32)
F16 = int(GGMLQuantizationType.F16)
I32 = int(GGMLQuantizationType.I32)
I64 = int(GGMLQuantizationType.I64)

FLAG_INPUT = 1
FLAG_OUTPUT = 2

VIEW_OPS = frozenset({"VIEW", "RESHAPE", "PERMUTE", "TRANSPOSE"})
"""``ggml_is_view_op``: skipped by the scheduler's passes."""

INPLACE_OPS = frozenset({
    "FILL", "SCALE", "DIAG_MASK_ZERO", "DIAG_MASK_INF", "ADD", "ADD_ID", "ADD1", "SUB", "MUL", "DIV",
    "SQR", "SQRT", "LOG", "UNARY", "ROPE", "ROPE_BACK", "SILU_BACK", "RMS_NORM", "RMS_NORM_BACK",
    "CLAMP", "SOFT_MAX", "SOFT_MAX_BACK",
})
"""``ggml_op_can_inplace`` (ggml-alloc.c): ops whose result may take over a parent's memory."""

GGML_SCHED_MAX_COPIES = 4
OP_OFFLOAD_MIN_BATCH = 32  # ggml-cuda.cu, GGML_OP_OFFLOAD_MIN_BATCH


_BLCK: dict[int, tuple[int, int]] = {int(k): v for k, v in GGML_QUANT_SIZES.items()}


def _blck_type(t: int) -> tuple[int, int]:
    return _BLCK[t]


def _row_size(t: int, n: int) -> int:
    blck, size = _blck_type(t)
    return size * n // blck


def _is_quantized(t: int) -> bool:
    return _blck_type(t)[0] > 1


class T:
    """A ggml tensor as far as allocation cares: type, ``ne``, ``nb``, sources, view base, flags."""

    __slots__ = ("idx", "name", "op", "type", "ne", "nb", "src", "view_src", "view_offs", "flags", "owner", "weights")

    def __init__(self, g: _Graph, op: str, typ: int, ne: Sequence[int], src: Sequence[T | None] = (),
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


class _Graph:
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


# --------------------------------------------------------------------------------------------
# ggml ops used by llama.cpp's graphs (ggml.c): result shapes and which tensor they view
# --------------------------------------------------------------------------------------------


class _Ops:
    def __init__(self, g: _Graph) -> None:
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


# --------------------------------------------------------------------------------------------
# the model's graph (src/llama-graph.cpp, src/models/*.cpp)
# --------------------------------------------------------------------------------------------


@dataclass
class _Cache:
    """One KV cache (the base one, or the sliding-window one of an iSWA model)."""

    n_kv: int
    kv_size: int
    n_stream: int
    k_idxs: T | None = None
    v_idxs: T | None = None
    mask: T | None = None
    k_rot: T | None = None
    v_rot: T | None = None


@dataclass
class _Ctx:
    """What the graph builder needs beyond the model: batch, cache, placement."""

    n_tokens: int
    n_outputs: int
    n_seqs: int
    flash: bool
    kv_unified: bool
    offload_kqv: bool
    type_k: int
    type_v: int
    cpu: int  # backend index of the CPU
    layer_backend: list[int]  # backend of each layer 0..n_layer (n_layer = output layer)
    weight_backend: dict[str, int]
    layout: KvLayout
    pin_norms: bool  # the graph callback pins each layer's "norm" to the layer's device
    layers: list[int] = field(default_factory=list)  # the repeating layers to build
    pins: dict[int, int] = field(default_factory=dict)  # tensor idx -> backend (user assignments)


class _Builder:
    """Builds one arch's worst-case graph the way llama.cpp's llm_graph_context does."""

    def __init__(self, model: ModelProfile, ctx: _Ctx) -> None:
        self.model = model
        self.hp = model.hparams
        self.ctx = ctx
        self.g = _Graph()
        self.o = _Ops(self.g)
        self.md = model.metadata
        self.arch = model.arch
        self.tensors = {t.name: t for t in model.tensors}
        self.weights: dict[str, T] = {}
        self.kv: dict[tuple[int, str], T] = {}
        self.t_logits: T | None = None
        self.t_embd: T | None = None

    # -- helpers ------------------------------------------------------------------------------
    def key(self, name: str, default: float | int = 0) -> float | int:
        value = self.md.get(f"{self.arch}.{name}", default)
        # NaN or inf in a damaged header: the default (int(inf) crashed the replay in the fuzzer)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value and abs(value) != float("inf")
        return value if ok else default

    def w(self, name: str) -> T | None:
        """A weight tensor (a leaf in a weights buffer on its device), or None if the model lacks it."""
        if name in self.weights:
            return self.weights[name]
        info: TensorInfo | None = self.tensors.get(name)
        if info is None:
            return None
        t = T(self.g, "NONE", info.ggml_type, info.shape)
        t.name = name
        t.owner = self.ctx.weight_backend.get(name, self.ctx.cpu)
        t.weights = True
        self.weights[name] = t
        return t

    def lw(self, il: int, stem: str, suffix: str = "weight") -> T | None:
        return self.w(f"blk.{il}.{stem}.{suffix}")

    def has(self, il: int, stem: str) -> bool:
        return f"blk.{il}.{stem}.weight" in self.tensors

    def cb(self, t: T, name: str, il: int) -> T:
        """llama_context::graph_get_cb: names the tensor and pins per-layer norms to their device."""
        t.name = f"{name}-{il}" if il >= 0 else name
        if name == "norm" and il >= 0 and self.ctx.pin_norms:
            self.ctx.pins[t.idx] = self.ctx.layer_backend[il]
        return t

    def expand(self, t: T) -> None:
        self.g.expand(t)

    # -- inputs -------------------------------------------------------------------------------
    def inp_embd(self) -> T:
        o = self.o
        tokens = o.input("inp_tokens", I32, [self.ctx.n_tokens])
        embd = o.input("inp_embd", F32, [self.hp.n_embd, self.ctx.n_tokens])
        cur = o.get_rows(self.w("token_embd.weight"), tokens)
        # ggml_build_forward_select: both paths enter the graph, the token path is computed
        self.expand(cur)
        self.expand(embd)
        scale = self.key("embedding_scale", 0.0)
        if scale:
            cur = o.unary("SCALE", cur)
        self.cb(cur, "embd", -1)
        self.expand(cur)
        return cur

    def inp_pos(self) -> T:
        return self.o.input("inp_pos", I32, [self.ctx.n_tokens])

    def inp_out_ids(self) -> T:
        return self.o.input("out_ids", I32, [self.ctx.n_outputs])

    def cache(self, swa: bool, with_v: bool, rot: bool) -> _Cache:
        """build_attn_inp_kv(_iswa) / build_attn_inp_k: index, mask and rotation inputs of one cache."""
        c = self.ctx
        lay = c.layout
        kv_size = lay.swa_size if swa else lay.kv_size
        n_stream = lay.n_stream
        cache = _Cache(n_kv=kv_size, kv_size=kv_size, n_stream=n_stream)
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
        if head_k > 0 and _is_quantized(self.ctx.type_k) and self.hp.n_embd_head_k % 64 == 0:
            nrot = 64
            while head_k % (nrot * 2) == 0:
                nrot *= 2
            k_rot = self.o.input("attn_inp_k_rot", F32, [nrot, nrot])
        if head_v > 0 and _is_quantized(self.ctx.type_v) and self.hp.n_embd_head_v % 64 == 0:
            v_rot = self.o.input("attn_inp_v_rot", F32, [64, 64])
        return k_rot, v_rot

    # -- hparams per layer ---------------------------------------------------------------------
    def n_embd_head_k(self, il: int) -> int:
        return self.hp.n_embd_head_k_swa if self.hp.is_swa[il] else self.hp.n_embd_head_k

    def n_embd_head_v(self, il: int) -> int:
        return self.hp.n_embd_head_v_swa if self.hp.is_swa[il] else self.hp.n_embd_head_v

    def n_embd_v_gqa(self, il: int) -> int:
        return self.n_embd_head_v(il) * self.hp.n_head_kv[il]

    # -- blocks -------------------------------------------------------------------------------
    def norm(self, cur: T, weight: T | None, il: int, bias: T | None = None, kind: str = "RMS_NORM") -> T:
        o = self.o
        cur = o.dup(kind, cur, cur)
        if weight is not None or bias is not None:
            self.cb(cur, "norm", il)
        if weight is not None:
            cur = o.binary("MUL", cur, weight)
        if bias is not None:
            cur = o.binary("ADD", cur, bias)
        return cur

    def mm(self, w: T, cur: T, bias: T | None = None) -> T:
        cur = self.o.mul_mat(w, cur)
        if bias is not None:
            cur = self.o.binary("ADD", cur, bias)
        return cur

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
            f = _row_size(qkv.type, 1)
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
        if _row_size(v_cur.type, n_gqa) == v_cur.nb[2]:
            v_cur = o.reshape(v_cur, n_gqa, n_tok)
        else:
            v_cur = o.cont(v_cur, n_gqa, n_tok)
        v_view = o.reshape(v, 1, v.nelements())
        v_cur = o.reshape(v_cur, 1, v_cur.nelements())
        return o.set_rows(v_view, v_cur, idxs)

    def get_k(self, il: int, cache: _Cache) -> T:
        k = self.cache_tensor(il, "k")
        hd = self.n_embd_head_k(il)
        n_gqa = k.ne[0]
        r = lambda n: _row_size(k.type, n)  # noqa: E731
        return self.o.view(k, [hd, self.hp.n_head_kv[il], cache.n_kv, cache.n_stream],
                           [r(hd), r(n_gqa), r(n_gqa * cache.kv_size)], 0)

    def get_v(self, il: int, cache: _Cache) -> T:
        v = self.cache_tensor(il, "v")
        hd = self.n_embd_head_v(il)
        n_gqa = v.ne[0]
        r = lambda n: _row_size(v.type, n)  # noqa: E731
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

    def attn(self, il: int, cache: _Cache, wo: T | None, wo_b: T | None, q: T, k: T, v: T,
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
        weight_before_ffn = self.arch == "llama4"  # llama-graph.cpp build_moe_ffn: weights applied to the input
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

    def output(self, cur: T) -> None:
        o = self.o
        cur = self.norm(cur, self.w("output_norm.weight"), -1, self.w("output_norm.bias"),
                        kind="NORM" if self.arch in _LAYERNORM_ARCHS else "RMS_NORM")
        self.cb(cur, "result_norm", -1)
        self.t_embd = cur
        out_w = self.w("output.weight")
        if out_w is None:
            out_w = self.tied_output()
        cur = o.mul_mat(out_w, cur)
        if self.key("logit_scale", 0.0):  # granite, cohere2: ggml_scale of the logits
            cur = o.unary("SCALE", cur)
        if self.key("final_logit_softcapping", 0.0):
            cur = o.unary("SCALE", cur)
            cur = o.unary("UNARY", cur)
            cur = o.unary("SCALE", cur)
        self.cb(cur, "result_output", -1)
        self.t_logits = cur
        self.expand(cur)

    def tied_output(self) -> T:
        """TENSOR_DUPLICATED: the output layer's own copy of token_embd, on the output device."""
        info = self.tensors["token_embd.weight"]
        t = T(self.g, "NONE", info.ggml_type, info.shape)
        t.name = "output.weight (tied)"
        t.owner = self.ctx.layer_backend[self.hp.n_layer]
        t.weights = True
        return t

    def finish(self) -> _Graph:
        for t in (self.t_logits, self.t_embd):
            if t is not None:
                t.flags |= FLAG_OUTPUT
        return self.g

    # -- archs ----------------------------------------------------------------------------------
    def build(self) -> _Graph:
        if self.hp.is_mla and self.arch in _MLA_ARCHS:
            self.build_deepseek2()
        elif self.arch == "cohere2":
            self.build_cohere2()
        else:
            self.build_transformer()
        return self.finish()

    def build_transformer(self) -> None:
        """llama, gemma3, qwen3moe (exact); other archs from the tensors they have (close)."""
        o = self.o
        hp = self.hp
        gemma = self.arch in ("gemma3", "gemma2", "gemma-embedding")
        inpL = self.inp_embd()
        if gemma:
            inpL = o.unary("SCALE", inpL)
            self.cb(inpL, "inp_scaled", -1)
        inp_pos = self.inp_pos()
        llama4 = self.arch == "llama4"
        # llama4's temperature tuning: a 1 x 1 x n_tokens input scales Q on its NoPE layers
        attn_scale = o.input("inp_attn_scale", F32, [1, 1, self.ctx.n_tokens]) if llama4 else None
        iswa = hp.n_swa > 0 and any(hp.is_swa[: hp.n_layer_kv])
        with_v = True
        base = self.cache(False, with_v, rot=False)
        swa_cache = self.cache(True, with_v, rot=False) if iswa else None
        base.k_rot, base.v_rot = self.rot_inputs()
        if swa_cache is not None:
            swa_cache.k_rot, swa_cache.v_rot = self.rot_inputs()
        out_ids = self.inp_out_ids()
        soft_cap = bool(self.key("attn_logit_softcapping", 0.0)) and self.arch == "gemma2"
        n_layer = hp.n_layer_kv
        for il in self.ctx.layers:
            inpSA = inpL
            if self.has(il, "attn_norm"):
                cur = self.norm(inpL, self.lw(il, "attn_norm"), il, self.lw(il, "attn_norm", "bias"),
                                kind="NORM" if self.arch in _LAYERNORM_ARCHS else "RMS_NORM")
                self.cb(cur, "attn_norm", il)
            else:  # olmo2: no norm before attention
                cur = inpL
            hd_k, hd_v = self.n_embd_head_k(il), self.n_embd_head_v(il)
            q, k, v = self.qkv(il, cur, hp.n_head[il], hp.n_head_kv[il], hd_k, hd_v)
            factors = self.w("rope_freqs.weight")
            if factors is not None:
                factors = self._rope_factors(il, factors)
            q_norm, k_norm = self.lw(il, "attn_q_norm"), self.lw(il, "attn_k_norm")
            if q_norm is not None:
                q = self.norm(q, q_norm, il)
            # llama4: every 4th layer has no RoPE (n_no_rope_layer_step, llama-hparams.h)
            use_rope = not llama4 or (il + 1) % 4 != 0
            if use_rope:
                q = o.rope(q, inp_pos, factors)
            elif attn_scale is not None:
                q = o.binary("MUL", q, attn_scale)
            if k_norm is not None:
                k = self.norm(k, k_norm, il)
            if use_rope:
                k = o.rope(k, inp_pos, factors)
            if llama4 and use_rope and hp.n_expert != 128:  # use_kq_norm: Llama4TextL2Norm, no weight
                q = o.rms_norm(q)
                k = o.rms_norm(k)
            if gemma or self.arch in _Q_SCALED:
                q = o.unary("SCALE", q)
            cache = swa_cache if (iswa and hp.is_swa[il]) else base
            cur = self.attn(il, cache, self.lw(il, "attn_output"), self.lw(il, "attn_output", "bias"), q, k, v,
                            iswa=iswa, soft_cap=soft_cap)
            if il == n_layer - 1 and self.arch not in _LATE_OUT_IDS:
                cur = o.get_rows(cur, out_ids)
                inpSA = o.get_rows(inpSA, out_ids)
            # glm4moe names its pre-FFN norm post_attention_norm (src/models/glm4-moe.cpp)
            ffn_norm_stem = "post_attention_norm" if self.arch in _POST_ATTN_IS_FFN_NORM else "ffn_norm"
            post = self.lw(il, "post_attention_norm") if ffn_norm_stem == "ffn_norm" else None
            if post is not None:
                cur = self.norm(cur, post, il)
            residual_scale = bool(self.key("residual_scale", 0.0))  # granite: ggml_scale before each residual add
            if residual_scale:
                cur = o.unary("SCALE", cur)
            ffn_inp = o.binary("ADD", cur, inpSA)
            self.cb(ffn_inp, "ffn_inp", il)
            if self.has(il, ffn_norm_stem):
                cur = self.norm(ffn_inp, self.lw(il, ffn_norm_stem), il, self.lw(il, ffn_norm_stem, "bias"),
                                kind="NORM" if self.arch in _LAYERNORM_ARCHS else "RMS_NORM")
            else:  # olmo2: no norm before the FFN
                cur = ffn_inp
            if self.has(il, "ffn_gate_inp"):
                moe = self.moe(il, cur, hp.n_expert, hp.n_expert_used, norm_w=self._norm_w(),
                               w_scale=float(self.key("expert_weights_scale", 0.0)), gating=self._gating(),
                               probs_b=self.lw(il, "exp_probs_b", "bias"))
                if self.has(il, "ffn_up_shexp"):
                    moe = o.binary("ADD", moe, self.shared_expert(il, cur))
                cur = moe
            else:
                cur = self.ffn(il, cur, self.lw(il, "ffn_up"), self.lw(il, "ffn_gate"), self.lw(il, "ffn_down"),
                               up_b=self.lw(il, "ffn_up", "bias"), gate_b=self.lw(il, "ffn_gate", "bias"),
                               down_b=self.lw(il, "ffn_down", "bias"))
            post = self.lw(il, "post_ffw_norm")
            if post is not None:
                cur = self.norm(cur, post, -1)
            if residual_scale:
                cur = o.unary("SCALE", cur)
            cur = o.binary("ADD", cur, ffn_inp)
            self.cb(cur, "l_out", il)
            inpL = cur
        if self.arch in _LATE_OUT_IDS:
            inpL = o.get_rows(inpL, out_ids)
        self.output(inpL)

    def _norm_w(self) -> bool:
        value = self.md.get(f"{self.arch}.expert_weights_norm")
        if isinstance(value, bool):
            return value
        return self.arch in ("qwen3moe", "qwen2moe", "llama", "mixtral", "olmoe", "qwen3vlmoe")

    def build_cohere2(self) -> None:
        """src/models/cohere2.cpp: layer norm, attention and FFN in parallel on the same normed
        input, RoPE on the sliding-window layers only, logits scaled."""
        o = self.o
        hp = self.hp
        inpL = self.inp_embd()
        inp_pos = self.inp_pos()
        base = self.cache(False, True, rot=False)
        swa_cache = self.cache(True, True, rot=False)
        base.k_rot, base.v_rot = self.rot_inputs()
        swa_cache.k_rot, swa_cache.v_rot = self.rot_inputs()
        out_ids = self.inp_out_ids()
        n_layer = hp.n_layer_kv
        for il in self.ctx.layers:
            cur = self.norm(inpL, self.lw(il, "attn_norm"), il, self.lw(il, "attn_norm", "bias"), kind="NORM")
            ffn_inp = cur
            hd_k, hd_v = self.n_embd_head_k(il), self.n_embd_head_v(il)
            q, k, v = self.qkv(il, cur, hp.n_head[il], hp.n_head_kv[il], hd_k, hd_v)
            if hp.is_swa[il]:
                q = o.rope(q, inp_pos, None)
                k = o.rope(k, inp_pos, None)
            cache = swa_cache if hp.is_swa[il] else base
            cur = self.attn(il, cache, self.lw(il, "attn_output"), self.lw(il, "attn_output", "bias"), q, k, v,
                            iswa=True)
            if il == n_layer - 1:
                cur = o.get_rows(cur, out_ids)
                inpL = o.get_rows(inpL, out_ids)
                ffn_inp = o.get_rows(ffn_inp, out_ids)
            attn_out = cur
            cur = self.ffn(il, ffn_inp, self.lw(il, "ffn_up"), self.lw(il, "ffn_gate"), self.lw(il, "ffn_down"))
            cur = o.binary("ADD", cur, inpL)
            cur = o.binary("ADD", cur, attn_out)
            self.cb(cur, "l_out", il)
            inpL = cur
        self.output(inpL)

    def _gating(self) -> str:
        """``{arch}.expert_gating_func`` (llama-hparams.h LLAMA_EXPERT_GATING_FUNC_TYPE_*); unset:
        sigmoid for glm4moe (glm4-moe.cpp load_arch_hparams), else softmax."""
        gating_id = int(self.key("expert_gating_func", 0))
        if gating_id == 0:
            return {"glm4moe": "sigmoid", "gpt-oss": "softmax_weight", "llama4": "sigmoid"}.get(self.arch, "softmax")
        return {1: "softmax", 2: "sigmoid", 3: "softmax_weight"}.get(gating_id, "softmax")

    def _rope_factors(self, il: int, factors: T) -> T:
        """rope_freqs is duplicated into every layer (TENSOR_DUPLICATED): one tensor per device."""
        key = f"rope_freqs.weight#{il}"
        if key not in self.weights:
            t = T(self.g, "NONE", factors.type, factors.ne)
            t.name = key
            t.owner = self.ctx.layer_backend[il]
            t.weights = True
            self.weights[key] = t
        return self.weights[key]

    def build_deepseek2(self) -> None:
        """src/models/deepseek2.cpp with MLA (absorbed K/V, a K-only cache)."""
        o = self.o
        hp = self.hp
        T_ = self.ctx.n_tokens
        n_head = hp.n_head[0]
        hd_k = hp.n_embd_head_k_mla
        rope = hp.n_rot
        nope = hd_k - rope
        kv_lora = hp.kv_lora_rank
        inpL = self.inp_embd()
        inp_pos = self.inp_pos()
        cache = self.cache(False, with_v=False, rot=False)
        out_ids = self.inp_out_ids()
        n_dense = int(self.key("leading_dense_block_count", 0))
        gating_id = int(self.key("expert_gating_func", 0))
        gating = {2: "sigmoid"}.get(gating_id, "softmax")
        n_layer = hp.n_layer_kv
        for il in self.ctx.layers:
            inpSA = inpL
            cur = self.norm(inpL, self.lw(il, "attn_norm"), il)
            self.cb(cur, "attn_norm", il)
            wq = self.lw(il, "attn_q")
            if wq is None:
                q = o.mul_mat(self.lw(il, "attn_q_a"), cur)
                q = self.norm(q, self.lw(il, "attn_q_a_norm"), il)
                q = o.mul_mat(self.lw(il, "attn_q_b"), q)
            else:
                q = o.mul_mat(wq, cur)
            q = o.reshape(q, hd_k, n_head, T_)
            kv_pe = o.mul_mat(self.lw(il, "attn_kv_a_mqa"), cur)
            row = _row_size(kv_pe.type, kv_lora + rope)
            kv_cmpr = o.view(kv_pe, [kv_lora, T_], [row], 0)
            k_pe = o.view(kv_pe, [rope, 1, T_], [row, row], _row_size(kv_pe.type, kv_lora))
            k_pe = o.rope(k_pe, inp_pos, None)
            kv_cmpr = self.norm(kv_cmpr, self.lw(il, "attn_kv_a_norm"), il)
            q_nope = o.view(q, [nope, n_head, T_], [q.nb[1], q.nb[2]], 0)
            q_pe = o.view(q, [rope, n_head, T_], [q.nb[1], q.nb[2]], _row_size(q.type, nope))
            q_pe = o.rope(q_pe, inp_pos, None)
            q_nope = o.permute(q_nope, 0, 2, 1, 3)
            q_abs = o.mul_mat(self.lw(il, "attn_k_b"), q_nope)
            q_abs = o.permute(q_abs, 0, 2, 1, 3)
            q_cur = o.concat(q_abs, q_pe, 0)
            kv_cmpr = o.reshape(kv_cmpr, kv_lora, 1, T_)
            k_cur = o.concat(kv_cmpr, k_pe, 0)
            v_cur = kv_cmpr
            # build_attn(llm_graph_input_attn_k): q, v, k, store K only
            self.expand(q_cur)
            self.expand(v_cur)
            self.expand(k_cur)
            self.expand(self.cpy_k(il, k_cur, cache.k_idxs))
            k = self.get_k(il, cache)
            v = o.view(k, [v_cur.ne[0], k.ne[1], k.ne[2], k.ne[3]], [k.nb[1], k.nb[2], k.nb[3]], 0)
            cur = self.mha(q_cur, k, v, cache.mask, il, v_mla=self.lw(il, "attn_v_b"))
            self.cb(cur, "kqv_out", il)
            cur = o.mul_mat(self.lw(il, "attn_output"), cur)
            if il == n_layer - 1:
                cur = o.get_rows(cur, out_ids)
                inpSA = o.get_rows(inpSA, out_ids)
            ffn_inp = o.binary("ADD", cur, inpSA)
            cur = self.norm(ffn_inp, self.lw(il, "ffn_norm"), il)
            if il < n_dense or not self.has(il, "ffn_gate_inp"):
                cur = self.ffn(il, cur, self.lw(il, "ffn_up"), self.lw(il, "ffn_gate"), self.lw(il, "ffn_down"))
            else:
                norm_w = bool(self.md.get(f"{self.arch}.expert_weights_norm", False))
                moe = self.moe(il, cur, hp.n_expert, hp.n_expert_used, norm_w=norm_w,
                               w_scale=float(self.key("expert_weights_scale", 0.0)), gating=gating,
                               probs_b=self.lw(il, "exp_probs_b", "bias"))
                cur = o.binary("ADD", moe, self.shared_expert(il, cur))
            cur = o.binary("ADD", cur, ffn_inp)
            self.cb(cur, "l_out", il)
            inpL = cur
        self.output(inpL)


_POST_ATTN_IS_FFN_NORM = frozenset({"glm4moe", "gpt-oss"})
"""Archs whose ``post_attention_norm`` is the norm before the FFN, not after attention."""
_LATE_OUT_IDS = frozenset({"gpt-oss"})
"""Archs that keep every token through the last layer and pick the output rows after it
(src/models/openai-moe.cpp: ``embeddings_nextn_masked`` is false by default)."""
_Q_SCALED = frozenset({"phi3"})
"""Archs that scale Q by 1/sqrt(head) themselves before attention (src/models/phi3.cpp)."""

_LAYERNORM_ARCHS = frozenset({
    "gpt2", "starcoder", "starcoder2", "falcon", "bloom", "mpt", "stablelm", "phi2", "gptneox", "command-r", "cohere2",
})


# --------------------------------------------------------------------------------------------
# backends and the scheduler (ggml-backend.cpp, ggml_backend_sched_split_graph)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Backend:
    kind: str  # "CPU", "RPC", "CUDA", ...
    alignment: int
    offload: bool  # has an offload_op (CUDA: ops with host weights run here for big batches)
    host_buft: bool  # its compute buffer type is host memory the CPU backend can read
    alloc: str = ""  # whose get_alloc_size applies ("CUDA" for a CUDA device or an RPC worker serving one)
    cc: int | None = None  # CUDA compute capability, ggml's integer (860)


def _backends(devices: Sequence[Device]) -> list[_Backend]:
    out = []
    for d in devices:
        kind, alloc = d.backend.upper(), d.alloc_backend
        cc = cuda_rules.cc_of(d.compute_capability)
        if kind == "CUDA":
            out.append(_Backend("CUDA", CUDA_ALIGNMENT, True, False, "CUDA", cc))
        elif alloc == "CUDA":
            # RPC over CUDA: the worker's alignment and alloc sizes (ggml-rpc.cpp GET_ALIGNMENT /
            # GET_ALLOC_SIZE), but no offload_op (ggml_backend_rpc_device_i .offload_op = NULL)
            out.append(_Backend(kind, CUDA_ALIGNMENT, False, False, "CUDA", cc))
        else:
            out.append(_Backend(kind, CPU_ALIGNMENT, False, False, alloc))
    out.append(_Backend("CPU", CPU_ALIGNMENT, False, True))
    return out


def _batch_size(t: T) -> int:
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


def _schedule(g: _Graph, backends: list[_Backend], pins: dict[int, int], n_copies: int,
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
                        if backends[b2].offload and _batch_size(t) >= OP_OFFLOAD_MIN_BATCH:
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


# --------------------------------------------------------------------------------------------
# the graph allocator (ggml-alloc.c)
# --------------------------------------------------------------------------------------------


class _DynAlloc:
    """ggml_dyn_tallocr with one chunk (every backend here allows buffers of any size).

    Best fit among the free blocks before the tail; else the tail, which grows the buffer;
    frees merge with their neighbours.

    >>> a = _DynAlloc(32)
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


def _alloc_size(t: T, backend: _Backend) -> int:
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
    elif _is_quantized(t.type) and t.ne[0] % CUDA_MATRIX_ROW_PADDING:
        # a quantised tensor (a weight copied here by op offload) gets one padded row
        size += _row_size(t.type, CUDA_MATRIX_ROW_PADDING - t.ne[0] % CUDA_MATRIX_ROW_PADDING)
    return size


def _allocate(nodes: list[T], node_b: list[int], leafs: list[T], leaf_b: list[int], backends: list[_Backend],
              n_tensors: int) -> list[int]:
    """ggml_gallocr_alloc_graph_impl: the high-water mark of each backend's buffer."""
    allocs = [_DynAlloc(b.alignment) for b in backends]
    n_children = [0] * n_tensors
    n_views = [0] * n_tensors
    where_b = [-1] * n_tensors  # backend of a tensor allocated here (-1: not allocated by us)
    where_off = [0] * n_tensors
    sizes: dict[tuple[int, int], int] = {}

    def size_of(t: T, b: int) -> int:
        key = (t.idx, b)
        v = sizes.get(key)
        if v is None:
            v = sizes[key] = _alloc_size(t, backends[b])
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


# --------------------------------------------------------------------------------------------
# the estimator's entry point
# --------------------------------------------------------------------------------------------


def replayable(model: ModelProfile) -> bool:
    """Whether ``_Builder`` can replay this model's graph: a decoder-only transformer whose every
    layer has attention (Q/K/V, fused QKV, or deepseek2's MLA) and an FFN (dense or experts)."""
    hp = model.hparams
    names = {t.name for t in model.tensors}
    if "token_embd.weight" not in names or any(hp.is_recurrent) or model.arch in _NOT_REPLAYED:
        return False
    mla = hp.is_mla and model.arch in _MLA_ARCHS
    for il in range(hp.n_layer_kv):
        def has(stem: str) -> bool:
            return f"blk.{il}.{stem}.weight" in names
        if mla:
            attn = has("attn_kv_a_mqa") and has("attn_k_b") and has("attn_v_b") and (has("attn_q") or has("attn_q_b"))
        else:
            attn = has("attn_qkv") or (has("attn_q") and has("attn_k") and has("attn_v"))
        experts = has("ffn_down_exps") and has("ffn_gate_inp") and (has("ffn_gate_up_exps") or has("ffn_up_exps"))
        ffn = has("ffn_down") or experts  # a layer missing one of them is planned by heuristic_bytes
        if not (attn and has("attn_output") and ffn):
            return False
    return True


_MLA_ARCHS = frozenset({"deepseek2", "deepseek2ocr", "glm4moe_lite"})
_NOT_REPLAYED = frozenset({
    # encoders, encoder-decoders and archs whose graphs differ beyond what the builder follows
    "bert", "nomic-bert", "nomic-bert-moe", "jina-bert-v2", "jina-bert-v3", "modern-bert", "neo-bert", "eurobert",
    "t5", "t5encoder", "gemma3n", "deepseek32", "deepseek4", "glm-dsa", "kimi-linear", "minimax-01",
})


def heuristic_bytes(model: ModelProfile, devices: Sequence[Device], layer_dev: Sequence[int | None],
                    settings: LlamaSettings, *, layout: KvLayout, n_ubatch: int, n_outputs: int,
                    flash: bool) -> list[int]:
    """For archs the builder does not replay: the largest phase per device plus its inputs.

    What the replay shows dominates: the graph inputs live on the CPU (the KQ masks, f16 under
    flash attention, and the unused ``inp_embd``), every device that runs attention holds a copy
    of the masks, pipeline parallelism keeps four copies of both; then the largest of
    attention's f32 KQ scores (without flash attention), the FFN's or experts' activations, and
    on the output device the logits. A guide, not a replay: forced onto the replayed models it
    lands within max(15 %, 20 MiB) of llama.cpp on 98 % of device rows (within max(3 %, 8 MiB)
    on 84 %), mostly above.
    """
    hp = model.hparams
    n_dev = len(devices)
    T_ = n_ubatch
    out_dev = layer_dev[hp.n_layer]
    n_kv_full = layout.kv_size * layout.n_stream
    n_kv_swa = layout.swa_size * layout.n_stream
    kinds = {hp.is_swa[il] for il in range(hp.n_layer_kv) if not hp.is_recurrent[il]}
    masks = sum(n_kv_swa if swa else n_kv_full for swa in kinds) * T_ * (2 if flash else 4)
    pipeline = (n_dev > 1 and all(d is not None for d in layer_dev) and settings.split_mode == "layer"
                and not settings.effective_overrides and settings.offload_kqv)
    copies = GGML_SCHED_MAX_COPIES if pipeline else 1
    n_used = max(hp.n_expert_used, 1)
    expert_devs: set[int] = set()
    if hp.n_expert:
        override_of = _override_map(_tables(model).names, settings.effective_overrides)
        names = {dv.name: i for i, dv in enumerate(devices)}
        for t in model.tensors:
            if t.role is Role.EXPERTS and t.layer is not None:
                dev = layer_dev[t.layer]
                buft = override_of.get(t.name)
                if buft is not None:
                    dev = None if buft.upper() == "CPU" else names.get(buft, dev)
                expert_devs.add(n_dev if dev is None else dev)
    out: list[int] = []
    for d in range(n_dev + 1):
        layers = [il for il in range(hp.n_layer_kv) if (layer_dev[il] if layer_dev[il] is not None else n_dev) == d]
        is_out = (out_dev if out_dev is not None else n_dev) == d
        base = (masks + hp.n_embd * T_ * 4) * copies if d == n_dev else (masks * copies if layers else 0)
        phases = [0]
        # a hybrid's recurrent (and nemotron-h's MLP-only) layers hold no KQ
        attn_layers = [il for il in layers if not hp.is_recurrent[il] and hp.n_head_kv[il] > 0]
        if attn_layers:
            n_head = max(hp.n_head[il] for il in attn_layers)
            n_kv_max = max(n_kv_swa if hp.is_swa[il] else n_kv_full for il in attn_layers)
            if not flash:
                phases.append(n_kv_max * T_ * n_head * 4 + hp.n_embd * T_ * 8)
        if layers:
            n_ff = max(hp.n_ff[il] for il in layers)
            phases.append((3 * n_ff + 2 * hp.n_embd) * T_ * 4)
        if hp.ssm_d_inner and any(hp.is_recurrent[il] for il in layers):
            # a Mamba-2 block (mamba-base.cpp build_mamba2_layer): the in-projection, the conv
            # input and output, the scan's y, all f32 per token
            conv_dim = hp.ssm_d_inner + 2 * max(hp.ssm_n_group, 1) * hp.ssm_d_state
            d_in_proj = hp.ssm_d_inner + conv_dim + hp.ssm_dt_rank
            phases.append((d_in_proj + 2 * conv_dim + 2 * hp.ssm_d_inner) * T_ * 4)
        if d in expert_devs:
            phases.append((3 * hp.n_ff_exp + 2 * hp.n_embd) * n_used * T_ * 4)
        if is_out:
            phases.append(hp.n_vocab * n_outputs * 4 + 2 * hp.n_embd * T_ * 4)
        out.append(base + max(phases))
    return out


def weight_backends(model: ModelProfile, devices: Sequence[Device], layer_dev: Sequence[int | None],
                    settings: LlamaSettings) -> dict[str, int]:
    """The backend each weight lives on (device index, ``len(devices)`` = CPU): estimate.py's rule."""
    hp = model.hparams
    cpu = len(devices)
    names = {d.name: i for i, d in enumerate(devices)}
    override_of = _override_map(_tables(model).names, settings.effective_overrides)
    out_dev = layer_dev[hp.n_layer]
    result: dict[str, int] = {}
    for t in model.tensors:
        if t.block is Block.INPUT:
            dev: int | None = None
        elif t.block is Block.OUTPUT:
            dev = out_dev
        elif t.role is Role.ROPE and t.layer is None:
            dev = layer_dev[0]
        else:
            dev = layer_dev[t.layer if t.layer is not None else 0]
        buft = override_of.get(t.name)
        if buft is not None:
            dev = None if buft.upper() == "CPU" else names.get(buft, dev)
        result[t.name] = cpu if dev is None else dev
    return result


def compute_bytes(
    model: ModelProfile,
    devices: Sequence[Device],
    layer_dev: Sequence[int | None],
    settings: LlamaSettings,
    *,
    layout: KvLayout,
    n_ubatch: int,
    n_outputs: int,
    flash: bool,
) -> list[int]:
    """Compute buffer bytes per device, then the host (last).

    A replay of llama.cpp's reservation (``replayable`` models), else ``heuristic_bytes``.
    """
    if not replayable(model):
        return heuristic_bytes(model, devices, layer_dev, settings, layout=layout, n_ubatch=n_ubatch,
                               n_outputs=n_outputs, flash=flash)
    hp = model.hparams
    n_dev = len(devices)
    cpu = n_dev
    n_seq = settings.seq_count
    n_tokens = n_ubatch
    if n_tokens % n_seq:
        n_tokens = (n_tokens + n_seq - 1) // n_seq * n_seq
    full_offload = settings.n_gpu_layers is None or settings.n_gpu_layers < 0 or settings.n_gpu_layers > hp.n_layer
    layer_backend = [cpu if d is None else d for d in layer_dev]
    ctx = _Ctx(
        n_tokens=n_tokens,
        n_outputs=max(1, min(n_outputs, n_tokens)),
        n_seqs=n_seq,
        flash=flash,
        kv_unified=settings.unified,
        offload_kqv=settings.offload_kqv,
        type_k=int(cache_type(settings.type_k)),
        type_v=int(cache_type(settings.type_v)),
        cpu=cpu,
        layer_backend=layer_backend,
        weight_backend=weight_backends(model, devices, layer_dev, settings),
        layout=layout,
        pin_norms=(n_tokens < 32 or full_offload),
    )
    ctx.layers = list(range(hp.n_layer_kv))
    graph = _Builder(model, ctx).build()
    # llama-fit-params measures through ggml_backend_sched_reserve_size, which resets the
    # scheduler after the graph was built: the callback's pins are gone
    pins = {} if settings.binary == "llama-fit-params" else ctx.pins
    pipeline = (
        n_dev > 1
        and full_offload
        and settings.split_mode == "layer"
        and settings.offload_kqv
        and not settings.effective_overrides
    )
    backends = _backends(devices)
    nodes, node_b, leafs, leaf_b = _schedule(graph, backends, pins, GGML_SCHED_MAX_COPIES if pipeline else 1)
    sizes = _allocate(nodes, node_b, leafs, leaf_b, backends, len(graph.all))
    return sizes
