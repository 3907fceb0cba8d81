"""Read path: catalog -> manifest -> index -> packs -> decode -> verify -> tensors or a file.

Chunks are fetched and decoded by a small thread pool a few chunks ahead of the consumer,
so decoding overlaps writing and memory stays bounded by the window.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from modelstore import codecs, dtypes, hashing
from modelstore.chunkindex import check_entry
from modelstore.errors import IntegrityError
from modelstore.manifest import Manifest, TensorEntry


def delta_chain(store, cid: bytes) -> list:
    """[(id, index entry)] from `cid` down to its plain (non-delta) record.

    IntegrityError when a link is missing or the chain is implausibly long (cyclic).
    """
    chain = []
    cur = cid
    while True:
        e = store.index.get(cur)
        if e is None:
            if chain:
                raise IntegrityError(f"chunk {chain[-1][0].hex()} is a delta against {cur.hex()}, which is missing")
            check_entry(cur, None)
        chain.append((cur, e))
        if e.encoding not in codecs.DELTA_ENCODINGS:
            return chain
        if len(chain) > 64:
            raise IntegrityError(f"chunk {cid.hex()}: delta chain too long or cyclic (run `modelstore fsck`)")
        cur = e.base


def read_chunk(store, cid: bytes, out=None, verify: bool = True):
    """Decoded bytes of one chunk (into `out` when given), checked against its id.

    A delta chain is decoded in one buffer: the plain record at its root and all XOR
    deltas on top, in one native pass when it can (codecs.decode_chain). Only the final
    bytes need checking: a wrong link anywhere yields bytes that do not hash to `cid`. A
    missing base is an IntegrityError naming it. Large records are read as memory maps
    of the pack (PackReader.view): decoded from the page cache, no copy.
    """
    chain = delta_chain(store, cid)
    root_id, root = chain[-1]
    enc, raw_len, _base, payload = store.packs.view(root_id, root.location, root.stored_len)
    if len(chain) == 1:
        if enc == codecs.RAW and out is None:
            return bytes(payload)  # the payload may be a view of a memory map
        data = codecs.decode(enc, payload, raw_len, out)
    else:
        data = out if out is not None else bytearray(raw_len)
        links = []
        for link_id, link in chain[:-1]:
            lenc, link_len, _base, lpayload = store.packs.view(link_id, link.location, link.stored_len)
            if link_len != raw_len:
                raise IntegrityError(f"chunk {link_id.hex()}: delta of {link_len} bytes on a base of {raw_len}")
            links.append((lenc, lpayload))
        codecs.decode_chain(enc, payload, links, raw_len, data)
    if verify and hashing.digest(data) != cid:
        raise IntegrityError(f"chunk {cid.hex()} does not match its id (run `modelstore fsck`)")
    return data


_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def worker_pool() -> ThreadPoolExecutor:
    """The process's chunk encoding and decoding threads, started once: their per-thread
    buffers (plane accumulators, scratch) then survive from one commit or checkout to the
    next instead of being allocated and page-faulted in by fresh threads every time. Work never waits on
    the pool from inside it, so sharing cannot deadlock."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(codecs.THREADS, thread_name_prefix="codec")
        return _pool


def _forget_pool() -> None:
    global _pool
    _pool = None  # a forked child has none of the parent's threads


os.register_at_fork(after_in_child=_forget_pool)

_local = threading.local()
_MAX_REUSED = 8 << 20  # larger outputs get fresh buffers: the pool threads keep little memory


def scratch(n: int):
    """A reusable per-thread buffer of n bytes (for callers that copy it out, or decode a
    delta base into it): a fresh multi-MiB buffer per chunk costs page faults."""
    buf = getattr(_local, "out", None)
    if buf is None or buf.size < n:
        buf = _local.out = np.empty(max(n, 1 << 22), dtype=np.uint8)
    return buf[:n]


def iter_chunks(store, tensors: Iterable[TensorEntry], depth: int | None = None) -> Iterator[tuple[TensorEntry, bytes]]:
    """(tensor, decoded chunk) in manifest order, read and decoded ahead by a thread pool.

    Decoding releases the GIL, so the workers use every core while the consumer writes;
    at most `depth` chunks are in flight.
    """
    depth = depth or 2 * codecs.THREADS + 2
    jobs = ((t, cid) for t in tensors for cid in t.chunks)
    pool = worker_pool()
    pending: deque = deque()
    try:
        for t, cid in jobs:
            pending.append((t, pool.submit(read_chunk, store, cid)))
            if len(pending) >= depth:
                t0, fut = pending.popleft()
                yield t0, fut.result()
        while pending:
            t0, fut = pending.popleft()
            yield t0, fut.result()
    finally:
        settle(fut for _, fut in pending)


def settle(futures) -> None:
    """Cancel what has not started and wait for what has: the shared pool outlives the
    caller, whose store (pack files) or output file must not close under a running task."""
    futures = list(futures)
    for fut in futures:
        fut.cancel()
    for fut in futures:
        if not fut.cancelled():
            fut.exception()


def load_tensor(store, t: TensorEntry, pool: ThreadPoolExecutor | None = None) -> np.ndarray:
    """One tensor as a numpy array; chunks decode straight into it, in parallel."""
    dt = dtypes.get(t.dtype)
    arr = np.empty(t.shape, dtype=dt.numpy)
    flat = arr.reshape(-1).view(np.uint8)
    entries = [check_entry(cid, store.index.get(cid)) for cid in t.chunks]
    total = sum(e.raw_len for e in entries)
    if total != t.nbytes:
        raise IntegrityError(f"tensor {t.name!r}: chunks hold {total} bytes, expected {t.nbytes}")
    spans, pos = [], 0
    for cid, e in zip(t.chunks, entries):
        spans.append((cid, flat[pos : pos + e.raw_len]))
        pos += e.raw_len
    if pool is None or len(spans) < 2:
        for cid, out in spans:
            read_chunk(store, cid, out=out)
    else:
        futures = [pool.submit(read_chunk, store, cid, out) for cid, out in spans]
        try:
            for fut in futures:
                fut.result()
        finally:
            settle(futures)
    return arr


def load(store, manifest: Manifest, names: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    by_name = manifest.by_name()
    wanted = list(by_name) if names is None else list(names)
    pool = worker_pool()
    return {n: load_tensor(store, by_name[n], pool) for n in wanted}


def write_file(store, manifest: Manifest, path, fmt: str, metadata: dict[str, str] | None = None,
               graph_proto: bytes | None = None) -> None:
    """Stream a version into a model file (any of formats.WRITE_FORMATS), atomically;
    `graph_proto`: the weight-less ONNX model an .onnx output needs."""
    if fmt == "safetensors":
        return _write_safetensors(store, manifest, path, metadata)
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
        write_model(path, fmt, specs, read_tensor, metadata=metadata, graph_proto=graph_proto)
    finally:
        stream.close()


def _write_safetensors(store, manifest: Manifest, path, metadata: dict[str, str] | None) -> None:
    """safetensors has a fixed layout, so workers decode chunks and pwrite them in place,
    in parallel, without ordering the writes; the file appears only when complete."""
    from modelstore.formats.base import atomic_output, preallocate
    from modelstore.formats.safetensors_io import build_header

    specs = [(t.name, dtypes.get(t.dtype), t.shape) for t in manifest.tensors]
    head = build_header(specs, metadata, str(path))
    jobs, offset = [], len(head)
    for t in manifest.tensors:
        for cid in t.chunks:
            e = check_entry(cid, store.index.get(cid))
            jobs.append((cid, offset, e.raw_len))
            offset += e.raw_len
        # a tensor's chunks must add up to its size, or the header would lie
    if offset - len(head) != manifest.nbytes:
        raise IntegrityError("chunk sizes do not add up to the tensors' sizes (run `modelstore fsck`)")
    # Largest first (writes land at fixed offsets, so any order will do): a small model's
    # few big chunks then start at once instead of queueing behind its biases.
    jobs.sort(key=lambda j: -j[2])

    with atomic_output(path, durable=False) as f:
        fd = f.fileno()
        f.write(head)
        f.flush()
        preallocate(fd, offset)

        write_lock = threading.Lock()

        def work(job):
            cid, off, raw_len = job
            # pwrite copies the bytes out, so a reused per-thread buffer will do
            out = scratch(raw_len) if raw_len <= _MAX_REUSED else None
            data = memoryview(read_chunk(store, cid, out=out)).cast("B")
            # One writer at a time: the file's inode lock serialises writes anyway, and a
            # thread waiting for it in the kernel spins, burning the core another decode needs.
            with write_lock:
                while data.nbytes:
                    n = os.pwrite(fd, data, off)
                    data, off = data[n:], off + n

        pool = worker_pool()
        window: deque = deque()
        try:
            for job in jobs:
                window.append(pool.submit(work, job))
                if len(window) >= 2 * codecs.THREADS + 2:
                    window.popleft().result()
            while window:
                window.popleft().result()
        finally:  # on an error, no write may outlive the file
            settle(window)
