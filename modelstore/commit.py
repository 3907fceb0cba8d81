"""Ingest: model file -> tensors -> chunks -> ids -> (dedup) -> records -> packs -> index -> catalog.

Write order (docs/FORMAT.md §7): new records are appended to a pack and fsynced; then the
index entries, chunk stats and manifest go into one LMDB transaction; then the version row
into one SQLite transaction. A crash anywhere before the last step leaves only
unreferenced records, which `gc` removes. Memory stays bounded by a few chunks: tensors are
read through memory maps and only the pack writer's short queue holds encoded records.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections import Counter, OrderedDict, deque
from collections.abc import Callable

from modelstore import annotate, chunking, codecs, dtypes, hashing, kernels
from modelstore.catalog import META_KEY, VersionInfo, check_meta_key, check_model_name
from modelstore.catalog_schema import MAX_FILE_META, file_meta_size
from modelstore.checkout import scratch, settle, worker_pool
from modelstore.chunkindex import Entry
from modelstore.errors import InvalidInputError, ModelstoreError
from modelstore.formats import open_model
from modelstore.graph_store import prepare_from_source
from modelstore.locking import store_lock
from modelstore.manifest import Manifest, TensorEntry, TensorStats
from modelstore.packs import NO_BASE, PackWriter

MAX_META_VALUE = 10_000
# A plain float record takes well over half the raw size (splithuff: ~0.83 fp32, ~0.66
# bf16 on trained weights), so a float delta this small is kept without also encoding
# the plain record (most chunks of a training series: their deltas are ~0.4-0.5).
_SURE_DELTA = 0.5
# A delta record that f versions will decode through (f = 1 for most; f = lowbit of the
# version's index for the skip-delta ladder's hubs) Huffman-codes a byte plane only if
# that saves (1 + log2 f)/32 of it, at most _MAX_GAIN: hubs stay fast to decode for the
# versions above them (benchmarks/bench_series.py: the newest of 50 fp32 checkpoints
# decodes ~1.6x faster for ~0.5% more stored bytes).
_MAX_GAIN = 0.25
# Otherwise the plain record of the base chain's root (the same chunk of an earlier
# version) predicts this chunk's plain size: a delta below this share of the prediction
# is kept without encoding the plain record, which would cost a third of the commit.
_PREDICTED_MARGIN = 0.95


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
        # A graph (ONNX) is stored now, before the catalog row, under the lock gc waits for;
        # its derived figures become attributes (a value the user gave wins).
        meta = {**check_meta(prepare_from_source(store, src, meta)), **meta}
        bases, fan_out = _delta_bases(store, model, parent_ids)
        ingest = _Ingest(store, bases, base_cache(store, sum(t.nbytes for t in src.tensors)),
                         min_gain=min(_MAX_GAIN, max(fan_out, 1).bit_length() / 32),
                         remember=fan_out != 1)
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
            fmt=src.format, size=manifest.nbytes, stored=stored,
            # the reader's logical count when it knows one (GGUF blocks, reserved records)
            params=manifest.params if src.params is None else src.params,
            n_tensors=len(manifest.tensors), dtype=by_dtype.most_common(1)[0][0] if by_dtype else "",
            parents=parent_ids, meta=merged_meta, metrics=metrics,
            tensors=[(e.name, e.dtype, str(list(e.shape)), e.nbytes) for e in manifest.tensors],
            file_meta=file_metadata(src),
        )


class _Ingest:
    """The chunk pipeline of one commit.

    The main thread hashes each chunk and looks it up (LMDB read transactions stay on one
    thread); chunks not stored yet go to a small thread pool for stats and encoding (both
    release the GIL), then to the pack writer in submission order. At most `window`
    chunks are in flight, so memory is bounded by a few chunks per worker.
    """

    def __init__(self, store, bases: list[dict[str, TensorEntry]] | None = None, cache: BaseCache | None = None,
                 min_gain: float = 0.0, remember: bool = True):
        self.store = store
        self.bases = bases or []
        self.cache = cache
        # put new chunks in the cache: not for a version no later one deltas against (an
        # odd rung of the ladder), whose copies (~1 ms per 4 MiB) would only churn it
        self.remember = remember
        self.min_gain = min_gain  # codecs.encode_xor
        self.max_depth = store.config.delta_depth
        self.new_entries: dict[bytes, Entry] = {}
        self.new_stats: dict[bytes, tuple] = {}
        self.workers = codecs.THREADS
        # the process's worker threads, started once: a pool per commit costs a thread
        # start per worker, milliseconds on a busy machine, for every small checkpoint
        self.pool = worker_pool() if self.workers > 1 else None
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
                cands = [p for p in (b.get(t.name) for b in self.bases)
                         if p is not None and p.dtype == dt.name and p.chunk_rows == rows
                         and tuple(p.shape[1:]) == tuple(t.shape[1:])]
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
                        base = self._base_for(rd, cands, i, length)
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

    def _base_for(self, rd, cands: list[TensorEntry], i: int, length: int):
        """(base id, depth, plain ratio of its chain root) to delta-encode chunk i against, or None.

        The base is the chunk at the same position in the first candidate version
        (_delta_bases) whose chain stays within `delta_depth` links, so a read decodes at
        most delta_depth + 1 records; when none does, a plain record starts a new chain.
        """
        if self.max_depth <= 0:
            return None
        for tensor in cands:
            if i >= len(tensor.chunks):
                continue
            cand = tensor.chunks[i]
            e = rd.get(cand)
            if e is None or e.raw_len != length:
                continue
            depth = e.depth + 1 if e.encoding in codecs.DELTA_ENCODINGS else 1
            if depth <= self.max_depth:
                return cand, depth, _plain_ratio(rd, e)
        return None

    def _submit(self, cid, key, view, dt, length, slots, slot, known_stats, base, release) -> None:
        cache = self.cache

        def work():
            st = known_stats if known_stats is not None else tuple(kernels.chunk_stats(view, dt.code))
            if cache is not None and self.remember:
                cache.put(cid, view)
            if base is not None:
                from modelstore.checkout import read_chunk

                base_raw = cache.get(base[0]) if cache is not None else None
                if base_raw is None:
                    base_raw = read_chunk(self.store, base[0], out=scratch(length))
                denc, delta = codecs.encode_xor(view, base_raw, dt, self.min_gain)
                if ((dt.kind == "f" and len(delta) <= _SURE_DELTA * length)
                        or len(delta) < _PREDICTED_MARGIN * base[2] * length):
                    return st, denc, delta, base[:2]
                enc, payload = codecs.encode(view, dt)
                if len(delta) < len(payload):
                    return st, denc, delta, base[:2]
                return st, enc, payload, None
            enc, payload = codecs.encode(view, dt)
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
        # the shared pool outlives this commit: wait for our own tasks (they read the
        # source's memory maps), cancel those not started
        settle(fut for *_, fut, _release in self.pending)
        self.pending.clear()
        if self.writer is not None:
            self.writer.abort()


def _plain_ratio(rd, e) -> float:
    """Stored/raw of the plain record at the root of `e`'s chain (0.0 if unknown)."""
    for _ in range(64):
        if e.encoding not in codecs.DELTA_ENCODINGS:
            return e.stored_len / e.raw_len if e.raw_len else 0.0
        e = rd.get(e.base)
        if e is None:
            return 0.0
    return 0.0


class BaseCache:
    """Raw bytes of recently committed chunks by id, least recently used out first,
    bounded in bytes: the next commit of a series deltas against them without decoding
    their chains (a training loop commits every epoch from one process). Ids are hashes
    of the bytes, so an entry never goes stale; bases are still chosen by the index."""

    def __init__(self, budget: int):
        self.budget = budget
        self.used = 0
        self._items: OrderedDict[bytes, bytes] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, cid: bytes) -> bytes | None:
        with self._lock:
            data = self._items.get(cid)
            if data is None:
                self.misses += 1
                return None
            self._items.move_to_end(cid)
            self.hits += 1
            return data

    def put(self, cid: bytes, raw) -> None:
        n = memoryview(raw).nbytes
        if n > self.budget // 4:  # a few entries at least, or the cache only churns
            return
        with self._lock:
            if cid in self._items:
                self._items.move_to_end(cid)
                return
        data = bytes(raw)  # copied outside the lock
        with self._lock:
            if cid in self._items:
                return
            self._items[cid] = data
            self.used += n
            while self.used > self.budget:
                _old, dropped = self._items.popitem(last=False)
                self.used -= len(dropped)


# MODELSTORE_BASE_CACHE_MB (default 256; 0 turns it off) bounds each store's cache.
_CACHE_MB = 256
_caches: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_caches_lock = threading.Lock()


def base_cache(store, model_bytes: int) -> BaseCache | None:
    """The store's base cache when a whole version of this model fits in it, else None:
    a model larger than the budget would evict every chunk before the next commit needs
    it, so it pays for copies and never hits (memory stays a few chunks per thread)."""
    try:
        budget = int(float(os.environ.get("MODELSTORE_BASE_CACHE_MB", _CACHE_MB)) * (1 << 20))
    except ValueError:
        budget = _CACHE_MB << 20
    if budget <= 0 or model_bytes > budget or store.config.delta_depth <= 0:
        return None
    with _caches_lock:
        cache = _caches.get(store)
        if cache is None or cache.budget != budget:
            cache = _caches[store] = BaseCache(budget)
        return cache


class _Done:
    def __init__(self, value):
        self.value = value

    def result(self):
        return self.value

    def cancel(self):
        pass


def _delta_bases(store, model: str, parent_ids: list[int]) -> tuple[list[dict[str, TensorEntry]], int]:
    """Tensors by name of the versions to delta-encode against, best first, and how many
    versions will decode through the new version's delta records (its fan-out; 0 when
    unknown: a new model or a branch).

    Along a model's linear history bases follow a skip-delta ladder (as in Subversion):
    the version with 0-based number g deltas against version g - lowbit(g), so its chain
    holds popcount(g) <= log2(g) + 1 links, with no plain restarts for 2^delta_depth
    versions, while half of the versions still delta against their parent (g odd) and
    the rest against an ancestor 2, 4, 8... steps back. The first parent is the fallback
    (and the only candidate on a branch or a new model).
    """
    if not parent_ids or store.config.delta_depth <= 0:
        return [], 0
    out, fan_out = [], 0
    parent = store.catalog.version_by_id(parent_ids[0])
    try:
        latest = store.catalog.resolve(f"{model}@latest")
    except (KeyError, ModelstoreError):
        latest = None
    if latest is not None and latest.id == parent.id:
        g = latest.number  # the new version's number - 1
        fan_out = g & -g  # versions g .. g + lowbit(g) - 1 will decode through it
        target = g - (g & -g) + 1
        if 1 <= target < latest.number:
            try:
                out.append(store.manifest(store.catalog.resolve(f"{model}@{target}")).by_name())
            except (KeyError, ModelstoreError):
                pass  # deleted: fall back to the parent
    try:
        out.append(store.manifest(parent).by_name())
    except ModelstoreError:
        pass
    return out, fan_out


def file_metadata(src) -> dict[str, str] | None:
    """A .safetensors file's own __metadata__, kept verbatim so `checkout` writes it back
    (its valid keys also become attributes); None for other sources or when oversized."""
    meta = src.metadata
    size = file_meta_size(meta) if src.format == "safetensors" and meta else None
    if size is None:
        return None
    if size > MAX_FILE_META:
        raise InvalidInputError(f"the file's __metadata__ is larger than {MAX_FILE_META >> 20} MiB")
    return dict(meta)


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
