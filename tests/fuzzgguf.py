"""Mutated GGUF headers for the robustness fuzzer (``benchmarks/fuzz.py``, ``tests/test_fuzz.py``).

A header is kept as structure, not bytes: a list of key/value entries (key, value type, the value's
encoded bytes) and a list of tensor entries (name, dims, ggml type, offset). Seeds are the real
fixtures' headers (their vocabularies cut to a few hundred entries, except now and then) and
small synthetic models of several architectures. A mutation changes that structure the way a
broken converter or a hostile file would (a value of the wrong type, NaN, a negative or huge
count, a missing or duplicated key or tensor, a layer index past ``block_count``, a key with
terminal escapes, ...), then the header is written out; some cases also get raw byte damage.

``check_one(data, path)`` writes the header, reads it with ``read_model`` and plans it; anything
but a result or one of our own errors (``LlamasplitError``) is a finding, as is a read or a plan
slower than the limit.
"""

from __future__ import annotations

import functools
import math
import random
import re
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

GGUF_MAGIC = 0x46554747
UINT8, INT8, UINT16, INT16, UINT32, INT32, FLOAT32, BOOL, STRING, ARRAY, UINT64, INT64, FLOAT64 = range(13)
_FMT = {UINT8: "<B", INT8: "<b", UINT16: "<H", INT16: "<h", UINT32: "<I", INT32: "<i", FLOAT32: "<f",
        BOOL: "<?", UINT64: "<Q", INT64: "<q", FLOAT64: "<d"}

# the per-arch keys the planner reads (gguf-py constants Keys.LLM/Attention/...), "{arch}" filled in
ARCH_KEYS = [
    "block_count", "embedding_length", "context_length", "feed_forward_length", "attention.head_count",
    "attention.head_count_kv", "attention.key_length", "attention.value_length", "attention.sliding_window",
    "attention.sliding_window_pattern", "expert_count", "expert_used_count", "expert_shared_count",
    "expert_feed_forward_length", "nextn_predict_layers", "attention.kv_lora_rank", "attention.q_lora_rank",
    "attention.key_length_mla", "attention.value_length_mla", "rope.dimension_count", "vocab_size",
    "ssm.conv_kernel", "ssm.inner_size", "ssm.state_size", "ssm.group_count", "ssm.time_step_rank",
    "leading_dense_block_count", "expert_weights_norm", "expert_gating_func", "expert_group_count",
    "expert_group_used_count", "attention.layer_norm_rms_epsilon", "rope.freq_base",
    "attention.key_length_swa", "attention.value_length_swa", "embedding_length_per_layer_input",
]
GENERAL_KEYS = ["general.architecture", "general.alignment", "general.name", "general.file_type",
                "split.count", "split.no", "split.tensors.count", "tokenizer.ggml.tokens", "tokenizer.ggml.model"]

INTERESTING_INTS = [0, 1, 2, 3, 7, 8, 63, 64, 255, 256, 511, 512, 513, 1024, 4096, 65535, 65536, 100_000,
                    2**31 - 1, 2**31, 2**32 - 1, 2**40, 2**62, 2**63 - 1, 2**64 - 1]
INTERESTING_NEG = [-1, -2, -7, -512, -(2**31), -(2**63)]
INTERESTING_FLOATS = [math.nan, math.inf, -math.inf, -0.0, 0.5, 1e30, -1e30, 3.4e38, 1e-45]
HOSTILE_STRINGS = ["", "abc", "\x1b[31mred\x1b[0m", "\x1b]0;title\x07", "a\nb", "\u202eevil", "\x00", "\x9b2J",
                   "llama\r", "x" * 5000, "\ud800".encode("utf-8", "surrogatepass").decode("utf-8", "replace"),
                   "nan", "inf", "-1", "32"]


@dataclass
class Header:
    """A GGUF header as structure: (key, type, encoded value) and (name, dims, type, offset)."""

    version: int = 3
    kvs: list[tuple[bytes, int, bytes]] = field(default_factory=list)
    tensors: list[tuple[bytes, tuple[int, ...], int, int]] = field(default_factory=list)
    n_kv_delta: int = 0
    n_tensors_delta: int = 0
    alignment: int = 32
    extra: tuple[int, bytes] = (0, b"")
    """Many more tensor entries, already encoded: (count, bytes)."""

    def copy(self) -> Header:
        return Header(self.version, list(self.kvs), list(self.tensors), self.n_kv_delta, self.n_tensors_delta,
                      self.alignment, self.extra)

    def arch(self) -> str:
        for key, vtype, payload in self.kvs:
            if key == b"general.architecture" and vtype == STRING:
                return payload[8:].decode("utf-8", "replace")
        return "llama"

    def to_bytes(self) -> bytes:
        out = bytearray(struct.pack("<IIQQ", GGUF_MAGIC, self.version,
                                    max(0, len(self.tensors) + self.extra[0] + self.n_tensors_delta) % 2**64,
                                    max(0, len(self.kvs) + self.n_kv_delta) % 2**64))
        for key, vtype, payload in self.kvs:
            out += struct.pack("<Q", len(key)) + key + struct.pack("<I", vtype) + payload
        for t in self.tensors:
            out += _enc_tensor(t)
        out += self.extra[1]
        align = self.alignment if 0 < self.alignment <= 65536 and not self.alignment & (self.alignment - 1) else 32
        out += b"\0" * (-len(out) % align)
        return bytes(out)


# -- encoding ------------------------------------------------------------------------------------

_TENSOR_BYTES: dict[tuple, bytes] = {}


def _enc_tensor(t: tuple[bytes, tuple[int, ...], int, int]) -> bytes:
    """One tensor entry's bytes (memoised: seeds' entries repeat in every case)."""
    enc = _TENSOR_BYTES.get(t)
    if enc is None:
        name, dims, ggml_type, offset = t
        enc = (struct.pack("<Q", len(name)) + name + struct.pack("<I", len(dims))
               + b"".join(struct.pack("<Q", d % 2**64) for d in dims) + struct.pack("<IQ", ggml_type % 2**32, offset % 2**64))
        if len(_TENSOR_BYTES) > 200_000:
            _TENSOR_BYTES.clear()
        _TENSOR_BYTES[t] = enc
    return enc


@functools.lru_cache(maxsize=16)
def _many_tensors(proto: tuple[bytes, tuple[int, ...], int, int], n: int) -> bytes:
    """``n`` entries shaped like ``proto``, named ``extra.K.weight``."""
    _, dims, ggml_type, offset = proto
    tail = struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d % 2**64) for d in dims)
    tail += struct.pack("<IQ", ggml_type % 2**32, offset % 2**64)
    names = [b"extra.%d.weight" % k for k in range(n)]
    return b"".join(struct.pack("<Q", len(nm)) + nm + tail for nm in names)

def enc_string(s: str | bytes) -> bytes:
    raw = s.encode("utf-8", "surrogatepass") if isinstance(s, str) else s
    return struct.pack("<Q", len(raw)) + raw


def enc_scalar(vtype: int, value) -> bytes:
    fmt = _FMT[vtype]
    if vtype in (FLOAT32, FLOAT64):
        return struct.pack(fmt, float(value))
    if vtype == BOOL:
        return struct.pack(fmt, bool(value))
    bits = struct.calcsize(fmt) * 8
    signed = fmt[1].islower() and fmt[1] != "?"
    v = int(value)
    if signed:
        v = (v + 2 ** (bits - 1)) % 2**bits - 2 ** (bits - 1)
    else:
        v %= 2**bits
    return struct.pack(fmt, v)


def enc_array(etype: int, values: list) -> bytes:
    body = b"".join(enc_string(v) if etype == STRING else enc_scalar(etype, v) for v in values)
    return struct.pack("<IQ", etype, len(values)) + body


def int_entry(key: str, value: int, vtype: int = UINT32) -> tuple[bytes, int, bytes]:
    return key.encode(), vtype, enc_scalar(vtype, value)


def str_entry(key: str, value: str) -> tuple[bytes, int, bytes]:
    return key.encode(), STRING, enc_string(value)


# -- parsing a real header into structure ---------------------------------------------------------

def parse(data: bytes, *, vocab_keep: int | None = 512) -> Header:
    """Structure of a valid GGUF header; string arrays longer than ``vocab_keep`` are cut."""
    pos = 24
    _, version, n_tensors, n_kv = struct.unpack_from("<IIQQ", data, 0)
    h = Header(version=version)

    def take_string(p: int) -> tuple[bytes, int]:
        (n,) = struct.unpack_from("<Q", data, p)
        return data[p + 8:p + 8 + n], p + 8 + n

    def skip_value(vtype: int, p: int) -> int:
        if vtype in _FMT:
            return p + struct.calcsize(_FMT[vtype])
        if vtype == STRING:
            return take_string(p)[1]
        etype, count = struct.unpack_from("<IQ", data, p)
        p += 12
        if etype in _FMT:
            return p + count * struct.calcsize(_FMT[etype])
        for _ in range(count):
            p = skip_value(etype, p)
        return p

    for _ in range(n_kv):
        key, pos = take_string(pos)
        (vtype,) = struct.unpack_from("<I", data, pos)
        pos += 4
        end = skip_value(vtype, pos)
        payload = data[pos:end]
        if vtype == ARRAY and vocab_keep is not None:
            etype, count = struct.unpack_from("<IQ", payload, 0)
            if count > vocab_keep:
                p = pos + 12
                for _ in range(vocab_keep):
                    p = skip_value(etype, p)
                payload = struct.pack("<IQ", etype, vocab_keep) + data[pos + 12:p]
        if key == b"general.alignment" and vtype == UINT32:
            h.alignment = struct.unpack("<I", payload)[0]
        h.kvs.append((key, vtype, payload))
        pos = end
    for _ in range(n_tensors):
        name, pos = take_string(pos)
        (n_dims,) = struct.unpack_from("<I", data, pos)
        dims = struct.unpack_from(f"<{n_dims}Q", data, pos + 4)
        pos += 4 + 8 * n_dims
        ggml_type, offset = struct.unpack_from("<IQ", data, pos)
        pos += 12
        h.tensors.append((name, dims, ggml_type, offset))
    return h


def header_of_file(path: Path, vocab_keep: int | None = 512) -> Header:
    with open(path, "rb") as fh:
        data = fh.read(64 << 20)
    return parse(data, vocab_keep=vocab_keep)


# -- synthetic seeds ------------------------------------------------------------------------------

def synthetic(arch: str, *, n_layer: int = 4, n_embd: int = 64, n_head: int = 4, n_head_kv: int = 2, n_ff: int = 128,
              n_vocab: int = 256, n_expert: int = 0, n_expert_used: int = 0, swa: int = 0, mla: bool = False,
              per_layer_heads: bool = False, ggml_type: int = 0) -> Header:
    """A small model header of ``arch`` written directly (F32 by default), offsets laid out in order."""
    h = Header()
    a = arch
    h.kvs += [str_entry("general.architecture", arch), str_entry("general.name", f"synthetic {arch}"),
              int_entry(f"{a}.block_count", n_layer), int_entry(f"{a}.context_length", 4096),
              int_entry(f"{a}.embedding_length", n_embd), int_entry(f"{a}.vocab_size", n_vocab),
              (f"{a}.attention.layer_norm_rms_epsilon".encode(), FLOAT32, enc_scalar(FLOAT32, 1e-5))]
    if per_layer_heads:
        h.kvs.append((f"{a}.attention.head_count".encode(), ARRAY, enc_array(INT32, [n_head] * n_layer)))
        h.kvs.append((f"{a}.attention.head_count_kv".encode(), ARRAY, enc_array(INT32, [n_head_kv] * n_layer)))
        h.kvs.append((f"{a}.feed_forward_length".encode(), ARRAY, enc_array(INT32, [n_ff] * n_layer)))
    else:
        h.kvs += [int_entry(f"{a}.attention.head_count", n_head), int_entry(f"{a}.attention.head_count_kv", n_head_kv),
                  int_entry(f"{a}.feed_forward_length", n_ff)]
    hd = n_embd // n_head
    if swa:
        h.kvs.append(int_entry(f"{a}.attention.sliding_window", swa))
    if n_expert:
        h.kvs += [int_entry(f"{a}.expert_count", n_expert), int_entry(f"{a}.expert_used_count", n_expert_used),
                  int_entry(f"{a}.expert_feed_forward_length", n_ff)]
    if mla:
        h.kvs += [int_entry(f"{a}.attention.kv_lora_rank", 32), int_entry(f"{a}.attention.key_length", 48),
                  int_entry(f"{a}.attention.value_length", 32), int_entry(f"{a}.rope.dimension_count", 16),
                  int_entry(f"{a}.leading_dense_block_count", 1), int_entry(f"{a}.expert_shared_count", 1)]
    tensors: list[tuple[str, list[int]]] = [("token_embd.weight", [n_embd, n_vocab]), ("output_norm.weight", [n_embd]),
                                            ("output.weight", [n_embd, n_vocab])]
    for il in range(n_layer):
        p = f"blk.{il}."
        tensors += [(p + "attn_norm.weight", [n_embd]), (p + "ffn_norm.weight", [n_embd])]
        if mla:
            tensors += [(p + "attn_q.weight", [n_embd, n_head * 48]), (p + "attn_kv_a_mqa.weight", [n_embd, 32 + 16]),
                        (p + "attn_kv_a_norm.weight", [32]), (p + "attn_k_b.weight", [32, 32, n_head]),
                        (p + "attn_v_b.weight", [32, 32, n_head]), (p + "attn_output.weight", [n_head * 32, n_embd])]
        else:
            tensors += [(p + "attn_q.weight", [n_embd, n_head * hd]), (p + "attn_k.weight", [n_embd, n_head_kv * hd]),
                        (p + "attn_v.weight", [n_embd, n_head_kv * hd]), (p + "attn_output.weight", [n_head * hd, n_embd])]
        if n_expert and not (mla and il == 0):
            tensors += [(p + "ffn_gate_inp.weight", [n_embd, n_expert]),
                        (p + "ffn_gate_exps.weight", [n_embd, n_ff, n_expert]),
                        (p + "ffn_up_exps.weight", [n_embd, n_ff, n_expert]),
                        (p + "ffn_down_exps.weight", [n_ff, n_embd, n_expert])]
            if mla:
                tensors += [(p + "ffn_gate_shexp.weight", [n_embd, n_ff]), (p + "ffn_up_shexp.weight", [n_embd, n_ff]),
                            (p + "ffn_down_shexp.weight", [n_ff, n_embd])]
        else:
            tensors += [(p + "ffn_gate.weight", [n_embd, n_ff]), (p + "ffn_up.weight", [n_embd, n_ff]),
                        (p + "ffn_down.weight", [n_ff, n_embd])]
    offset = 0
    for name, dims in tensors:
        t = 0 if len(dims) == 1 else ggml_type  # norms stay F32, as llama.cpp's converters write them
        h.tensors.append((name.encode(), tuple(dims), t, offset))
        n_bytes = _nbytes(t, dims)
        offset += (n_bytes + 31) // 32 * 32
    return h


def _nbytes(ggml_type: int, dims: list[int]) -> int:
    from llamasplit.gguf_constants import GGML_QUANT_SIZES, GGMLQuantizationType

    block, size = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
    n = 1
    for d in dims[1:]:
        n *= d
    return dims[0] // block * size * n


def synthetic_seeds() -> list[Header]:
    return [
        synthetic("llama"),
        synthetic("llama", n_layer=8, per_layer_heads=True, ggml_type=8),  # Q8_0
        synthetic("qwen3moe", n_expert=4, n_expert_used=2),
        synthetic("gemma3", n_layer=6, swa=512),
        synthetic("deepseek2", n_expert=4, n_expert_used=2, mla=True),
        synthetic("qwen2", n_layer=3, ggml_type=1),
    ]


# -- mutations ------------------------------------------------------------------------------------

def _random_value(rng: random.Random, n_layer: int) -> tuple[int, bytes]:
    """A value of a random type, biased to the ones that break converters' assumptions."""
    kind = rng.random()
    if kind < 0.30:
        vtype = rng.choice([UINT32, INT32, UINT64, INT64, UINT16, UINT8, INT8, INT16])
        return vtype, enc_scalar(vtype, rng.choice(INTERESTING_INTS + INTERESTING_NEG + [n_layer, n_layer + 1]))
    if kind < 0.45:
        vtype = rng.choice([FLOAT32, FLOAT64])
        return vtype, enc_scalar(vtype, rng.choice(INTERESTING_FLOATS + [2.0, 32.0]))
    if kind < 0.55:
        return STRING, enc_string(rng.choice(HOSTILE_STRINGS))
    if kind < 0.60:
        return BOOL, enc_scalar(BOOL, rng.random() < 0.5)
    # arrays: per-layer values of the right or wrong length, with interesting elements
    length = rng.choice([0, 1, n_layer - 1, n_layer, n_layer, n_layer, n_layer + 1, 600])
    length = max(0, length)
    etype = rng.choice([INT32, UINT32, INT32, FLOAT32, BOOL, STRING, UINT64, INT8, ARRAY])
    if etype == ARRAY:
        return ARRAY, struct.pack("<IQ", ARRAY, 1) + struct.pack("<IQ", INT32, 0)
    if etype == STRING:
        return ARRAY, enc_array(STRING, [rng.choice(HOSTILE_STRINGS) for _ in range(length)])
    if etype == FLOAT32:
        return ARRAY, enc_array(FLOAT32, [rng.choice(INTERESTING_FLOATS + [8.0]) for _ in range(length)])
    base = rng.choice([0, 1, 2, 4, 8, 64])
    values = [base] * length
    for _ in range(rng.randint(0, 2)):
        if values:
            values[rng.randrange(len(values))] = rng.choice(INTERESTING_INTS + INTERESTING_NEG)
    return ARRAY, enc_array(etype, values)


def _key(rng: random.Random, h: Header) -> bytes:
    arch = h.arch()
    if rng.random() < 0.8:
        return f"{arch}.{rng.choice(ARCH_KEYS)}".encode("utf-8", "replace")
    return rng.choice(GENERAL_KEYS).encode()


def _n_layer(h: Header) -> int:
    for key, vtype, payload in h.kvs:
        if key.endswith(b".block_count") and vtype in _FMT and vtype not in (FLOAT32, FLOAT64):
            return int(struct.unpack(_FMT[vtype], payload)[0])
    return 4


_LAYER_RE = re.compile(rb"^blk\.(\d+)\.")


def mutate(h: Header, rng: random.Random) -> Header:
    """One structural mutation of ``h`` (a copy)."""
    h = h.copy()
    n_layer = max(1, min(_n_layer(h), 4096))
    op = rng.random()
    if op < 0.30:  # set a planner key to a random value
        key = _key(rng, h)
        vtype, payload = _random_value(rng, n_layer)
        h.kvs = [kv for kv in h.kvs if kv[0] != key]
        h.kvs.insert(rng.randint(0, len(h.kvs)), (key, vtype, payload))
    elif op < 0.36:  # delete a key
        if h.kvs:
            if rng.random() < 0.5:
                key = _key(rng, h)
                h.kvs = [kv for kv in h.kvs if kv[0] != key]
            else:
                h.kvs.pop(rng.randrange(len(h.kvs)))
    elif op < 0.40:  # duplicate a key (llama.cpp's gguf.cpp refuses the file)
        if h.kvs:
            kv = rng.choice(h.kvs)
            if rng.random() < 0.5:
                vtype, payload = _random_value(rng, n_layer)
                kv = (kv[0], vtype, payload)
            h.kvs.append(kv)
    elif op < 0.44:  # architecture: hostile, unknown or another family
        value = rng.choice(HOSTILE_STRINGS + ["qwen3moe", "deepseek2", "gemma3", "mamba", "llama4", "bert", "t5", "rwkv7",
                                              "granitehybrid", "nemotron_h", "glm4moe", "gpt-oss", "unknownarch"])
        old = h.arch()
        h.kvs = [(k.replace(old.encode(), value.encode("utf-8", "replace"), 1) if k.startswith(old.encode() + b".") else k, t, p)
                 for k, t, p in h.kvs if k != b"general.architecture"]
        h.kvs.insert(0, str_entry("general.architecture", value))
    elif op < 0.50:  # delete tensors: one, an expert tensor, or a whole layer
        if h.tensors:
            r = rng.random()
            if r < 0.4:
                h.tensors.pop(rng.randrange(len(h.tensors)))
            elif r < 0.7:
                exps = [i for i, t in enumerate(h.tensors) if b"_exps" in t[0] or b"_shexp" in t[0] or b"gate_inp" in t[0]]
                if exps:
                    h.tensors.pop(rng.choice(exps))
            else:
                il = rng.randrange(n_layer)
                h.tensors = [t for t in h.tensors if not t[0].startswith(b"blk.%d." % il)]
    elif op < 0.58:  # rename a tensor: layer index past block_count, a hostile name, a duplicate
        if h.tensors:
            i = rng.randrange(len(h.tensors))
            name, dims, t, off = h.tensors[i]
            r = rng.random()
            if r < 0.5:
                new = _LAYER_RE.sub(b"blk.%d." % rng.choice([n_layer, n_layer + 1, 10**6, 2**40]), name)
                if new == name:
                    new = b"blk.%d.attn_q.weight" % rng.choice([n_layer, 10**6])
            elif r < 0.75:
                new = rng.choice(HOSTILE_STRINGS).encode("utf-8", "replace") or b"x"
            else:
                new = rng.choice(h.tensors)[0]
            h.tensors[i] = (new, dims, t, off)
    elif op < 0.68:  # a tensor's dims, type or offset
        if h.tensors:
            i = rng.randrange(len(h.tensors))
            name, dims, t, off = h.tensors[i]
            r = rng.random()
            if r < 0.5:
                dims = list(dims)
                if rng.random() < 0.2:
                    dims = dims + [rng.choice([1, 2, 3])] if len(dims) < 6 else []
                elif dims:
                    dims[rng.randrange(len(dims))] = rng.choice(INTERESTING_INTS + [2**64 - 1, 2**63])
                dims = tuple(dims)
            elif r < 0.8:
                t = rng.choice([0, 1, 2, 3, 8, 10, 12, 14, 16, 20, 23, 24, 30, 31, 36, 39, 40, 100, 2**31, 2**32 - 1])
            else:
                off = rng.choice([1, 31, 33, 2**40, 2**63, 2**64 - 32])
            h.tensors[i] = (name, dims, t, off)
    elif op < 0.72:  # many tensors or many layers: the work a header can cause must stay bounded
        r = rng.random()
        if r < 0.5 and h.tensors:
            n_more = rng.choice([1000, 20_000, 70_000])  # 70000: past the reader's bound of 65536
            h.extra = (n_more, _many_tensors(h.tensors[0], n_more))
        else:
            big = rng.choice([513, 4096, 100_000, 2**31])
            key = f"{h.arch()}.block_count".encode("utf-8", "replace")
            h.kvs = [kv if kv[0] != key else int_entry(key.decode("utf-8", "replace"), big) for kv in h.kvs]
    elif op < 0.76:  # the counts in the header disagree with the entries
        if rng.random() < 0.5:
            h.n_kv_delta = rng.choice([-1, 1, 2**40])
        else:
            h.n_tensors_delta = rng.choice([-1, 1, 2**40])
    elif op < 0.80:  # version, alignment
        if rng.random() < 0.5:
            h.version = rng.choice([1, 2, 4, 0x03000000])
        else:
            value = rng.choice([0, 1, 3, 16, 64, 4096, 2**31])
            h.kvs = [kv for kv in h.kvs if kv[0] != b"general.alignment"]
            h.kvs.append(int_entry("general.alignment", value))
            h.alignment = value
    elif op < 0.90:  # a new key of a random name and value (hostile key names included)
        key = rng.choice([_key(rng, h), rng.choice(HOSTILE_STRINGS).encode("utf-8", "replace") or b"k"])
        vtype, payload = _random_value(rng, n_layer)
        h.kvs.append((key, vtype, payload))
    else:  # a value of the right type, a different number: negative per-layer values, zero heads
        key = _key(rng, h)
        vtype = rng.choice([INT32, INT64, UINT32])
        h.kvs = [kv for kv in h.kvs if kv[0] != key]
        h.kvs.append((key, vtype, enc_scalar(vtype, rng.choice(INTERESTING_NEG + [0, 1, 3, 2**31 - 1]))))
    return h


def damage(data: bytes, rng: random.Random) -> bytes:
    """Raw byte damage: flips, a truncation, or an insertion."""
    buf = bytearray(data)
    r = rng.random()
    if r < 0.5:
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(len(buf))
            buf[i] = rng.randrange(256)
    elif r < 0.8:
        del buf[rng.randrange(24, len(buf)):]
    else:
        i = rng.randrange(len(buf))
        buf[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    return bytes(buf)


def case(seeds: list[Header], rng: random.Random) -> bytes:
    """One fuzz case: a seed, one to three mutations, and sometimes byte damage."""
    h = rng.choice(seeds)
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        h = mutate(h, rng)
    data = h.to_bytes()
    if rng.random() < 0.1:
        data = damage(data, rng)
    return data


# -- running one case -----------------------------------------------------------------------------

@dataclass
class Outcome:
    kind: str  # "ok", "read_error", "plan_error", "crash", "slow"
    detail: str = ""
    read_s: float = 0.0
    """CPU seconds of the read (this thread's), so a machine busy with other work does not count."""
    plan_s: float = 0.0


_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069]")


class _Timeout(BaseException):
    """Raised by the alarm when one step runs far past the limit (so a fuzz run cannot hang)."""


def _alarm(_signum, _frame):
    raise _Timeout()


def check_one(data: bytes, path: Path, fleet, options, *, limit_s: float = 2.0, hard_s: float = 20.0) -> Outcome:
    """Write ``data`` to ``path``, read it and plan it; classify what happened.

    A step still running after ``hard_s`` is stopped by SIGALRM (main thread only) and reported slow."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return _check_one(data, path, fleet, options, limit_s)
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, hard_s)
    t0 = time.perf_counter()
    try:
        return _check_one(data, path, fleet, options, limit_s)
    except _Timeout:
        return Outcome("slow", f"stopped after {time.perf_counter() - t0:.0f} s", time.perf_counter() - t0)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _check_one(data: bytes, path: Path, fleet, options, limit_s: float) -> Outcome:
    from llamasplit.errors import LlamasplitError
    from llamasplit.model.profile import read_model
    from llamasplit.planner.plan import plan

    path.write_bytes(data)
    t0 = time.thread_time()
    try:
        profile = read_model(path, require_data=False)
    except LlamasplitError as err:
        read_s = time.thread_time() - t0
        return _judge("read_error", err.one_line(), read_s, 0.0, limit_s)
    except Exception as exc:  # noqa: BLE001 - the finding
        return Outcome("crash", f"read: {_where(exc)} {type(exc).__name__}: {exc}"[:300], time.thread_time() - t0)
    read_s = time.thread_time() - t0
    t1 = time.thread_time()
    try:
        result = plan(profile, fleet, options)
        text = result.summary()
    except LlamasplitError as err:
        return _judge("plan_error", err.one_line(), read_s, time.thread_time() - t1, limit_s)
    except Exception as exc:  # noqa: BLE001 - the finding
        return Outcome("crash", f"plan: {_where(exc)} {type(exc).__name__}: {exc}"[:300], read_s, time.thread_time() - t1)
    out = _judge("ok", text, read_s, time.thread_time() - t1, limit_s)
    if out.kind == "ok":
        for d in (*result.devices, result.host):
            fields = (d.model_bytes, d.context_bytes, d.compute_bytes, d.overhead_bytes, d.output_bytes, d.total_bytes)
            if any(v < 0 for v in fields):
                return Outcome("crash", f"negative memory on {d.name}: {fields}", out.read_s, out.plan_s)
    return out


def _where(exc: BaseException) -> str:
    """file:line of the innermost frame of ours, to group findings."""
    import traceback

    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "llamasplit" in f.filename]
    last = frames[-1] if frames else None
    return f"{Path(last.filename).name}:{last.lineno}" if last else "?"


def _judge(kind: str, text: str, read_s: float, plan_s: float, limit_s: float) -> Outcome:
    if read_s > limit_s or plan_s > limit_s:
        return Outcome("slow", f"read {read_s:.2f} s, plan {plan_s:.2f} s: {text[:200]}", read_s, plan_s)
    if _CONTROL.search(text.replace("\n", " ")):
        return Outcome("crash", f"raw control character in output: {text[:200]!r}", read_s, plan_s)
    return Outcome(kind, text[:200], read_s, plan_s)
