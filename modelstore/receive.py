"""Receiving side of push and pull: verify chunk records, make them durable, import versions.

Both the server (a push) and the client (a pull) run these. Order of writes is the commit's
(docs/FORMAT.md §8): records appended to a pack and fsynced, then their index entries in one
LMDB transaction — only then is a batch acknowledged, so a re-run never sends it again;
then, per version, its graph blobs (verified, fsynced), the manifest (LMDB) and its
catalog rows in one SQLite transaction.
Every record is decoded and hashed before anything is written: one forged chunk refuses the
whole batch. A delta record is accepted only when this store already holds its base.
"""

from __future__ import annotations

import threading
from concurrent.futures import wait

import numpy as np

from modelstore import codecs, dtypes, hashing
from modelstore.checkout import worker_pool
from modelstore.chunkindex import Entry
from modelstore.errors import (
    ForgedChunkError,
    InvalidInputError,
    MissingChunksError,
    MissingGraphError,
    ModelstoreError,
)
from modelstore.locking import store_lock
from modelstore.manifest import Manifest
from modelstore.packs import NO_BASE, REC_HEADER, REC_MAGIC, PackWriter
from modelstore.remote.wire import MAX_RECORD

MAX_CHAIN = 32  # a received delta deeper than this on our side is stored plain


class Receiver:
    """Ingest one batch as its bytes arrive: records are parsed as soon as they are whole,
    verified in a thread pool (decoding and hashing release the GIL) and appended to a pack
    as each verifies, so receiving, verifying and writing overlap. `finish()` fsyncs and
    indexes (the batch is then durable); any failure aborts: nothing is indexed.

    Holds the shared store lock from start to finish, so `gc` cannot remove a delta base
    between the check and the index transaction.
    """

    def __init__(self, store):
        self.store = store
        self._lock_cm = store_lock(store.layout.lock, exclusive=False)
        self._lock_cm.__enter__()
        # the process's codec threads (checkout.worker_pool), shared by every batch in flight:
        # parallel batches add no threads beyond the cores and keep their scratch buffers
        self.pool = worker_pool()
        self.writer: PackWriter | None = None
        self.append_lock = threading.Lock()
        self.entries: dict[bytes, Entry] = {}
        self.futures = []
        self.seen: set[bytes] = set()
        self.head = bytearray()  # bytes of a record header split across pieces
        self.cur: tuple | None = None  # (header fields, payload pieces) of the record being received
        self.need = 0  # payload bytes the current record still lacks
        self.records = self.duplicates = self.nbytes = 0
        self.closed = False

    def feed(self, data: bytes) -> None:
        """Take the next bytes of the batch (any split; not changed afterwards); dispatch
        each record once whole.

        The caller's thread (the server's event loop) only slices: a record's pieces are
        joined, verified and written in the pool, so receiving runs at the socket's speed."""
        mv = memoryview(data).cast("B")
        pos, n = 0, len(mv)
        while pos < n:
            if self.cur is None:
                if self.head or n - pos < REC_HEADER.size:
                    take = min(REC_HEADER.size - len(self.head), n - pos)
                    self.head += mv[pos:pos + take]
                    pos += take
                    if len(self.head) < REC_HEADER.size:
                        return
                    fields = REC_HEADER.unpack(self.head)
                    self.head.clear()
                else:
                    fields = REC_HEADER.unpack_from(mv, pos)
                    pos += REC_HEADER.size
                magic, cid, _enc, raw_len, slen, _base = fields
                if magic != REC_MAGIC:
                    raise InvalidInputError("bad record magic in the chunk batch")
                if slen > MAX_RECORD or raw_len > MAX_RECORD:
                    raise InvalidInputError(f"record {cid.hex()} claims more than {MAX_RECORD} bytes")
                self.cur, self.need = (fields, []), slen
            take = min(self.need, n - pos)
            if take:
                self.cur[1].append(mv[pos:pos + take])
                self.need -= take
                pos += take
            if not self.need:
                fields, pieces = self.cur
                self.cur = None
                self._dispatch(fields, pieces)

    def _dispatch(self, fields, pieces) -> None:
        _magic, cid, enc, raw_len, slen, base = fields
        self.records += 1
        self.nbytes += slen
        if cid in self.seen or self.store.index.get(cid) is not None:
            self.duplicates += 1
            return
        self.seen.add(cid)
        self.futures.append(self.pool.submit(self._verify_and_append, cid, enc, raw_len, base, pieces))

    def _verify_and_append(self, cid, enc, raw_len, base, pieces) -> None:
        if self.closed:
            return
        # Decoding needs the payload in one buffer: join into this thread's reusable one (a
        # fresh multi-MiB buffer per record costs page faults), and write the received pieces.
        joined = pieces[0] if len(pieces) == 1 else _join_into(pieces)
        out_enc, base, depth, payload = _verify(self.store, cid, enc, raw_len, base, joined)
        stored = pieces if payload is joined else payload  # re-encoded: a buffer of its own
        with self.append_lock:
            if self.closed:
                return
            if self.writer is None:
                self.writer = PackWriter(self.store.layout.packs)
            loc = self.writer.append(cid, out_enc, raw_len, stored, base)
            self.entries[cid] = Entry(loc.pack, out_enc, depth, loc.offset, len(payload), raw_len, base)

    def finish(self) -> dict:
        try:
            if self.head or self.cur is not None:
                raise InvalidInputError("the chunk batch ends inside a record (truncated)")
            for f in self.futures:
                f.result()
            if self.writer is not None:
                self.writer.finish()
                self.writer = None
            self.store.index.add_entries(self.entries)
        except BaseException:
            self.abort()
            raise
        self._close()
        return {"accepted": len(self.entries), "duplicates": self.duplicates, "bytes": self.nbytes}

    def abort(self) -> None:
        with self.append_lock:
            self.closed = True
        for f in self.futures:
            f.cancel()
        wait(self.futures)  # none of ours still runs (the pool is shared: not shut down)
        with self.append_lock:
            if self.writer is not None:
                self.writer.abort()
                self.writer = None
        self._close()

    def _close(self) -> None:
        if self._lock_cm is not None:
            wait(self.futures)
            self.futures = []
            self._lock_cm.__exit__(None, None, None)
            self._lock_cm = None


def ingest_records(store, body) -> dict:
    """Verify and store one whole batch of wire records: {"accepted", "duplicates", "bytes"}."""
    r = Receiver(store)
    try:
        r.feed(body if isinstance(body, bytes) else bytes(body))
    except BaseException:
        r.abort()
        raise
    return r.finish()


_scratch = threading.local()


_KEEP_SCRATCH = 64 << 20  # a larger buffer is not kept (the verify threads live on)


def _scratch_for(n: int, name: str = "buf"):
    """This thread's reusable buffer `name` of at least n bytes."""
    buf = getattr(_scratch, name, None)
    if buf is None or len(buf) < n:
        buf = bytearray(max(n, 1 << 22))
        if n <= _KEEP_SCRATCH:
            setattr(_scratch, name, buf)
    return buf


def _join_into(pieces) -> memoryview:
    """The pieces back to back in this thread's join buffer (valid until its next record).

    Copied with numpy, which releases the GIL (a memoryview or bytes copy holds it, and
    would stall the event loop receiving the rest)."""
    n = sum(len(p) for p in pieces)
    buf = _scratch_for(n, "join")
    dst = np.frombuffer(buf, np.uint8, n)
    pos = 0
    for p in pieces:
        np.copyto(dst[pos:pos + len(p)], np.frombuffer(p, np.uint8))
        pos += len(p)
    return memoryview(buf)[:n]


def _verify(store, cid: bytes, enc: int, raw_len: int, base: bytes, payload) -> tuple:
    """Check one record decodes to bytes hashing to `cid`: (encoding, base, depth, payload) to store."""
    from modelstore.checkout import read_chunk

    depth = 0
    try:
        if enc in codecs.DELTA_ENCODINGS:
            be = store.index.get(base) if base != NO_BASE else None
            if be is None:
                raise ForgedChunkError(f"chunk {cid.hex()} is a delta against {base.hex()}, which this store lacks")
            data = codecs.decode(enc, payload, raw_len, base=read_chunk(store, base))
            depth = be.depth + 1 if be.encoding in codecs.DELTA_ENCODINGS else 1
        elif base != NO_BASE:
            raise ForgedChunkError(f"chunk {cid.hex()}: a plain record names a delta base")
        elif enc not in codecs.NAMES:
            raise ForgedChunkError(f"chunk {cid.hex()}: unknown record encoding {enc}")
        elif enc == codecs.RAW:
            data = payload
        else:
            data = memoryview(_scratch_for(raw_len))[:raw_len]
            codecs.decode(enc, payload, raw_len, data)
    except ForgedChunkError:
        raise
    except ModelstoreError as exc:
        raise ForgedChunkError(f"chunk {cid.hex()} does not decode: {exc}") from None
    if len(data) != raw_len or hashing.digest(data) != cid:
        raise ForgedChunkError(f"chunk {cid.hex()} does not match its id: refused, nothing stored")
    if depth > MAX_CHAIN:  # our chain under that base is deeper than the sender's: start anew
        enc, payload = codecs.encode(bytes(data), dtypes.get("U8"))
        return enc, NO_BASE, 0, payload
    return enc, base, depth, payload


def import_version(store, manifest_json: bytes | None, doc: dict, *, tag_updates=(), actor: str = "unknown",
                   force: bool = False, graphs=None) -> dict:
    """Make a received version visible (or merge its annotations into the one already here).

    Under the shared store lock (so `gc` cannot drop a chunk between the check and the
    commit): the received graph blobs are verified and written durably; with a manifest,
    it must hash to the claimed content id and every chunk it names must be indexed here
    (else MissingChunksError: the sender negotiates and sends them again), and a new
    version's graph must be here; then the manifest (LMDB), then the catalog rows in one
    transaction. Returns {"ref", "created", "tags", "graph_missing"} (tags: what moved;
    graph_missing: the version names a graph blob this store still lacks).
    """
    from modelstore import catalog_sync
    from modelstore.remote import graph_blobs

    content_id = catalog_sync.check_doc(doc)
    gid = graph_blobs.graph_id_of_doc(doc)
    m = None
    if manifest_json is not None:
        m = Manifest.from_json(manifest_json)
        if m.content_id.hex() != content_id:
            raise InvalidInputError(f"manifest hashes to {m.content_id.hex()}, not to the claimed {content_id}")
    with store_lock(store.layout.lock, exclusive=False):
        graph_blobs.receive(store, graphs)
        tensors = None
        if m is not None:
            ids = m.chunk_ids()
            missing = ids - store.index.get_many(ids).keys()
            if missing:
                raise MissingChunksError(f"{len(missing)} chunks of {doc['model']}@{content_id[:12]} are not here;"
                                         " re-run the push or pull to send them")
            if not graph_blobs.has_graph(store, gid) and \
                    catalog_sync.find_version(store.catalog, doc["model"], content_id,
                                              catalog_sync.doc_uid(doc)) is None:
                raise MissingGraphError(f"graph {gid} of {doc['model']}@{content_id[:12]} was not sent; re-run the "
                                        "push or pull to send it")
            store.index.commit_version({}, {}, m.content_id, m.to_json())
            tensors = [(e.name, e.dtype, str(list(e.shape)), e.nbytes) for e in m.tensors]
        out = catalog_sync.import_version(store.catalog, doc, tensors=tensors, tag_updates=tag_updates,
                                          actor=actor, force=force)
        out["graph_missing"] = not graph_blobs.has_graph(store, gid)
    return out
