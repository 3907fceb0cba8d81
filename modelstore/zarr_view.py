"""A read-only zarr v3 Store over one version, synthesized from its manifest.

Nothing is written per array: `zarr.json` documents are generated on demand and chunk keys
resolve through the manifest into the chunk store (docs/FORMAT.md §8). Each tensor is an
array at the root group; names that are not valid zarr node names (containing '/', or
starting with '__') are percent-encoded, and the root group's attributes map array names
back to tensor names. zarr-python has no bfloat16/float8, so BF16 arrays appear as uint16
and F8_* as uint8 holding the raw bits (attribute `modelstore_dtype` says which).
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator, Iterable
from urllib.parse import quote

from zarr.abc.store import ByteRequest, OffsetByteRequest, RangeByteRequest, Store, SuffixByteRequest
from zarr.core.buffer import Buffer, BufferPrototype, default_buffer_prototype

from modelstore import dtypes
from modelstore.manifest import Manifest, TensorEntry

_ZARR_DTYPE = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "uint16", "F8_E4M3": "uint8",
    "F8_E5M2": "uint8", "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8",
    "BOOL": "bool", "U16": "uint16", "U32": "uint32", "U64": "uint64",
}


def array_name(tensor_name: str) -> str:
    """The zarr node name of a tensor (percent-encoded when not a valid node name)."""
    if tensor_name in ("", ".", "..") or "/" in tensor_name or tensor_name.startswith("__") or "%" in tensor_name:
        return quote(tensor_name, safe="") or "%00"
    return tensor_name


def _array_meta(t: TensorEntry) -> dict:
    chunk_shape = [t.chunk_rows, *t.shape[1:]] if t.shape else []
    chunk_shape = [max(1, d) for d in chunk_shape]
    codecs = [{"name": "bytes", "configuration": {"endian": "little"}}] if dtypes.get(t.dtype).itemsize > 1 \
        else [{"name": "bytes"}]
    return {
        "zarr_format": 3, "node_type": "array", "shape": list(t.shape), "data_type": _ZARR_DTYPE[t.dtype],
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": chunk_shape}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": False if t.dtype == "BOOL" else 0, "codecs": codecs,
        "attributes": {"modelstore_dtype": t.dtype, "modelstore_name": t.name},
    }


class VersionZarrStore(Store):
    supports_writes = False
    supports_deletes = False
    supports_partial_writes = False
    supports_listing = True

    def __init__(self, store, manifest: Manifest):
        super().__init__(read_only=True)
        self._store = store
        self._manifest = manifest
        self._docs: dict[str, bytes] = {}
        self._chunks: dict[str, tuple[TensorEntry, int]] = {}
        names = {}
        for t in manifest.tensors:
            a = array_name(t.name)
            names[a] = t.name
            self._docs[f"{a}/zarr.json"] = json.dumps(_array_meta(t)).encode()
            for i in range(len(t.chunks)):
                key = f"{a}/c" if not t.shape else f"{a}/c/{i}" + "/0" * (len(t.shape) - 1)
                self._chunks[key] = (t, i)
        root = {"zarr_format": 3, "node_type": "group",
                "attributes": {"modelstore": {"content_id": manifest.content_id.hex(), "arrays": names}}}
        self._docs["zarr.json"] = json.dumps(root).encode()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, VersionZarrStore) and other._manifest.content_id == self._manifest.content_id

    def __repr__(self) -> str:
        return f"VersionZarrStore({self._manifest.content_id.hex()[:12]})"

    def _bytes(self, key: str) -> bytes | None:
        doc = self._docs.get(key)
        if doc is not None:
            return doc
        hit = self._chunks.get(key)
        if hit is None:
            return None
        from modelstore.checkout import read_chunk

        t, i = hit
        data = bytes(read_chunk(self._store, t.chunks[i]))
        if t.shape:
            full = t.chunk_rows * dtypes.get(t.dtype).itemsize * math.prod(t.shape[1:])
            if len(data) < full:  # the last chunk is stored unpadded; zarr expects whole chunks
                data += bytes(full - len(data))
        return data

    async def get(self, key: str, prototype: BufferPrototype | None = None,
                  byte_range: ByteRequest | None = None) -> Buffer | None:
        prototype = prototype or default_buffer_prototype()
        data = self._bytes(key)
        if data is None:
            return None
        if byte_range is not None:
            if isinstance(byte_range, RangeByteRequest):
                data = data[byte_range.start : byte_range.end]
            elif isinstance(byte_range, OffsetByteRequest):
                data = data[byte_range.offset :]
            elif isinstance(byte_range, SuffixByteRequest):
                data = data[len(data) - byte_range.suffix :]
        return prototype.buffer.from_bytes(data)

    async def get_partial_values(self, prototype: BufferPrototype,
                                 key_ranges: Iterable[tuple[str, ByteRequest | None]]) -> list[Buffer | None]:
        return [await self.get(k, prototype, r) for k, r in key_ranges]

    async def exists(self, key: str) -> bool:
        return key in self._docs or key in self._chunks

    async def set(self, key: str, value: Buffer) -> None:
        self._check_writable()

    async def delete(self, key: str) -> None:
        self._check_writable()

    async def list(self) -> AsyncIterator[str]:
        for k in (*self._docs, *self._chunks):
            yield k

    async def list_prefix(self, prefix: str) -> AsyncIterator[str]:
        for k in (*self._docs, *self._chunks):
            if k.startswith(prefix):
                yield k

    async def list_dir(self, prefix: str) -> AsyncIterator[str]:
        prefix = prefix.rstrip("/")
        seen = set()
        for k in (*self._docs, *self._chunks):
            if prefix and not k.startswith(prefix + "/"):
                continue
            rest = k[len(prefix) + 1 :] if prefix else k
            head = rest.split("/", 1)[0]
            if head not in seen:
                seen.add(head)
                yield head
