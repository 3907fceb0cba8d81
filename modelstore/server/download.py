"""Download: a stored version streamed as a .safetensors file, chunk by chunk.

The header comes from the manifest; then each tensor's bytes in manifest order, decoded by
checkout.iter_chunks a few chunks ahead, so memory stays bounded by a few chunks whatever
the model's size. The bytes equal `modelstore checkout REF -o x.safetensors`.
"""

from __future__ import annotations

from collections.abc import Iterator

from modelstore import dtypes
from modelstore.chunkindex import check_entry
from modelstore.errors import IntegrityError


def _layout(store, manifest, metadata: dict[str, str] | None) -> tuple[bytes, int]:
    """(the file's header, the tensors' byte count) from the manifest and chunk index only.

    Chunk sizes are checked against the tensors' sizes before anything is sent, so the
    Content-Length announced is the length streamed (a damaged store fails here, as a 500).
    """
    from modelstore.formats.safetensors_io import build_header

    specs = [(t.name, dtypes.get(t.dtype), t.shape) for t in manifest.tensors]
    head = build_header(specs, metadata, "download")
    total = sum(check_entry(cid, store.index.get(cid)).raw_len for t in manifest.tensors for cid in t.chunks)
    if total != manifest.nbytes:
        raise IntegrityError("chunk sizes do not add up to the tensors' sizes (run `modelstore fsck`)")
    return head, total


def safetensors_length(store, manifest, metadata: dict[str, str] | None = None) -> int:
    """The downloaded file's length without reading a chunk's bytes (for HEAD)."""
    head, total = _layout(store, manifest, metadata)
    return len(head) + total


def safetensors_stream(store, manifest, metadata: dict[str, str] | None = None) -> tuple[int, Iterator[bytes]]:
    """(total length, generator of the file's bytes) for a version's manifest; `metadata`:
    the source file's own __metadata__ (Catalog.file_meta), written back as checkout does."""
    from modelstore.checkout import iter_chunks

    head, total = _layout(store, manifest, metadata)

    def body() -> Iterator[bytes]:
        yield head
        chunks = iter_chunks(store, manifest.tensors)
        try:
            for _t, data in chunks:
                yield bytes(data)  # a copy: the decoder's buffer may be reused
        finally:
            chunks.close()

    return len(head) + total, body()
