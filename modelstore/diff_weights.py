"""Diff weights: stream differing chunk pairs through the kernels (skipping shared chunks), and the optional low-rank pass.

Part of modelstore.diff, whose docstring states the rules.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from modelstore import chunking

from modelstore.diff_inputs import (  # noqa: F401
    BATCH_PAIRS,
    BATCH_BYTES,
    PREFETCH,
    TInfo,
    Side,
    FileSide,
)
from modelstore.diff_report import (  # noqa: F401
    Sums,
    TensorDiff,
)
from modelstore.diff_pairing import (  # noqa: F401
    _Pair,
)


# --------------------------------------------------------------------------- weights


class _Acc:
    __slots__ = ("parts", "chunks", "changed", "read")

    def __init__(self):
        self.parts: list[tuple] = []
        self.chunks = 0
        self.changed = 0
        self.read = 0


def _kernels():
    from modelstore import kernels

    return kernels


class _Engine:
    def __init__(self, side_a: Side, side_b: Side, *, atol: float, rtol: float, skip_shared: bool, threads: int,
                 progress: Callable[[int, int], None] | None):
        self.a, self.b = side_a, side_b
        self.atol, self.rtol = atol, rtol
        self.use_tol = atol > 0 or rtol > 0
        self.skip_shared = skip_shared
        self.threads = threads
        self.progress = progress
        self.k = _kernels()
        self.io = {"chunks_total": 0, "chunks_skipped": 0, "chunks_compared": 0, "bytes_compared": 0,
                   "stats_chunks": 0}

    # Work lists ------------------------------------------------------------------
    def run(self, jobs: list[tuple[_Pair, _Acc]]) -> None:
        deltas: dict[int, list] = {}  # code -> [(acc, ta, tb, i, length)]
        stats: dict[int, list] = {}  # code -> [(acc, side, t, i, length)]
        segments = []
        for p, acc in jobs:
            ta, tb = p.a, p.b
            code = ta.dt.code
            if ta.chunk_rows != tb.chunk_rows or len(ta.chunks) != len(tb.chunks):
                segments.append((p, acc))
                continue
            spans = ta.spans()
            acc.chunks += len(spans)
            self.io["chunks_total"] += len(spans)
            for i, (_off, length) in enumerate(spans):
                if self.skip_shared and ta.chunks[i] == tb.chunks[i]:
                    self.io["chunks_skipped"] += 1
                    known = self.a.known_sumsq(ta, i) or self.b.known_sumsq(tb, i)
                    if known is not None:
                        s, nonfinite = known
                        acc.parts.append(_skip_part(length // ta.dt.itemsize, s, nonfinite))
                    else:
                        side, t = (self.a, ta) if isinstance(self.a, FileSide) or not isinstance(self.b, FileSide) \
                            else (self.b, tb)
                        stats.setdefault(code, []).append((acc, side, t, i, length))
                else:
                    deltas.setdefault(code, []).append((acc, ta, tb, i, length))
        self.total_bytes = sum(2 * w[4] for ws in deltas.values() for w in ws) + \
            sum(w[4] for ws in stats.values() for w in ws) + \
            sum(2 * p.a.nbytes for p, _ in segments)
        self.done_bytes = 0
        for code, work in stats.items():
            self._run_stats(code, work)
        for code, work in deltas.items():
            self._run_deltas(code, work)
        for p, acc in segments:
            self._run_segments(p, acc)

    def _tick(self, n: int) -> None:
        self.done_bytes += n
        if self.progress is not None:
            self.progress(self.done_bytes, self.total_bytes)

    @staticmethod
    def _batches(work: list, nbytes: Callable[[Any], int], max_items: int, max_bytes: int):
        batch, size = [], 0
        for w in work:
            if batch and (len(batch) >= max_items or size + nbytes(w) > max_bytes):
                yield batch
                batch, size = [], 0
            batch.append(w)
            size += nbytes(w)
        if batch:
            yield batch

    def _run_stats(self, code: int, work: list) -> None:
        for batch in self._batches(work, lambda w: w[4], 64, BATCH_BYTES):
            bufs = [side.chunk(t, i) for _acc, side, t, i, _n in batch]
            res = self.k.stats_many(bufs, code, threads=self.threads)
            del bufs
            for (acc, _side, t, _i, length), st in zip(batch, res):
                st = tuple(st)
                acc.parts.append(_skip_part(length // t.dt.itemsize, float(st[4]), int(st[1]) + int(st[2])))
            self.io["stats_chunks"] += len(batch)
            self._tick(sum(w[4] for w in batch))
            for _acc, side, t, i, _n in batch:
                side.release(t, i)

    def _run_deltas(self, code: int, work: list) -> None:
        batches = list(self._batches(work, lambda w: 2 * w[4], BATCH_PAIRS, BATCH_BYTES))
        if not (self.a.decodes or self.b.decodes):  # two files: slicing an mmap costs nothing
            for batch in batches:
                self._consume(code, batch, [(self.a.chunk(ta, i), self.b.chunk(tb, i))
                                            for _acc, ta, tb, i, _n in batch])
            return
        # Decoding (GIL-free) runs on codecs.THREADS workers, PREFETCH batches ahead of the
        # kernel (GIL-free too), into recycled buffers: fresh 4 MiB buffers cost page faults
        # that halved decode speed. Memory: about (PREFETCH + 1) * BATCH_BYTES.
        from modelstore import codecs

        pool = _BufferPool()
        with ThreadPoolExecutor(max_workers=max(1, codecs.THREADS), thread_name_prefix="diff-decode") as ex:
            def submit(batch):
                return [self._start(ex, pool, ta, tb, i, length) for _acc, ta, tb, i, length in batch]

            inflight = [submit(b) for b in batches[:PREFETCH]]
            try:
                for n, batch in enumerate(batches):
                    jobs = inflight[n]
                    if n + PREFETCH < len(batches):
                        inflight.append(submit(batches[n + PREFETCH]))
                    bufs = [_pair_result(job) for job, _arrays in jobs]
                    self._consume(code, batch, bufs)
                    del bufs
                    for _job, arrays in jobs:  # the kernel is done with them: recycle
                        for arr in arrays:
                            pool.put(arr)
                    inflight[n] = None
            finally:
                for jobs in inflight:  # on error: stop queued decodes
                    for job, _arrays in jobs or ():
                        for f in (job if isinstance(job, tuple) else (job,)):
                            if hasattr(f, "cancel"):
                                f.cancel()

    def _start(self, ex, pool: "_BufferPool", ta: TInfo, tb: TInfo, i: int, length: int):
        """(job, recycled buffers) for chunk pair i: job is a future of both buffers (two
        versions of one store: `_read_pair`), or a tuple of per-side futures/values."""
        a, b = self.a, self.b
        if a.decodes and b.decodes and a.store is b.store:
            arr_a, arr_b = pool.get(length), pool.get(length)
            job = ex.submit(_read_pair, a.store, ta.chunks[i], tb.chunks[i], memoryview(arr_a)[:length],
                            memoryview(arr_b)[:length])
            return job, (arr_a, arr_b)
        parts, arrays = [], []
        for side, t in ((a, ta), (b, tb)):
            if side.decodes:
                arr = pool.get(length)
                arrays.append(arr)
                parts.append(ex.submit(side.chunk, t, i, memoryview(arr)[:length]))
            else:
                parts.append(side.chunk(t, i))
        return tuple(parts), arrays

    def _consume(self, code: int, batch, bufs) -> None:
        res = self.k.delta_many(bufs, code, self.atol, self.rtol, self.threads)
        nbytes = 0
        for (acc, ta, tb, _i, length), d in zip(batch, res):
            d = tuple(d)
            acc.parts.append(d)
            acc.read += 1
            changed = d[8] if self.use_tol else d[7]
            if changed:
                acc.changed += 1
            nbytes += 2 * length
        self.io["chunks_compared"] += len(batch)
        self.io["bytes_compared"] += nbytes
        self._tick(nbytes)
        for _acc, ta, tb, i, _n in batch:
            self.a.release(ta, i)
            self.b.release(tb, i)

    def _run_segments(self, p: _Pair, acc: _Acc) -> None:
        """Different chunk rows on the two sides: compare over the union of row boundaries."""
        ta, tb = p.a, p.b
        if ta.numel == 0:
            return
        if not ta.shape:  # 0-d: one chunk each
            self._segment(acc, self.a.chunk(ta, 0), self.b.chunk(tb, 0), ta.dt.code, True)
            acc.chunks += 1
            self.io["chunks_total"] += 1
            return
        rows = ta.shape[0]
        rb = chunking.row_bytes(ta.shape, ta.dt.itemsize)
        ra, rbk = ta.chunk_rows, tb.chunk_rows
        bounds = sorted(set(range(0, rows, ra)) | set(range(0, rows, rbk)) | {rows})
        acc.chunks += len(ta.chunks)
        self.io["chunks_total"] += len(ta.chunks)
        cur_a = cur_b = None
        ia_cur = ib_cur = -1
        changed_a = set()
        for r0, r1 in zip(bounds, bounds[1:]):
            ia, ib = r0 // ra, r0 // rbk
            if ia != ia_cur:
                cur_a, ia_cur = self.a.chunk(ta, ia), ia
            if ib != ib_cur:
                cur_b, ib_cur = self.b.chunk(tb, ib), ib
            va = memoryview(cur_a).cast("B")[(r0 - ia * ra) * rb:(r1 - ia * ra) * rb]
            vb = memoryview(cur_b).cast("B")[(r0 - ib * rbk) * rb:(r1 - ib * rbk) * rb]
            if self._segment(acc, va, vb, ta.dt.code, False):
                changed_a.add(ia)
            self._tick(2 * (r1 - r0) * rb)
        acc.changed += len(changed_a)
        acc.read += len(ta.chunks)
        self.a.release(ta)
        self.b.release(tb)

    def _segment(self, acc, va, vb, code, count_chunk) -> bool:
        d = tuple(self.k.chunk_delta(va, vb, code, self.atol, self.rtol))
        acc.parts.append(d)
        changed = bool(d[8] if self.use_tol else d[7])
        if count_chunk:
            acc.read += 1
            acc.changed += int(changed)
        self.io["chunks_compared"] += 1
        self.io["bytes_compared"] += 2 * len(va)
        return changed


def _pair_result(job) -> tuple:
    if hasattr(job, "result"):
        return job.result()
    return tuple(p.result() if hasattr(p, "result") else p for p in job)


def _chain(store, cid: bytes) -> list | None:
    """The delta chain of `cid`, or None if a link is missing (read_chunk then reports it)."""
    from modelstore.checkout import delta_chain
    from modelstore.errors import ModelstoreError

    try:
        return delta_chain(store, cid)
    except ModelstoreError:
        return None


def _read_pair(store, ca: bytes, cb: bytes, out_a, out_b) -> tuple:
    """Both chunks of a pair from one store. When one is stored as a delta chain passing
    through the other (a version against its ancestor: the usual diff), it is rebuilt from
    the other's decoded bytes plus the links in between, so the shared root is decoded
    once instead of twice. Both results are verified against their ids."""
    from modelstore import codecs, hashing
    from modelstore.checkout import read_chunk
    from modelstore.errors import IntegrityError

    if ca == cb:
        x = read_chunk(store, ca, out=out_a)
        return x, x
    for first, second, out1, out2, flip in ((ca, cb, out_a, out_b, False), (cb, ca, out_b, out_a, True)):
        chain = _chain(store, second)
        ids = [c for c, _ in chain] if chain else []
        if first in ids[1:]:
            x = read_chunk(store, first, out=out1)
            memoryview(out2).cast("B")[:] = memoryview(x).cast("B")
            for link_id, link in reversed(chain[:ids.index(first)]):
                enc, raw_len, _base, payload = store.packs.read(link_id, link.location, link.stored_len)
                codecs.xor_into(enc, payload, raw_len, out2)
            if hashing.digest(out2) != second:
                raise IntegrityError(f"chunk {second.hex()} does not match its id (run `modelstore fsck`)")
            return (out2, x) if flip else (x, out2)
    return read_chunk(store, ca, out=out_a), read_chunk(store, cb, out=out_b)


class _BufferPool:
    """Reusable uninitialised byte buffers in power-of-two size classes (thread-safe)."""

    def __init__(self):
        self._free: dict[int, list] = {}
        self._lock = threading.Lock()

    def get(self, n: int):
        import numpy as np

        cap = 1 << max(12, (max(1, n) - 1).bit_length())
        with self._lock:
            free = self._free.get(cap)
            if free:
                return free.pop()
        return np.empty(cap, dtype=np.uint8)

    def put(self, arr) -> None:
        if arr is not None:
            with self._lock:
                self._free.setdefault(arr.size, []).append(arr)


def _skip_part(n: int, sumsq: float, nonfinite: int) -> tuple:
    return (n, 0.0, sumsq, sumsq, sumsq, 0.0, 0.0, 0, 0, nonfinite)


def _sums_of(acc: _Acc, use_tol: bool) -> Sums:
    parts = acc.parts
    return Sums(
        n=sum(int(p[0]) for p in parts), sum_d2=math.fsum(p[1] for p in parts), sum_a2=math.fsum(p[2] for p in parts),
        sum_b2=math.fsum(p[3] for p in parts), sum_ab=math.fsum(p[4] for p in parts),
        max_abs=max((float(p[5]) for p in parts), default=0.0), sum_abs=math.fsum(p[6] for p in parts),
        n_changed=sum(int(p[8] if use_tol else p[7]) for p in parts), n_nonfinite=sum(int(p[9]) for p in parts),
        chunks=acc.chunks, chunks_changed=acc.changed)


# --------------------------------------------------------------------------- low rank


def _rank_pass(side_a: Side, side_b: Side, items: list[TensorDiff], pairs: dict[int, _Pair], *, budget: float,
               max_elems: int, io: dict) -> None:
    import numpy as np

    from modelstore import lowrank

    t0 = time.perf_counter()
    for td in sorted(items, key=lambda t: -(t.rel_l2 or 0.0)):
        p = pairs[id(td)]
        ta, tb = p.a, p.b
        if len(ta.shape) != 2:
            continue
        if ta.dt.kind != "f":
            td.rank_note = "skipped: not a float tensor"
            continue
        if ta.numel > max_elems:
            td.rank_note = f"skipped: {ta.numel:,} elements > rank_max_elems {max_elems:,}"
            continue
        if time.perf_counter() - t0 > budget:
            td.rank_note = f"skipped: rank time budget ({budget:g} s) spent"
            continue
        delta = np.zeros(ta.shape, dtype=np.float32)
        flat = delta.reshape(-1)
        npdt = ta.dt.numpy
        itemsize = ta.dt.itemsize
        wide = np.float64 if itemsize == 8 else np.float32
        if ta.chunk_rows == tb.chunk_rows:  # chunk pairs: shared ones are zero rows, never read
            for i, (off, length) in enumerate(ta.spans()):
                if ta.chunks[i] == tb.chunks[i]:
                    continue
                xa = np.frombuffer(side_a.chunk(ta, i), dtype=npdt)
                xb = np.frombuffer(side_b.chunk(tb, i), dtype=npdt)
                lo = off // itemsize
                flat[lo:lo + xa.size] = xb.astype(wide) - xa.astype(wide)
                side_a.release(ta, i)
                side_b.release(tb, i)
        else:  # different row blocks: Δ = -A chunk by chunk, then += B chunk by chunk
            for side, t, sign in ((side_a, ta, -1.0), (side_b, tb, 1.0)):
                for i, (off, length) in enumerate(t.spans()):
                    x = np.frombuffer(side.chunk(t, i), dtype=npdt).astype(wide)
                    lo = off // itemsize
                    flat[lo:lo + x.size] += (sign * x).astype(np.float32)
                    side.release(t, i)
        sums = td.sums
        rms = math.sqrt(sums.sum_b2 / max(1, sums.n - sums.n_nonfinite)) if sums else 0.0
        m, n = ta.shape
        est = lowrank.estimate_rank(delta, rtol=lowrank.default_rtol(ta.dtype),
                                    floor=lowrank.noise_floor(ta.dtype, rms, m, n))
        del delta, flat
        td.rank = est.rank
        td.rank_note = (f"≥{est.rank} (sketch saturated)" if est.lower_bound else f"{est.method}") + \
            f", σ1={est.sigma_max:.3g}"
    io["rank_seconds"] = round(time.perf_counter() - t0, 4)


