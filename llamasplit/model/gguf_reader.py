"""A bounded, fast reader of GGUF headers.

Reads the key/value metadata and the tensor table, never the weights. Every length and count in
the file is checked against the bytes that remain before anything is allocated, so a corrupt or
hostile header fails with one ``ModelReadError`` naming the file and the offset. Arrays the
planner does not need (the tokenizer's vocabulary, merges, scores) are skipped: only their element
type and count are kept, which is what makes this reader hundreds of times faster than
``gguf.GGUFReader`` on models with large vocabularies.
"""

from __future__ import annotations

import math
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable
from typing import Any

from llamasplit.gguf_constants import GGML_QUANT_SIZES, GGUF_MAGIC, GGMLQuantizationType, GGUFValueType

from llamasplit.errors import ModelReadError

GGML_MAX_DIMS = 4
"""ggml tensors have at most four dimensions (ggml.h GGML_MAX_DIMS)."""

MAX_KEY_BYTES = 1 << 16
"""Longest metadata key we accept; llama.cpp's keys are under 100 bytes."""

MAX_STRING_BYTES = 1 << 26
"""Longest string value we decode (chat templates are tens of KiB; 64 MiB is absurd already)."""

MAX_TENSORS = 1 << 16
"""Most tensor entries we read. llama.cpp loads at most 512 blocks (src/llama-hparams.h
LLAMA_MAX_LAYERS) and refuses a file holding tensors its architecture does not create
(llama_model_loader::done_getting_tensors, "wrong number of tensors"); no architecture creates
128 tensors per block, so a longer table is damage, and reading it would cost seconds and
hundreds of MB."""

_INT64_MAX = (1 << 63) - 1

MAX_DECODED_ARRAY = 1 << 16
"""Numeric arrays up to this many elements are decoded (per-layer head counts, SWA patterns);
longer ones, and every string array, are skipped and summarised as ``ArraySummary``."""

_SCALAR_FORMATS: dict[int, str] = {
    GGUFValueType.UINT8: "<B",
    GGUFValueType.INT8: "<b",
    GGUFValueType.UINT16: "<H",
    GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I",
    GGUFValueType.INT32: "<i",
    GGUFValueType.FLOAT32: "<f",
    GGUFValueType.BOOL: "<?",
    GGUFValueType.UINT64: "<Q",
    GGUFValueType.INT64: "<q",
    GGUFValueType.FLOAT64: "<d",
}
_SCALAR_STRUCTS = {k: struct.Struct(v) for k, v in _SCALAR_FORMATS.items()}
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_KNOWN_GGML_TYPES = {int(t) for t in GGMLQuantizationType}


@dataclass(frozen=True)
class ArraySummary:
    """An array that was skipped, not decoded: its element type and length."""

    element_type: int
    count: int


@dataclass(frozen=True)
class RawTensor:
    """One entry of the tensor table, as the file states it."""

    name: str
    ggml_type: int
    shape: tuple[int, ...]
    """``ne[0..n_dims)``: ``shape[0]`` is the row length (contiguous dimension)."""
    n_bytes: int
    offset: int
    """Absolute offset of the tensor's data in its file."""


@dataclass(frozen=True)
class RawHeader:
    """Everything a GGUF header says, bounded."""

    path: Path | str
    """The file, or the URL of a remote one."""
    version: int
    metadata: dict[str, Any]
    tensors: tuple[RawTensor, ...]
    file_bytes: int
    data_offset: int
    alignment: int
    header_bytes: int = 0
    """Where the tensor table ends: the bytes a reader must see (what a remote read transfers)."""


def ggml_nbytes(ggml_type: int, shape: tuple[int, ...]) -> int:
    """Bytes of a contiguous tensor: rows of ``shape[0]`` elements in blocks of the type."""
    block_size, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
    n_rows = 1
    for dim in shape[1:]:
        n_rows *= dim
    return shape[0] // block_size * type_size * n_rows


Grow = Callable[[int, "int | None", int], "bytes | bytearray"]
"""``grow(end, hint, start)``: a buffer of the file's first ``end`` bytes at least, of which
``[start, end)`` must be the file's; bytes before ``start`` that were not in hand yet are data the
parser skipped (a score array) and may be anything. ``hint``: a guess of how far the reader will
go. For a buffer that is only a prefix of the file, e.g. a remote file's header."""


class _Cursor:
    """Bounds-checked little-endian reads over a buffer: the whole file, or a prefix that ``grow`` extends.

    Every bound is against ``file_bytes`` (what the file can hold); ``size`` is what is in hand.
    """

    def __init__(self, buf: mmap.mmap | bytes | bytearray, path: Path | str, file_bytes: int | None = None,
                 grow: Grow | None = None) -> None:
        self.buf = buf
        self.size = len(buf)
        self.file_bytes = self.size if file_bytes is None else file_bytes
        self.grow = grow
        self.pos = 0
        self.path = path

    def more(self, end: int, what: str, hint: int | None = None) -> None:
        """Make bytes ``[pos, end)`` available (the parser never reads behind ``pos``), or fail with ``what``."""
        if self.grow is None or end > self.file_bytes:
            raise self.fail(what)
        self.buf = self.grow(end, hint, self.pos)
        self.size = len(self.buf)

    def fail(self, what: str, at: int | None = None) -> ModelReadError:
        where = self.pos if at is None else at
        return ModelReadError(
            f"{self.path}: not a valid GGUF file: {what} at offset {where}",
            remedy="the file is corrupt or truncated; download it again",
        )

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            message = f"{what} needs {n} bytes but only {self.file_bytes - self.pos} remain"
            if n < 0:
                raise self.fail(message)
            self.more(self.pos + n, message)

    def u32(self, what: str) -> int:
        self.need(4, what)
        (v,) = _U32.unpack_from(self.buf, self.pos)
        self.pos += 4
        return v

    def u64(self, what: str) -> int:
        self.need(8, what)
        (v,) = _U64.unpack_from(self.buf, self.pos)
        self.pos += 8
        return v

    def string(self, what: str, limit: int = MAX_STRING_BYTES) -> str:
        start = self.pos
        n = self.u64(f"length of {what}")
        if n > limit:
            raise self.fail(f"{what} claims {n} bytes (limit {limit})", at=start)
        self.need(n, what)
        raw = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        return raw.decode("utf-8", errors="replace")

    def skip_strings(self, count: int, what: str) -> None:
        """Skip ``count`` strings, checking each length; the hot loop for vocabularies."""
        buf, pos, size, unpack = self.buf, self.pos, self.size, _U64.unpack_from
        start = pos
        for i in range(count):
            if pos + 8 > size:
                self.pos = pos
                # a prefix: guess the array's end from the strings so far, to fetch it in one go
                hint = pos + (count - i) * (pos - start) // i if i >= 256 else None
                self.more(pos + 8, f"{what}: string length runs past the end of the file", hint)
                buf, size = self.buf, self.size
            pos += 8 + unpack(buf, pos)[0]
        if pos > self.file_bytes:
            raise self.fail(f"{what}: string runs past the end of the file")
        self.pos = pos

    def scalar(self, vtype: int, what: str) -> Any:
        st = _SCALAR_STRUCTS[vtype]
        self.need(st.size, what)
        (v,) = st.unpack_from(self.buf, self.pos)
        self.pos += st.size
        return v

    def value(self, vtype: int, key: str) -> Any:
        if vtype in _SCALAR_STRUCTS:
            return self.scalar(vtype, f"value of {key}")
        if vtype == GGUFValueType.STRING:
            return self.string(f"value of {key}")
        if vtype == GGUFValueType.ARRAY:
            return self.array(key)
        raise self.fail(f"key {key!r} has unknown value type {vtype}", at=self.pos - 4)

    def array(self, key: str) -> Any:
        at = self.pos
        etype = self.u32(f"element type of {key}")
        count = self.u64(f"length of {key}")
        if etype in _SCALAR_STRUCTS:
            width = _SCALAR_STRUCTS[etype].size
            if count > (self.file_bytes - self.pos) // width:
                raise self.fail(f"array {key!r} claims {count} elements, more than the file holds", at=at)
            if count > MAX_DECODED_ARRAY:
                self.pos += count * width
                return ArraySummary(etype, count)
            fmt = "<" + str(count) + _SCALAR_FORMATS[etype][1]
            self.need(count * width, f"array {key!r}")
            values = struct.unpack_from(fmt, self.buf, self.pos)
            self.pos += count * width
            return list(values)
        if etype == GGUFValueType.STRING:
            # each string costs at least its 8-byte length
            if count > (self.file_bytes - self.pos) // 8:
                raise self.fail(f"array {key!r} claims {count} strings, more than the file holds", at=at)
            if count <= 64:
                return [self.string(f"element of {key}") for _ in range(count)]
            self.skip_strings(count, key)
            return ArraySummary(etype, count)
        if etype == GGUFValueType.ARRAY:
            raise self.fail(f"array {key!r} of arrays is not supported", at=at)
        raise self.fail(f"array {key!r} has unknown element type {etype}", at=at)


def read_header(path: str | os.PathLike[str], *, require_data: bool = True) -> RawHeader:
    """Read a GGUF file's header.

    ``require_data=False`` accepts files whose tensor data is missing (header-only files that
    describe a model too large to write out, as our tests and benchmarks make).
    """
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            file_bytes = os.fstat(fh.fileno()).st_size
            if file_bytes < 24:
                raise ModelReadError(
                    f"{path}: not a GGUF file: only {file_bytes} bytes",
                    remedy="check the path; a GGUF file starts with the bytes 'GGUF'",
                )
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                return parse_header(mm, path, file_bytes, require_data=require_data)
    except FileNotFoundError as exc:
        raise ModelReadError(f"{path}: no such file", remedy="check the path") from exc
    except IsADirectoryError as exc:
        raise ModelReadError(f"{path}: is a directory, not a GGUF file", remedy="give the .gguf file") from exc
    except PermissionError as exc:
        raise ModelReadError(f"{path}: permission denied", remedy="check the file's permissions") from exc
    except OSError as exc:
        raise ModelReadError(f"{path}: cannot read: {exc.strerror or exc}", remedy="check the file") from exc


def parse_header(buf: mmap.mmap | bytes | bytearray, path: Path | str, file_bytes: int, *, require_data: bool = True,
                 grow: Grow | None = None) -> RawHeader:
    """Parse a header from ``buf``: the whole file, or (with ``grow``) a prefix of a ``file_bytes`` file
    that is extended as the parser goes: the same checks either way, and nothing past the tensor table."""
    cur = _Cursor(buf, path, file_bytes, grow)
    magic = cur.u32("magic")
    if magic != GGUF_MAGIC:
        if magic == int.from_bytes(b"GGUF", "big"):
            raise cur.fail("big-endian GGUF is not supported", at=0)
        raise ModelReadError(
            f"{path}: not a GGUF file: magic {bytes(cur.buf[0:4])!r} at offset 0",
            remedy="llamasplit reads GGUF models (.gguf); convert others with llama.cpp's convert_hf_to_gguf.py",
        )
    version = cur.u32("version")
    if version not in (2, 3):
        raise ModelReadError(
            f"{path}: GGUF version {version} at offset 4 is not supported (only 2 and 3)",
            remedy="re-convert the model with a current llama.cpp",
        )
    n_tensors = cur.u64("tensor count")
    n_kv = cur.u64("metadata count")
    # a key/value pair is at least 8 (key length) + 1 (key) + 4 (type) + 1 (value) bytes,
    # a tensor entry at least 8 + 1 + 4 + 8 + 4 + 8 bytes
    if n_kv > (file_bytes - cur.pos) // 14:
        raise cur.fail(f"metadata count {n_kv} is more than the file can hold", at=16)
    if n_tensors > (file_bytes - cur.pos) // 33:
        raise cur.fail(f"tensor count {n_tensors} is more than the file can hold", at=8)
    if n_tensors > MAX_TENSORS:
        raise cur.fail(f"tensor count {n_tensors} is more than any llama.cpp model has (at most {MAX_TENSORS})", at=8)

    metadata: dict[str, Any] = {}
    for _ in range(n_kv):
        at = cur.pos
        key = cur.string("metadata key", limit=MAX_KEY_BYTES)
        # llama.cpp refuses empty and repeated keys (ggml/src/gguf.cpp gguf_init_from_file_impl:
        # "key %d is empty", "duplicate key '%s' for KV pair %d")
        if not key:
            raise cur.fail("a metadata key is empty", at=at)
        if key in metadata:
            raise cur.fail(f"metadata key {key!r} appears twice", at=at)
        vtype = cur.u32(f"type of {key}")
        metadata[key] = cur.value(vtype, key)

    alignment = metadata.get("general.alignment", 32)
    if not isinstance(alignment, int) or isinstance(alignment, bool) or alignment <= 0 or alignment & (alignment - 1):
        raise cur.fail(f"general.alignment {alignment!r} is not a power of two")

    raw: list[tuple[str, int, tuple[int, ...], int, int]] = []
    seen: set[str] = set()
    for _ in range(n_tensors):
        at = cur.pos
        name = cur.string("tensor name", limit=MAX_KEY_BYTES)
        n_dims = cur.u32(f"dimension count of {name}")
        if not 1 <= n_dims <= GGML_MAX_DIMS:
            raise cur.fail(f"tensor {name!r} has {n_dims} dimensions (1 to {GGML_MAX_DIMS})", at=at)
        shape = tuple(cur.u64(f"dimension of {name}") for _ in range(n_dims))
        ggml_type = cur.u32(f"type of {name}")
        rel_offset = cur.u64(f"offset of {name}")
        if ggml_type not in _KNOWN_GGML_TYPES:
            raise cur.fail(f"tensor {name!r} has unknown ggml type {ggml_type}", at=at)
        if name in seen:
            raise cur.fail(f"tensor {name!r} appears twice", at=at)
        seen.add(name)
        block_size, _ = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
        if any(d == 0 for d in shape) or any(d >= 1 << 62 for d in shape):
            raise cur.fail(f"tensor {name!r} has an impossible shape {list(shape)}", at=at)
        if math.prod(shape) > _INT64_MAX:  # gguf.cpp: "incorrect shape ... may cause overflow errors"
            raise cur.fail(f"tensor {name!r} has {math.prod(shape)} elements, more than int64 can count", at=at)
        if shape[0] % block_size:
            raise cur.fail(
                f"tensor {name!r}: row of {shape[0]} elements is not a multiple of the "
                f"{GGMLQuantizationType(ggml_type).name} block of {block_size}",
                at=at,
            )
        raw.append((name, ggml_type, shape, rel_offset, at))

    header_end = cur.pos
    data_offset = (cur.pos + alignment - 1) // alignment * alignment
    tensors = []
    for name, ggml_type, shape, rel_offset, at in raw:
        n_bytes = ggml_nbytes(ggml_type, shape)
        if rel_offset % alignment:
            raise cur.fail(f"tensor {name!r} data offset {rel_offset} is not aligned to {alignment}", at=at)
        end = data_offset + rel_offset + n_bytes
        if require_data and end > file_bytes:
            raise ModelReadError(
                f"{path}: tensor {name!r} data ends at offset {end}, past the end of the file ({file_bytes} bytes)",
                remedy="the file is truncated; download it again",
            )
        tensors.append(RawTensor(name, ggml_type, shape, n_bytes, data_offset + rel_offset))
    return RawHeader(
        path=path,
        version=version,
        metadata=metadata,
        tensors=tuple(tensors),
        file_bytes=file_bytes,
        data_offset=data_offset,
        alignment=alignment,
        header_bytes=header_end,
    )
