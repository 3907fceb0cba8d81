"""Read path: catalog -> manifest -> index -> packs -> decode -> verify -> tensors or a file.

Chunks are fetched and decoded by a prefetch thread a few chunks ahead of the consumer,
so decoding overlaps writing and memory stays bounded by the queue depth.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator

import numpy as np

from modelstore import codecs, dtypes, hashing
from modelstore.chunkindex import check_entry
from modelstore.errors import IntegrityError
from modelstore.manifest import Manifest, TensorEntry


def read_chunk(store, cid: bytes, out=None, verify: bool = True):
    """Decoded bytes of one chunk (into `out` when given), checked against its id."""
    e = check_entry(cid, store.index.get(cid))
    enc, raw_len, _base, payload = store.packs.read(cid, e.location, e.stored_len)
    data = codecs.decode(enc, payload, raw_len, out)
    if verify and hashing.digest(data) != cid:
        raise IntegrityError(f"chunk {cid.hex()} does not match its id (run `modelstore fsck`)")
    return data


def iter_chunks(store, tensors: Iterable[TensorEntry], depth: int = 4) -> Iterator[tuple[TensorEntry, bytes]]:
    """(tensor, decoded chunk) in manifest order, decoded ahead by a background thread."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce():
        try:
            for t in tensors:
                for cid in t.chunks:
                    if stop.is_set():
                        return
                    q.put((t, read_chunk(store, cid)))
            q.put(None)
        except BaseException as exc:
            q.put(exc)

    th = threading.Thread(target=produce, name="chunk-prefetch", daemon=True)
    th.start()
    try:
        while True:
            item = q.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while th.is_alive():
            try:
                q.get_nowait()
            except queue.Empty:
                th.join(0.01)


def load_tensor(store, t: TensorEntry) -> np.ndarray:
    dt = dtypes.get(t.dtype)
    arr = np.empty(t.shape, dtype=dt.numpy)
    flat = arr.reshape(-1).view(np.uint8)
    pos = 0
    for cid in t.chunks:
        e = check_entry(cid, store.index.get(cid))
        read_chunk(store, cid, out=flat[pos : pos + e.raw_len])
        pos += e.raw_len
    if pos != t.nbytes:
        raise IntegrityError(f"tensor {t.name!r}: chunks hold {pos} bytes, expected {t.nbytes}")
    return arr


def load(store, manifest: Manifest, names: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    by_name = manifest.by_name()
    wanted = list(by_name) if names is None else list(names)
    return {n: load_tensor(store, by_name[n]) for n in wanted}


def write_file(store, manifest: Manifest, path, fmt: str, metadata: dict[str, str] | None = None) -> None:
    """Stream a version into a model file (safetensors, npz or pt), atomically."""
    from modelstore.formats import write_model

    by_name = manifest.by_name()
    specs = [(t.name, t.dtype, t.shape) for t in manifest.tensors]
    stream = iter_chunks(store, manifest.tensors)

    def read_tensor(name: str):
        # write_model asks for tensors in spec order; chunks arrive in the same order.
        for _ in by_name[name].chunks:
            t, data = next(stream)
            if t.name != name:
                raise IntegrityError("checkout stream out of order")
            yield data

    try:
        write_model(path, fmt, specs, read_tensor, metadata=metadata)
    finally:
        stream.close()
