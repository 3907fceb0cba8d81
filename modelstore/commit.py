"""Ingest: model file -> tensors -> chunks -> ids -> (dedup) -> records -> packs -> index -> catalog.

Write order (docs/FORMAT.md §7): new records are appended to a pack and fsynced; then the
index entries, chunk stats and manifest go into one LMDB transaction; then the version row
into one SQLite transaction. A crash anywhere before the last step leaves only
unreferenced records, which `gc` removes. Memory stays bounded by a few chunks: tensors are
read through memory maps and only the pack writer's short queue holds encoded records.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from modelstore import chunking, codecs, dtypes, hashing, kernels
from modelstore import annotate
from modelstore.catalog import META_KEY, VersionInfo, check_meta_key, check_model_name
from modelstore.chunkindex import Entry
from modelstore.errors import InvalidInputError, ModelstoreError
from modelstore.formats import open_model
from modelstore.locking import store_lock
from modelstore.manifest import Manifest, TensorEntry, TensorStats
from modelstore.packs import NO_BASE, PackWriter

MAX_META_VALUE = 10_000


def check_meta(meta: dict | None) -> dict[str, str]:
    """User metadata given at commit: valid, non-built-in keys; values as strings (typed later)."""
    out = {}
    for k, v in (meta or {}).items():
        check_meta_key(k, builtin_ok=False)
        v = str(v)
        if len(v) > MAX_META_VALUE:
            raise InvalidInputError(f"metadata value for {k!r} is longer than {MAX_META_VALUE} characters")
        out[k] = v
    return out


def commit(
    store,
    source,
    *,
    model: str,
    message: str = "",
    meta: dict | None = None,
    parent: str | list[str] | None = None,
    author: str | None = None,
    progress: Callable[[int], None] | None = None,
    metrics: list | None = None,
) -> VersionInfo:
    """Store a checkpoint (path or dict of arrays) as the next version of `model`.

    `metrics` are (dataset, name, value) triples recorded with the version.
    """
    from modelstore.catalog import check_metrics

    metrics = check_metrics(metrics)
    check_model_name(model)
    meta = check_meta(meta)
    parent_ids = _parents(store, model, parent)
    target = store.config.chunk_target_bytes
    with store_lock(store.layout.lock, exclusive=False), open_model(source) as src:
        ingest = _Ingest(store, _delta_bases(store, parent_ids))
        try:
            entries = ingest.run(src.tensors, target, progress)
        finally:
            ingest.close()
        new_entries, new_stats = ingest.new_entries, ingest.new_stats
        manifest = Manifest(tuple(entries))
        content_id = manifest.content_id
        inserted = store.index.commit_version(new_entries, new_stats, content_id, manifest.to_json())
        stored = sum(new_entries[c].stored_len for c in inserted)
        by_dtype = Counter()
        for e in manifest.tensors:
            by_dtype[e.dtype] += e.nbytes
        merged_meta = {**check_meta_lenient(src.metadata), **meta}
        return store.catalog.insert_version(
            model=model, content_id=content_id.hex(), message=message or "", author=author or annotate.default_author(),
            fmt=src.format, size=manifest.nbytes, stored=stored, params=manifest.params,
            n_tensors=len(manifest.tensors), dtype=by_dtype.most_common(1)[0][0] if by_dtype else "",
            parents=parent_ids, meta=merged_meta, metrics=metrics,
            tensors=[(e.name, e.dtype, str(list(e.shape)), e.nbytes) for e in manifest.tensors],
        )


class _Ingest:
    """The chunk pipeline of one commit.

    The main thread hashes each chunk and looks it up (LMDB read transactions stay on one
    thread); chunks not stored yet go to a small thread pool for stats and encoding (both
    release the GIL), then to the pack writer in submission order. At most `window`
    chunks are in flight, so memory is bounded by a few chunks per worker.
    """

    def __init__(self, store, bases: dict[str, TensorEntry] | None = None):
        self.store = store
        self.bases = bases or {}
        self.max_depth = store.config.delta_depth
        self.new_entries: dict[bytes, Entry] = {}
        self.new_stats: dict[bytes, tuple] = {}
        self.workers = codecs.THREADS
        self.pool = ThreadPoolExecutor(self.workers, thread_name_prefix="encode") if self.workers > 1 else None
        self.window = 2 * self.workers + 2
        self.writer: PackWriter | None = None
        self.pending: deque = deque()  # (cid, key, length, slot list, slot index, future, release)

    def run(self, tensors, target: int, progress) -> list[TensorEntry]:
        plans = []
        with self.store.index.reader() as rd:
            for t in tensors:
                dt = dtypes.get(t.dtype)
                rows = chunking.chunk_rows(t.shape, dt.itemsize, target)
                buf = t.buffer() if t.nbytes else memoryview(b"")
                ids, stats = [], []
                parent = self.bases.get(t.name)
                if parent is not None and (parent.dtype != dt.name or parent.chunk_rows != rows
                                           or tuple(parent.shape[1:]) != tuple(t.shape[1:])):
                    parent = None
                for i, (off, length) in enumerate(chunking.chunk_spans(t.shape, dt.itemsize, rows)):
                    view = buf[off : off + length]
                    cid = hashing.digest(view)
                    key = cid + bytes([dt.code])
                    ids.append(cid)
                    st = self.new_stats.get(key) or rd.get_stats(cid, dt.code)
                    stored = cid in self.new_entries or rd.get(cid) is not None
                    if stored:
                        if st is None:
                            st = tuple(kernels.chunk_stats(view, dt.code))
                            self.new_stats[key] = st
                        stats.append(st)
                        t.release(off, off + length)
                    else:
                        # Reserve the id now so a repeat within this commit is not encoded twice.
                        self.new_entries[cid] = None
                        stats.append(None)
                        base = self._base_for(rd, parent, i, length)
                        self._submit(cid, key, view, dt, length, stats, len(stats) - 1, st, base,
                                     lambda t=t, a=off, b=off + length: t.release(a, b))
                    if progress:
                        progress(length)
                del buf
                plans.append((t, dt, rows, ids, stats))
            while self.pending:
                self._drain_one()
        if self.writer is not None:
            self.writer.finish()
            self.writer = None
        return [TensorEntry(t.name, dt.name, tuple(t.shape), rows, tuple(ids), TensorStats.merge(stats),
                            tuple(st[4] for st in stats)) for t, dt, rows, ids, stats in plans]

    def _base_for(self, rd, parent: TensorEntry | None, i: int, length: int):
        """(base id, depth) to delta-encode chunk i against, or None.

        The base is the parent's chunk at the same position (one training step away, so
        the XOR is smallest); a chain grows by one per version until `delta_depth`, when a
        plain record starts the next chain, so a read decodes at most delta_depth + 1
        records.
        """
        if parent is None or self.max_depth <= 0 or i >= len(parent.chunks):
            return None
        cand = parent.chunks[i]
        e = rd.get(cand)
        if e is None or e.raw_len != length:
            return None
        depth = e.depth + 1 if e.encoding in codecs.DELTA_ENCODINGS else 1
        return (cand, depth) if depth <= self.max_depth else None

    def _submit(self, cid, key, view, dt, length, slots, slot, known_stats, base, release) -> None:
        def work():
            st = known_stats if known_stats is not None else tuple(kernels.chunk_stats(view, dt.code))
            enc, payload = codecs.encode(view, dt)
            if base is not None:
                from modelstore.checkout import read_chunk

                delta = codecs.encode_delta(view, read_chunk(self.store, base[0]), dt)
                if len(delta) < len(payload):
                    return st, codecs.XOR_BLOSC2, delta, base
            return st, enc, payload, None

        fut = self.pool.submit(work) if self.pool else _Done(work())
        self.pending.append((cid, key, length, slots, slot, fut, release))
        while len(self.pending) >= self.window:
            self._drain_one()

    def _drain_one(self) -> None:
        cid, key, length, slots, slot, fut, release = self.pending.popleft()
        st, enc, payload, base = fut.result()
        release()
        slots[slot] = st
        self.new_stats[key] = st
        if self.writer is None:
            self.writer = PackWriter(self.store.layout.packs)
        base_id, depth = base if base is not None else (NO_BASE, 0)
        loc = self.writer.append(cid, enc, length, payload, base_id)
        self.new_entries[cid] = Entry(loc.pack, enc, depth, loc.offset, len(payload), length, base_id)

    def close(self) -> None:
        for *_, fut, _release in self.pending:
            fut.cancel()
        if self.pool:
            self.pool.shutdown(wait=True)
        if self.writer is not None:
            self.writer.abort()


class _Done:
    def __init__(self, value):
        self.value = value

    def result(self):
        return self.value

    def cancel(self):
        pass


def _delta_bases(store, parent_ids: list[int]) -> dict[str, TensorEntry]:
    """Tensors of the first parent, by name: the candidates for delta encoding."""
    if not parent_ids or store.config.delta_depth <= 0:
        return {}
    info = store.catalog.version_by_id(parent_ids[0])
    try:
        return store.manifest(info).by_name()
    except ModelstoreError:
        return {}


def check_meta_lenient(meta: dict) -> dict[str, str]:
    """File-embedded metadata (e.g. safetensors __metadata__): keep what is a valid key."""
    return {k: str(v)[:MAX_META_VALUE] for k, v in (meta or {}).items() if isinstance(k, str) and META_KEY.match(k)}


def _parents(store, model: str, parent) -> list[int]:
    if parent is None:
        try:
            latest = store.catalog.resolve(f"{model}@latest")
        except KeyError:
            return []
        return [latest.id]
    refs = [parent] if isinstance(parent, str) else list(parent)
    return [store.resolve(r).id for r in refs]
