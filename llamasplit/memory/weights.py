"""Weight tensors as llama.cpp creates them: each tensor's slot (input, a layer, output), its
allocation size on a backend, and the ``-ot`` overrides. Shared by the weights placement
(``estimate.py``) and the graph replay (``graph/``), which imports nothing else from the
estimate (so the two no longer import each other)."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from llamasplit.devices.device import Device
from llamasplit.errors import UsageError
from llamasplit.model.profile import Block, ModelProfile, Role, TensorInfo
from llamasplit.memory import cuda_rules, kv

HOST = "Host"

CUDA_ALIGNMENT = cuda_rules.ALIGNMENT
CUDA_MATRIX_ROW_PADDING = cuda_rules.MATRIX_ROW_PADDING
CPU_ALIGNMENT = 32



@dataclass
class _Weights:
    """Summed allocation sizes of a group of weight tensors, per kind of buffer."""

    cuda_bytes: int = 0
    cpu_bytes: int = 0
    mapped_bytes: int = 0
    """Bytes that stay in the mapped file under mmap (duplicates are never mapped)."""
    read_bytes: float = 0.0

    def add(self, item: _Item) -> None:
        t = item.tensor
        self.cuda_bytes += alloc_bytes(t, "CUDA")
        self.cpu_bytes += alloc_bytes(t, "CPU")
        if not item.dup:
            self.mapped_bytes += t.n_bytes
        self.read_bytes += item.read_bytes

    def minus(self, other: _Weights) -> _Weights:
        return _Weights(
            self.cuda_bytes - other.cuda_bytes, self.cpu_bytes - other.cpu_bytes,
            self.mapped_bytes - other.mapped_bytes, self.read_bytes - other.read_bytes,
        )


@dataclass(frozen=True)
class _Item:
    """One weight tensor instance as llama.cpp creates it, in its slot (layer index, n_layer = output)."""

    tensor: TensorInfo
    slot: int | None
    """``None``: the input layer, always on the CPU."""
    dup: bool
    read_bytes: float


@dataclass
class _Tables:
    names: tuple[str, ...]
    items: list[_Item]
    input: _Weights
    input_spans: dict[int, tuple[int, int]]
    slots: list[_Weights]
    slot_spans: list[dict[int, tuple[int, int]]]


_TABLE_CACHE: dict[int, tuple[ModelProfile, _Tables]] = {}


def _tables(model: ModelProfile) -> _Tables:
    """Per-slot weight sums of a model, computed once per profile (the planner estimates often)."""
    cached = _TABLE_CACHE.get(id(model))
    if cached is not None and cached[0] is model:
        return cached[1]
    hp = model.hparams
    active = hp.n_expert_used / hp.n_expert if hp.n_expert and hp.n_expert_used else 1.0
    items: list[_Item] = []
    for t in model.loaded_tensors:  # NextN/MTP blocks: TENSOR_SKIP, no buffer
        # bytes a decoded token reads: routed experts only in the share the router picks
        read = float(t.n_bytes) * (active if t.role is Role.EXPERTS else 1.0)
        if t.block is Block.INPUT:
            items.append(_Item(t, None, False, 0.0))
            if t.name == "token_embd.weight" and model.tied_embeddings:
                # TENSOR_DUPLICATED: the output layer gets its own copy, read whole by the logits
                items.append(_Item(t, hp.n_layer, True, float(t.n_bytes)))
        elif t.block is Block.OUTPUT:
            items.append(_Item(t, hp.n_layer, False, read))
        elif t.role is Role.ROPE and t.layer is None:
            for il in range(hp.n_layer):  # rope_freqs is duplicated into every layer
                items.append(_Item(t, il, il > 0, 0.0))
        else:
            items.append(_Item(t, t.layer if t.layer is not None else 0, False, read))
    inp, slots = _Weights(), [_Weights() for _ in range(hp.n_layer + 1)]
    inp_spans: dict[int, tuple[int, int]] = {}
    slot_spans: list[dict[int, tuple[int, int]]] = [{} for _ in range(hp.n_layer + 1)]
    for item in items:
        w, spans = (inp, inp_spans) if item.slot is None else (slots[item.slot], slot_spans[item.slot])
        w.add(item)
        if not item.dup:
            t = item.tensor
            lo, hi = spans.get(t.file_index, (t.offset, t.offset + t.n_bytes))
            spans[t.file_index] = (min(lo, t.offset), max(hi, t.offset + t.n_bytes))
    tables = _Tables(tuple(t.name for t in model.loaded_tensors), items, inp, inp_spans, slots, slot_spans)
    if len(_TABLE_CACHE) > 16:
        _TABLE_CACHE.clear()
    _TABLE_CACHE[id(model)] = (model, tables)
    return tables


@functools.lru_cache(maxsize=256)
def _override_map(names: tuple[str, ...], overrides: tuple[tuple[str, str], ...]) -> dict[str, str]:
    """Tensor name -> buffer of the first -ot pattern that matches it (llama.cpp: regex_search, in order)."""
    if not overrides:
        return {}
    try:
        compiled = [(re.compile(p), b) for p, b in overrides]
    except re.error as exc:
        raise UsageError(f"-ot pattern is not a valid regular expression: {exc}") from exc
    out = {}
    for name in names:
        for pattern, buft in compiled:
            if pattern.search(name):
                out[name] = buft
                break
    return out


def _backend(device: Device) -> str:
    """The allocation rules of a device: an RPC device's are those of the backend behind the worker."""
    return device.alloc_backend


def alloc_bytes(tensor: TensorInfo, backend: str) -> int:
    """The allocation size of a weight tensor on a backend, padded to its alignment."""
    size = tensor.n_bytes
    if backend == "CUDA":
        ne0 = tensor.shape[0]
        if tensor.is_quantized and ne0 % CUDA_MATRIX_ROW_PADDING:
            size += kv.row_bytes(_qtype(tensor), CUDA_MATRIX_ROW_PADDING - ne0 % CUDA_MATRIX_ROW_PADDING)
        return kv.pad(size, CUDA_ALIGNMENT)
    return kv.pad(size, CPU_ALIGNMENT)


def _qtype(tensor: TensorInfo):
    from llamasplit.gguf_constants import GGMLQuantizationType

    return GGMLQuantizationType(tensor.ggml_type)

