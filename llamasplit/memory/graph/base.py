"""The graph builder's common part (``src/llama-graph.cpp``, ``llm_graph_context``): weights and
inputs as leaves, the graph callback's names and pins, per-layer head sizes, norms, the output
head. The blocks (``attention.py``, ``ffn.py``) extend it; ``Builder`` is all of them together."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from llamasplit.model.profile import ModelProfile, TensorInfo
from llamasplit.memory.graph.ggml import F32, FLAG_OUTPUT, I32, Graph, Ops, T
from llamasplit.memory.kv import KvLayout

if TYPE_CHECKING:
    from llamasplit.memory.graph.family import Family


@dataclass
class Cache:
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
class Ctx:
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
    n_rs_seq: int = 0  # recurrent-state snapshots per sequence (cparams.n_rs_seq: speculative rollback)


class BuilderBase:
    """What every block needs from llama.cpp's ``llm_graph_context``: the model, the batch and
    placement (``Ctx``), the graph, weights and KV tensors as leaves, the graph callback."""

    def __init__(self, model: ModelProfile, ctx: Ctx, family: Family) -> None:
        self.model = model
        self.hp = model.hparams
        self.ctx = ctx
        self.g = Graph()
        self.o = Ops(self.g)
        self.md = model.metadata
        self.arch = model.arch
        self.family = family
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

    def rope_factors(self, il: int, factors: T) -> T:
        """rope_freqs is duplicated into every layer (TENSOR_DUPLICATED): one tensor per device."""
        key = f"rope_freqs.weight#{il}"
        if key not in self.weights:
            t = T(self.g, "NONE", factors.type, factors.ne)
            t.name = key
            t.owner = self.ctx.layer_backend[il]
            t.weights = True
            self.weights[key] = t
        return self.weights[key]

    def output(self, cur: T, norm: str = "output_norm") -> None:
        """The output norm (``norm``: its tensor stem), the logits, their scales."""
        o = self.o
        cur = self.norm(cur, self.w(f"{norm}.weight"), -1, self.w(f"{norm}.bias"),
                        kind=self.family.norm)
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

    def finish(self) -> Graph:
        for t in (self.t_logits, self.t_embd):
            if t is not None:
                t.flags |= FLAG_OUTPUT
        return self.g
