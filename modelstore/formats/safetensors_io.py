"""safetensors reader (own header parser + mmap) and streaming writer.

File layout: u64 little-endian header length N, N bytes of UTF-8 JSON
``{"__metadata__": {str: str}, name: {"dtype", "shape", "data_offsets": [begin, end]}, ...}``,
then the data section; offsets are relative to the start of the data section.

Reader decisions:
- tensors are listed in data-offset order (the physical order in the file; ties keep
  header order), so reading them one after another is sequential I/O;
- gaps between tensors and trailing bytes after the last one are tolerated (the official
  implementation is stricter), overlaps are not (empty tensors overlap nothing);
- unknown keys inside a tensor entry are ignored; ``"__metadata__": null`` means {}.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
from collections.abc import Sequence
from typing import Any

from modelstore import dtypes
from modelstore.errors import InvalidInputError

from .base import (
    Checked,
    MappedFile,
    ModelSource,
    ReadTensor,
    TensorSource,
    atomic_output,
    copy_tensor,
    format_writer,
    numel,
    open_file,
)

MAX_HEADER = 100_000_000  # bytes; the official implementation's limit too
METADATA_KEY = "__metadata__"


class _DuplicateKey(Exception):
    pass


MAX_DIMS = 64


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _DuplicateKey(k)
        out[k] = v
    return out


def loads_strict_json(raw: bytes | str, where: str) -> Any:
    """json.loads that refuses duplicate object keys and reports errors on one line."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, (bytes, bytearray, memoryview)) else raw
    except UnicodeDecodeError as e:
        raise InvalidInputError(f"{where}: header is not valid UTF-8 ({e.reason} at byte {e.start})") from None
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates)
    except _DuplicateKey as e:
        raise InvalidInputError(f"{where}: duplicate key {e.args[0]!r} in JSON header; names must be unique") from None
    except json.JSONDecodeError as e:
        raise InvalidInputError(f"{where}: header is not valid JSON ({e.msg} at char {e.pos})") from None
    except RecursionError:
        raise InvalidInputError(f"{where}: header JSON is nested too deeply") from None


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def parse_header(header: Any, data_size: int, where: str) -> tuple[list[tuple[str, str, tuple[int, ...], int, int]], dict[str, str]]:
    """Validate a decoded header; return ([(name, dtype, shape, begin, end)] in data order, metadata)."""
    if not isinstance(header, dict):
        raise InvalidInputError(
            f"{where}: header is a JSON {type(header).__name__.replace('list', 'array')}, "
            "expected a JSON object; not a safetensors file"
        )
    metadata: dict[str, str] = {}
    entries = []
    for idx, (name, info) in enumerate(header.items()):
        if name == METADATA_KEY:
            if info is None:
                continue
            if not isinstance(info, dict) or not all(isinstance(v, str) for v in info.values()):
                raise InvalidInputError(
                    f"{where}: __metadata__ must map strings to strings, got {json.dumps(info)[:200]}"
                )
            metadata = dict(info)
            continue
        if not name:
            raise InvalidInputError(f"{where}: empty tensor name in header")
        if not isinstance(info, dict):
            raise InvalidInputError(f"{where}: entry for tensor {name!r} is not a JSON object")
        for key in ("dtype", "shape", "data_offsets"):
            if key not in info:
                raise InvalidInputError(f"{where}: tensor {name!r} has no {key!r}")
        dt_name = info["dtype"]
        if not isinstance(dt_name, str) or dt_name not in dtypes.BY_NAME:
            raise InvalidInputError(
                f"{where}: unsupported dtype {dt_name!r} in tensor {name!r} "
                f"(supported: {', '.join(dtypes.BY_NAME)})"
            )
        dt = dtypes.BY_NAME[dt_name]
        shape = info["shape"]
        if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
            raise InvalidInputError(
                f"{where}: tensor {name!r} has shape {json.dumps(shape)[:200]}; expected a list of non-negative integers"
            )
        if len(shape) > MAX_DIMS:  # numpy's (and torch's) limit: such a tensor could never be loaded
            raise InvalidInputError(f"{where}: tensor {name!r} has {len(shape)} dimensions; at most {MAX_DIMS} are supported")
        offs = info["data_offsets"]
        if not (isinstance(offs, list) and len(offs) == 2 and all(_is_int(o) for o in offs)):
            raise InvalidInputError(
                f"{where}: tensor {name!r} has data_offsets {json.dumps(offs)[:200]}; expected [begin, end]"
            )
        begin, end = offs
        if begin < 0 or end < begin:
            raise InvalidInputError(f"{where}: tensor {name!r} has invalid data_offsets [{begin}, {end}]")
        expected = numel(shape) * dt.itemsize
        if end - begin != expected:
            raise InvalidInputError(
                f"{where}: tensor {name!r} has {end - begin} bytes in data_offsets but "
                f"shape {tuple(shape)} of {dt_name} needs {expected}"
            )
        if end > data_size:
            raise InvalidInputError(
                f"{where}: tensor {name!r} data_offsets [{begin}, {end}] out of range: the data "
                f"section has {data_size} bytes (truncated file?)"
            )
        entries.append((begin, end, idx, name, dt_name, tuple(shape)))
    entries.sort()
    prev_end, prev_name = 0, None
    for begin, end, _, name, _, _ in entries:
        if begin == end:
            continue
        if begin < prev_end:
            raise InvalidInputError(
                f"{where}: tensors {prev_name!r} and {name!r} have overlapping data_offsets"
            )
        prev_end, prev_name = end, name
    return [(name, dt_name, shape, begin, end) for begin, end, _, name, dt_name, shape in entries], metadata


def read_safetensors(path: str | os.PathLike[str], format: str = "safetensors") -> ModelSource:
    path = os.fspath(path)
    with open_file(path, "a .safetensors file") as f:
        size = os.fstat(f.fileno()).st_size
        if size < 8:
            raise InvalidInputError(
                f"{path}: truncated: file has {size} bytes, a safetensors file starts with an 8-byte header length"
            )
        (hlen,) = struct.unpack("<Q", f.read(8))
        if hlen > MAX_HEADER:
            raise InvalidInputError(
                f"{path}: header claims {hlen} bytes, over the {MAX_HEADER // 1_000_000} MB limit; "
                "not a safetensors file or corrupt"
            )
        if hlen > size - 8:
            raise InvalidInputError(
                f"{path}: header claims {hlen} bytes but file has {size}; truncated or not a safetensors file"
            )
        raw = f.read(hlen)
        if len(raw) != hlen:
            raise InvalidInputError(f"{path}: file shrank while reading the header")
        header = loads_strict_json(raw, path)
        entries, metadata = parse_header(header, size - 8 - hlen, path)
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)  # size >= 8, never 0
    mapping = MappedFile(mm, path)
    base = 8 + hlen
    tensors = [
        TensorSource(name, dt, shape, end - begin, mapping.reader(base + begin, base + end),
                     mapping.releaser(base + begin))
        for name, dt, shape, begin, end in entries
    ]
    return ModelSource(format, tensors, metadata, path=path, closers=[mapping.close])


def _check_metadata(metadata: dict[str, str] | None, where: str) -> dict[str, str] | None:
    if metadata is None:
        return None
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise InvalidInputError(f"{where}: metadata must be a dict of str to str")
    return metadata


def build_header(specs: Sequence[tuple[str, dtypes.DType, tuple[int, ...]]], metadata: dict[str, str] | None, where: str) -> bytes:
    header: dict[str, Any] = {}
    if metadata:
        header[METADATA_KEY] = metadata
    offset = 0
    for name, dt, shape in specs:
        if name == METADATA_KEY:
            raise InvalidInputError(f"{where}: a tensor cannot be named {METADATA_KEY!r} in safetensors")
        n = numel(shape) * dt.itemsize
        header[name] = {"dtype": dt.name, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    try:
        raw = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInputError(f"{where}: a tensor name or metadata string is not valid unicode (lone surrogate)") from None
    raw += b" " * (-len(raw) % 8)  # pad like the official writer: data starts 8-aligned
    return struct.pack("<Q", len(raw)) + raw


@format_writer
def write_safetensors(where: str, checked: Checked, read_tensor: ReadTensor, metadata: dict[str, str] | None) -> None:
    """Write a .safetensors file: the JSON header (with ``metadata``), then each tensor's bytes."""
    head = build_header(checked, _check_metadata(metadata, where), where)
    with atomic_output(where) as f:
        f.write(head)
        for name, dt, shape in checked:
            copy_tensor(f, read_tensor, name, numel(shape) * dt.itemsize)
