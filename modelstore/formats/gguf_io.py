"""GGUF (llama.cpp) reader and streaming writer; our own parser, no dependency.

File layout (version 2/3): ``GGUF``, u32 version, u64 n_tensors, u64 n_kv, the key/value
pairs (string key, u32 value type, value), the tensor infos (string name, u32 n_dims, u64
dims — fastest-varying first —, u32 ggml type, u64 offset), padding to ``general.alignment``
(default 32), then the data section; offsets are relative to its start.

How GGUF maps onto modelstore (documented decision):
- plain types (F32 F16 BF16 F64 I8 I16 I32 I64) become tensors of our dtype with the numpy
  shape (the dims reversed);
- quantized block types (Q4_0, Q8_0, Q4_K, IQ*, ...) are stored as their raw bytes: dtype U8,
  shape ``(*dims[:0:-1], dims[0] / block_elements * block_bytes)`` (rows of blocks, so the
  first-axis chunking still cuts between rows);
- one extra tensor, ``__gguf__`` (U8, 1-D), holds UTF-8 JSON recording what the dtypes
  cannot: every key/value pair with its GGUF value type (tokenizer vocabularies included),
  the alignment, and each tensor's ggml type and dims in file order. It rides along in the
  store like any tensor, so a stored version writes back to a .gguf with the same tensors
  (bit-exact bytes), types and metadata without any other record;
- ``ModelSource.metadata`` carries the scalar key/values (and arrays of at most 16 items, as
  JSON) as strings, for version attributes; the record above is the authoritative copy;
- ``ModelSource.params`` is the logical element count from the GGUF dims (a Q4_0 tensor of
  N weights counts N, not its N*18/32 stored bytes; the record counts nothing).

The writer lays tensors out in spec order (the order it may read them in); it needs the
record first, so when ``__gguf__`` is not the first spec the tensors before it are spilled to
a temporary file next to the target. Without a record it writes plain dtypes only, with
``metadata`` as string key/values.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
import tempfile
from collections.abc import Sequence
from typing import Any

import numpy as np

from modelstore.errors import InternalError, InvalidInputError

from .base import (
    Checked,
    MappedFile,
    ModelSource,
    ReadTensor,
    TensorSource,
    atomic_output,
    copy_tensor,
    format_writer,
    load_record,
    numel,
    open_file,
    read_whole,
)

MAGIC = b"GGUF"
RECORD = "__gguf__"
RECORD_FORMAT = "modelstore-gguf/1"
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 8
MAX_NESTING = 8
SHORT_ARRAY = 16  # arrays up to this many items also go to ModelSource.metadata

# ggml type code -> (name, elements per block, bytes per block, our dtype for plain types)
GGML_TYPES: dict[int, tuple[str, int, int, str | None]] = {
    0: ("F32", 1, 4, "F32"), 1: ("F16", 1, 2, "F16"), 2: ("Q4_0", 32, 18, None),
    3: ("Q4_1", 32, 20, None), 6: ("Q5_0", 32, 22, None), 7: ("Q5_1", 32, 24, None),
    8: ("Q8_0", 32, 34, None), 9: ("Q8_1", 32, 40, None), 10: ("Q2_K", 256, 84, None),
    11: ("Q3_K", 256, 110, None), 12: ("Q4_K", 256, 144, None), 13: ("Q5_K", 256, 176, None),
    14: ("Q6_K", 256, 210, None), 15: ("Q8_K", 256, 292, None), 16: ("IQ2_XXS", 256, 66, None),
    17: ("IQ2_XS", 256, 74, None), 18: ("IQ3_XXS", 256, 98, None), 19: ("IQ1_S", 256, 50, None),
    20: ("IQ4_NL", 32, 18, None), 21: ("IQ3_S", 256, 110, None), 22: ("IQ2_S", 256, 82, None),
    23: ("IQ4_XS", 256, 136, None), 24: ("I8", 1, 1, "I8"), 25: ("I16", 1, 2, "I16"),
    26: ("I32", 1, 4, "I32"), 27: ("I64", 1, 8, "I64"), 28: ("F64", 1, 8, "F64"),
    29: ("IQ1_M", 256, 56, None), 30: ("BF16", 1, 2, "BF16"), 34: ("TQ1_0", 256, 54, None),
    35: ("TQ2_0", 256, 66, None), 39: ("MXFP4", 32, 17, None), 40: ("NVFP4", 64, 36, None),
    41: ("Q1_0", 128, 18, None),
}
GGML_BY_NAME = {v[0]: k for k, v in GGML_TYPES.items()}
PLAIN_BY_DTYPE = {v[3]: k for k, v in GGML_TYPES.items() if v[3] is not None}

# GGUF value types: code -> struct format (8 = string, 9 = array)
STRING, ARRAY, BOOL_T = 8, 9, 7
SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "B", 10: "Q", 11: "q", 12: "d"}
_NP = {0: "u1", 1: "i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "u1", 10: "<u8", 11: "<i8", 12: "<f8"}


def storage_shape(ggml: int, dims: Sequence[int], where: str) -> tuple[tuple[int, ...], int]:
    """(our shape, nbytes) of a tensor with GGUF ``dims`` of ggml type ``ggml``."""
    name, block, size, plain = GGML_TYPES[ggml]
    if plain is not None:
        shape = tuple(reversed(dims))
        return shape, numel(shape) * size
    if not dims or dims[0] % block:
        raise InvalidInputError(f"{where}: {name} tensor with dims {list(dims)}: the first dim is not a multiple of {block}")
    shape = (*reversed(dims[1:]), dims[0] // block * size)
    return shape, numel(shape)


class _Cursor:
    """Bounds-checked little-endian reads from the file's mmap."""

    def __init__(self, mm: mmap.mmap, where: str) -> None:
        self.mm, self.pos, self.size, self.where = mm, 0, len(mm), where

    def take(self, n: int) -> int:
        if n < 0 or self.pos + n > self.size:
            raise InvalidInputError(f"{self.where}: truncated or corrupt GGUF file (needs {n} bytes at offset {self.pos}, file has {self.size})")
        start = self.pos
        self.pos += n
        return start

    def unpack(self, fmt: str) -> Any:
        s = struct.Struct("<" + fmt)
        return s.unpack_from(self.mm, self.take(s.size))[0]

    def string(self) -> str:
        n = self.unpack("Q")
        start = self.take(n)
        return self.mm[start:start + n].decode("utf-8", "surrogateescape")

    def value(self, vtype: int, depth: int = 0) -> Any:
        if vtype in SCALARS:
            v = self.unpack(SCALARS[vtype])
            return bool(v) if vtype == BOOL_T and v in (0, 1) else v
        if vtype == STRING:
            return self.string()
        if vtype == ARRAY:
            if depth >= MAX_NESTING:
                raise InvalidInputError(f"{self.where}: GGUF arrays nested more than {MAX_NESTING} deep")
            etype, n = self.unpack("I"), self.unpack("Q")
            if etype in _NP:
                start = self.take(n * struct.calcsize(SCALARS[etype]))
                items = np.frombuffer(self.mm, dtype=_NP[etype], count=n, offset=start).tolist()
                if etype == BOOL_T:
                    items = [bool(v) if v in (0, 1) else v for v in items]
                return [etype, items]
            if etype not in (STRING, ARRAY):
                raise InvalidInputError(f"{self.where}: unknown GGUF value type {etype} at offset {self.pos}")
            if n * 8 > self.size - self.pos:  # every string or array item takes at least 8 bytes
                raise InvalidInputError(f"{self.where}: GGUF array claims {n} items, more than the file holds")
            return [etype, [self.value(etype, depth + 1) for _ in range(n)]]
        raise InvalidInputError(f"{self.where}: unknown GGUF value type {vtype} at offset {self.pos}")


def _attr(vtype: int, value: Any) -> str | None:
    """A key/value as a version attribute string; None for long arrays and nested arrays."""
    if vtype == STRING:
        return value
    if vtype == ARRAY:
        etype, items = value
        if etype == ARRAY or len(items) > SHORT_ARRAY:
            return None
        return json.dumps(items, ensure_ascii=False)
    return json.dumps(value)


def read_gguf(path: str | os.PathLike[str]) -> ModelSource:
    where = os.fspath(path)
    with open_file(where, "a .gguf file") as f:
        size = os.fstat(f.fileno()).st_size
        if size < 24:
            raise InvalidInputError(f"{where}: truncated: {size} bytes, a GGUF file starts with a 24-byte header")
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        return _parse(mm, where)
    except BaseException:
        mm.close()
        raise


def _parse(mm: mmap.mmap, where: str) -> ModelSource:
    cur = _Cursor(mm, where)
    if mm[:4] != MAGIC:
        raise InvalidInputError(f"{where}: not a GGUF file (magic {bytes(mm[:4])!r})")
    cur.take(4)
    version = cur.unpack("I")
    if version not in (2, 3):
        raise InvalidInputError(f"{where}: GGUF version {version} is not supported (2 and 3 are)")
    n_tensors, n_kv = cur.unpack("Q"), cur.unpack("Q")
    if n_kv * 12 + n_tensors * 24 > cur.size - cur.pos:
        raise InvalidInputError(f"{where}: header claims {n_tensors} tensors and {n_kv} key/values, more than the file holds")
    kv: list[list[Any]] = []
    metadata: dict[str, str] = {}
    for _ in range(n_kv):
        key = cur.string()
        vtype = cur.unpack("I")
        value = cur.value(vtype)
        kv.append([key, vtype, value])
        attr = _attr(vtype, value)
        if attr is not None:
            metadata[key] = attr
    align = next((v for k, t, v in kv if k == "general.alignment"), DEFAULT_ALIGNMENT)
    if not isinstance(align, int) or isinstance(align, bool) or not 1 <= align <= 1 << 20:
        raise InvalidInputError(f"{where}: general.alignment {align!r} is not an integer in 1..{1 << 20}")
    infos = []
    for _ in range(n_tensors):
        name = cur.string()
        n_dims = cur.unpack("I")
        if n_dims > MAX_DIMS:
            raise InvalidInputError(f"{where}: tensor {name!r} has {n_dims} dims (at most {MAX_DIMS})")
        dims = [cur.unpack("Q") for _ in range(n_dims)]
        ggml, offset = cur.unpack("I"), cur.unpack("Q")
        if ggml not in GGML_TYPES:
            raise InvalidInputError(f"{where}: tensor {name!r} has unknown ggml type {ggml}")
        infos.append((name, dims, ggml, offset))
    data_start = -(-cur.pos // align) * align
    tensors: list[TensorSource] = []
    record_tensors = []
    mapping = MappedFile(mm, where)
    for name, dims, ggml, offset in infos:
        tname, _, _, plain = GGML_TYPES[ggml]
        shape, nbytes = storage_shape(ggml, dims, f"{where}: tensor {name!r}")
        start = data_start + offset
        if start + nbytes > cur.size:
            raise InvalidInputError(
                f"{where}: tensor {name!r} ({tname}, dims {dims}) needs bytes {start}..{start + nbytes} "
                f"but the file has {cur.size} (truncated?)"
            )
        tensors.append(TensorSource(name, plain or "U8", shape, nbytes, mapping.reader(start, start + nbytes),
                                    mapping.releaser(start)))
        record_tensors.append([name, tname, dims])
    if any(t.name == RECORD for t in tensors):
        raise InvalidInputError(f"{where}: a tensor is named {RECORD!r}, which modelstore reserves for the GGUF record")
    record = json.dumps({"format": RECORD_FORMAT, "gguf_version": version, "alignment": align, "kv": kv,
                         "tensors": record_tensors}, separators=(",", ":")).encode("utf-8")
    blob = memoryview(record).toreadonly()
    tensors.insert(0, TensorSource(RECORD, "U8", (len(record),), len(record), lambda: blob))

    # the logical count: a quantized tensor's elements are its GGUF dims, not its stored bytes
    params = sum(numel(dims) for _, dims, _, _ in infos)
    return ModelSource("gguf", tensors, metadata, path=where, closers=[mapping.close], params=params)


# ----------------------------------------------------------------------------- writer


def _pack(vtype: int, value: Any, where: str, depth: int = 0) -> bytes:
    try:
        if vtype in SCALARS:
            return struct.pack("<" + SCALARS[vtype], int(value) if vtype == BOOL_T else value)
        if vtype == STRING:
            raw = value.encode("utf-8", "surrogateescape")
            return struct.pack("<Q", len(raw)) + raw
        if vtype == ARRAY and depth < MAX_NESTING:
            etype, items = value
            head = struct.pack("<IQ", etype, len(items))
            if etype in _NP:
                return head + np.asarray([int(v) for v in items] if etype == BOOL_T else items, dtype=_NP[etype]).tobytes()
            return head + b"".join(_pack(etype, v, where, depth + 1) for v in items)
    except (struct.error, TypeError, ValueError, AttributeError, OverflowError) as e:
        raise InvalidInputError(f"{where}: GGUF value {str(value)[:80]!r} does not fit type {vtype} ({e})") from None
    raise InvalidInputError(f"{where}: unknown GGUF value type {vtype!r}")


def _load_record(raw: bytes, where: str) -> dict[str, Any]:
    rec = load_record(raw, where, RECORD, RECORD_FORMAT, {"kv": list, "tensors": list, "alignment": int})
    if not 1 <= rec["alignment"] <= 1 << 20:
        raise InvalidInputError(f"{where}: the {RECORD!r} record has alignment {rec['alignment']}, not in 1..{1 << 20}")
    return rec


def _recorded(rec: dict[str, Any] | None, where: str) -> tuple[dict[str, tuple[int, list[int]]], dict[str, int]]:
    """The record's tensors: {name: (ggml type, dims)} and {name: position in the file}."""
    recorded, order = {}, {}
    for i, item in enumerate(rec["tensors"] if rec else []):
        try:
            name, tname, dims = item
            recorded[name] = (GGML_BY_NAME[tname], [int(d) for d in dims])
        except (TypeError, ValueError, KeyError):
            raise InvalidInputError(f"{where}: the {RECORD!r} record lists a bad tensor entry {str(item)[:80]}") from None
        order.setdefault(name, i)
    return recorded, order


def _still_recorded(recorded: dict, name: str, dtype: str, shape: tuple[int, ...], where: str) -> tuple | None:
    """(ggml type, dims) of a tensor as the record has it, unless it changed since (then None)."""
    if name not in recorded:
        return None
    ggml, dims = recorded[name]
    try:
        if storage_shape(ggml, dims, where)[0] == tuple(shape) and (GGML_TYPES[ggml][3] or "U8") == dtype:
            return ggml, dims
    except InvalidInputError:
        pass
    return None


def params_from_record(src: ModelSource) -> int | None:
    """The logical element count of a source carrying a ``__gguf__`` record in another format
    (a GGUF version checked out as .safetensors): recorded tensors count their GGUF dims, the
    others their elements; None if the record is unreadable."""
    where = src.path or "<arrays>"
    try:
        recorded, _ = _recorded(_load_record(bytes(src.tensor(RECORD).buffer()), where), where)
    except InvalidInputError:
        return None
    total = 0
    for t in src.tensors:
        if t.name != RECORD:
            hit = _still_recorded(recorded, t.name, t.dtype, t.shape, where)
            total += numel(hit[1] if hit else t.shape)
    return total


def _plan(data: list, rec: dict[str, Any] | None, metadata: dict[str, str] | None, where: str):
    """The header bytes, alignment and per-tensor byte counts for ``data`` (spec order)."""
    align = rec["alignment"] if rec else DEFAULT_ALIGNMENT
    recorded, order = _recorded(rec, where)
    infos, sizes, offset = [], [], 0
    for name, dt, shape in data:
        ggml_dims = _still_recorded(recorded, name, dt.name, shape, where)
        if ggml_dims is None:  # not recorded, or changed since: write it as a plain type
            if dt.name not in PLAIN_BY_DTYPE:
                raise InvalidInputError(f"{where}: tensor {name!r} is {dt.name}, which GGUF has no plain type for "
                                        f"(it has {', '.join(PLAIN_BY_DTYPE)})")
            ggml_dims = (PLAIN_BY_DTYPE[dt.name], list(reversed(shape)))
        nbytes = numel(shape) * dt.itemsize
        raw_name = name.encode("utf-8", "surrogateescape")
        ggml, dims = ggml_dims
        infos.append((order.get(name, len(order) + len(infos)),
                      struct.pack("<Q", len(raw_name)) + raw_name + struct.pack(f"<I{len(dims)}QIQ", len(dims), *dims, ggml, offset)))
        sizes.append(nbytes)
        offset += -(-nbytes // align) * align
    if rec:
        kv = rec["kv"]
    else:
        kv = [[k, STRING, v] for k, v in (metadata or {}).items() if isinstance(k, str) and isinstance(v, str)]
    parts = [MAGIC, struct.pack("<IQQ", 3, len(infos), len(kv))]
    for item in kv:
        if not (isinstance(item, list) and len(item) == 3 and isinstance(item[0], str) and isinstance(item[1], int)):
            raise InvalidInputError(f"{where}: bad GGUF key/value entry {str(item)[:80]}")
        parts += [_pack(STRING, item[0], where), struct.pack("<I", item[1]), _pack(item[1], item[2], where)]
    parts += [raw for _, raw in sorted(infos, key=lambda x: x[0])]
    head = b"".join(parts)
    return head + b"\0" * (-len(head) % align), align, sizes


@format_writer
def write_gguf(where: str, checked: Checked, read_tensor: ReadTensor, metadata: dict[str, str] | None) -> None:
    """Write a GGUF v3 file: the header (the ``__gguf__`` record's keys, types and order when
    there is one, else ``metadata`` as strings), then each tensor's bytes, aligned."""
    names = [n for n, _, _ in checked]
    at = names.index(RECORD) if RECORD in names else None
    data = [s for s in checked if s[0] != RECORD]
    rec, spill = None, None
    try:
        if at is not None:
            _, dt, shape = checked[at]
            if dt.name != "U8" or len(shape) != 1:
                raise InvalidInputError(f"{where}: the {RECORD!r} tensor must be 1-D U8, got {dt.name} {shape}")
            if at > 0:  # tensors before the record: keep them until the header can be written
                spill = tempfile.TemporaryFile(dir=os.path.dirname(os.path.abspath(where)))  # noqa: SIM115 - closed in finally
                for name, dt2, shape2 in checked[:at]:
                    copy_tensor(spill, read_tensor, name, numel(shape2) * dt2.itemsize)
                spill.seek(0)
            rec = _load_record(read_whole(read_tensor, RECORD, shape[0]), where)
        head, align, sizes = _plan(data, rec, metadata, where)
        with atomic_output(where) as f:
            f.write(head)
            for i, ((name, _, _), n) in enumerate(zip(data, sizes)):
                if spill is not None and i < at:
                    _copy(spill, f, n, where)
                else:
                    copy_tensor(f, read_tensor, name, n)
                f.write(b"\0" * (-n % align))
    finally:
        if spill is not None:
            spill.close()


def _copy(src, dst, n: int, where: str) -> None:
    left = n
    while left:
        buf = src.read(min(left, 1 << 22))
        if not buf:
            raise InternalError(f"{where}: spill file ended early")
        dst.write(buf)
        left -= len(buf)

