"""Move the chunks of one version between stores: negotiate, then parallel batches.

Push: send the version's chunk ids (plus the delta bases of our records) to the server,
which answers the ids it lacks; only those travel, in batches of at most about
BATCH_BYTES (sized so the parallel requests' acks do not coincide: _batches), WORKERS
requests at a time, straight from our pack files (wire.record_segments). Pull is the mirror: we compute what we lack, ask the server for
those records' sizes and bases, and fetch them in batches; each batch is verified and
made durable here (receive.Receiver) as it arrives. Either way a killed transfer resumes
by negotiating again: accepted batches are never sent twice.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

from modelstore import codecs
from modelstore.locking import store_lock
from modelstore.packs import NO_BASE, REC_HEADER
from modelstore.remote.wire import (
    BASE_INFO,
    COUNT,
    pack_ids,
    record_segments,
    unpack_ids,
)

BATCH_BYTES = int(os.environ.get("MODELSTORE_SYNC_BATCH_BYTES", str(64 << 20)))
WORKERS = int(os.environ.get("MODELSTORE_SYNC_WORKERS", "3"))
_GOLDEN = 0.6180339887498949
MIN_BATCH_BYTES = 4 << 20  # the shrinking last batches stop here (each costs a request and an fsync)
# Test hook: stop (sleep) once this many batches were acknowledged, so a test can SIGKILL a
# transfer at a known point.
PAUSE_ENV = "MODELSTORE_SYNC_PAUSE_AFTER"
NEGOTIATE_IDS = 1 << 20  # ids per have/want request (16 MiB)


class Stats:
    def __init__(self):
        self.chunks = 0          # records that travelled
        self.bytes = 0           # bytes of those records on the wire (headers + payloads)
        self.chunks_skipped = 0  # chunks the other side already had
        self.bytes_skipped = 0   # their stored size
        self.batches = 0
        self.lock = threading.Lock()

    def add(self, chunks: int, nbytes: int) -> int:
        with self.lock:
            self.chunks += chunks
            self.bytes += nbytes
            self.batches += 1
            return self.batches


def _batches(ids: list[bytes], size_of) -> list[list[bytes]]:
    """Cut `ids` (in sending order) into batches of at most about BATCH_BYTES for WORKERS
    parallel requests, taken in order by whichever request is free.

    Batches are not all equal: requests of equal size fall into step (one waiting for its
    ack leaves the bandwidth to the others, so the ones behind catch up) and then all wait
    for their pre-ack fsync at the same moment, with nothing on the wire. So the first
    WORKERS ramp up (1/W, 2/W, ... of BATCH_BYTES) and the next ones vary between half and
    all of it (a golden-ratio sequence: no two alike in a row), which keeps the acks spread.
    The last ones shrink to a share of what remains, so the requests also end together (no
    last round with one batch in flight)."""
    w = max(1, WORKERS)
    floor = min(MIN_BATCH_BYTES, BATCH_BYTES)
    sizes = [size_of(c) for c in ids]
    remaining = sum(sizes)
    out: list[list[bytes]] = []
    cur: list[bytes] = []
    acc, target = 0, 0
    for cid, s in zip(ids, sizes):
        if not cur:
            k = len(out)
            ramp = BATCH_BYTES * (k + 1) // w if k < w else int(BATCH_BYTES * (0.5 + 0.5 * (k * _GOLDEN % 1.0)))
            target = min(BATCH_BYTES, max(floor, min(ramp, remaining // w)))
        cur.append(cid)
        acc += s
        if acc >= target:
            out.append(cur)
            remaining -= acc
            cur, acc = [], 0
    if cur:
        out.append(cur)
    return out


def _run_parallel(batches, job, stats: Stats) -> None:
    """Run `job(batch)` for every batch, WORKERS at a time; the first failure stops the rest."""
    pause = int(os.environ.get(PAUSE_ENV, "0") or 0)

    def one(batch):
        done = stats.add(*job(batch))
        if pause and done >= pause:
            sys.stderr.write(f"sync: paused after {done} batches\n")
            sys.stderr.flush()
            time.sleep(3600)

    with ThreadPoolExecutor(max(1, WORKERS), thread_name_prefix="sync") as pool:
        futs = [pool.submit(one, b) for b in batches]
        _done, pending = wait(futs, return_when=FIRST_EXCEPTION)
        for f in pending:
            f.cancel()
        for f in futs:
            if f.done() and not f.cancelled() and f.exception() is not None:
                raise f.exception()


def push_chunks(store, client, manifest, progress=None) -> Stats:
    """Send the chunks of `manifest` the server lacks; returns what travelled."""
    stats = Stats()
    ids = list(dict.fromkeys(c for t in manifest.tensors for c in t.chunks))
    dtype_of = {c: t.dtype for t in manifest.tensors for c in t.chunks}
    entries = store.index.get_many(ids)
    idset = set(ids)
    bases = [e.base for e in entries.values() if e.encoding in codecs.DELTA_ENCODINGS and e.base not in idset]
    ask = ids + list(dict.fromkeys(bases))
    missing: set[bytes] = set()
    for start in range(0, len(ask), NEGOTIATE_IDS):
        missing |= set(unpack_ids(client.request("POST", "/api/sync/missing",
                                                 body=pack_ids(ask[start:start + NEGOTIATE_IDS]))))
    # In pack order: runs of adjacent records go out as one file range, read sequentially.
    send = sorted((c for c in ids if c in missing), key=lambda c: (entries[c].pack, entries[c].offset))
    for c in ids:
        if c not in missing:
            stats.chunks_skipped += 1
            stats.bytes_skipped += REC_HEADER.size + entries[c].stored_len
    server_has = lambda base: base != NO_BASE and base not in missing
    size_of = lambda c: REC_HEADER.size + entries[c].stored_len
    if progress:
        progress.start(sum(size_of(c) for c in send))

    def job(batch):
        # Shared store lock: a local `gc` must not rewrite the packs these ranges point into.
        with store_lock(store.layout.lock, exclusive=False):
            segments, length = record_segments(store, batch, server_has, dtype_of)
            client.request("POST", "/api/sync/chunks", body=segments, length=length)
        if progress:
            progress.advance(length)
        return len(batch), length

    _run_parallel(_batches(send, size_of), job, stats)
    return stats


def pull_chunks(store, client, model: str, content_id: str, manifest, progress=None) -> Stats:
    """Fetch the chunks of `manifest` this store lacks; each batch is verified and durable."""
    from modelstore.receive import Receiver

    stats = Stats()
    ids = list(dict.fromkeys(c for t in manifest.tensors for c in t.chunks))
    local = store.index.get_many(ids)
    want = [c for c in ids if c not in local]
    for c in ids:
        if c in local:
            stats.chunks_skipped += 1
            stats.bytes_skipped += REC_HEADER.size + local[c].stored_len
    info: dict[bytes, tuple] = {}
    for start in range(0, len(want), NEGOTIATE_IDS):
        body = client.request("POST", "/api/sync/bases", body=pack_ids(want[start:start + NEGOTIATE_IDS]))
        for off in range(0, len(body), BASE_INFO.size):
            cid, base, slen, rlen = BASE_INFO.unpack_from(body, off)
            info[cid] = (base, slen, rlen)
    lacking = [c for c in want if c not in info]
    if lacking:
        from modelstore.errors import IntegrityError

        raise IntegrityError(f"{client.name}: chunk {lacking[0].hex()} of {model} {content_id[:12]} is missing on "
                             "the remote (run `modelstore fsck` there)")
    candidate_bases = {b for b, _, _ in info.values() if b != NO_BASE}
    held = set(store.index.get_many(candidate_bases))
    size_of = lambda c: REC_HEADER.size + info[c][1]
    if progress:
        progress.start(sum(size_of(c) for c in want))

    def job(batch):
        mine = [info[c][0] for c in batch if info[c][0] in held]
        body = [COUNT.pack(len(batch)), pack_ids(batch), pack_ids(dict.fromkeys(mine))]
        got = [0]
        receiver = Receiver(store)

        def sink(piece):
            receiver.feed(piece)
            got[0] += len(piece)
            if progress:
                progress.advance(len(piece))

        try:
            client.request("POST", "/api/sync/records", params={"content_id": content_id, "model": model},
                           body=body, length=sum(len(b) for b in body), sink=sink)
        except BaseException:
            receiver.abort()
            raise
        receiver.finish()
        return len(batch), got[0]

    _run_parallel(_batches(want, size_of), job, stats)
    return stats
