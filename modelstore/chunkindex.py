"""The chunk index (LMDB): chunk id -> record location, per-chunk stats, manifests.

Named databases (docs/FORMAT.md §3.2), all values fixed-layout and small except manifests:
  chunks     id(16)             -> ENTRY: pack, encoding, depth, offset, stored_len, raw_len, base id
  stats      id(16) + dtype(1)  -> STATS: n, n_nan, n_inf, sum, sumsq, min, max
  manifests  content id(16)     -> encoding(1) + raw_len(u64) + payload (canonical manifest JSON)
The dedup check on ingest is one `get` here.
"""

from __future__ import annotations

import os
import struct
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import lmdb

from modelstore import codecs, dtypes
from modelstore.errors import FormatError, IntegrityError, ReadOnlyError
from modelstore.packs import Location

ENTRY = struct.Struct("<IBB2xQQQ16s")
STATS = struct.Struct("<QQQdddd")
MREC = struct.Struct("<BQ")
# Manifests under this size are stored raw: compressing a few KiB of JSON saves little,
# and a blosc2 record would make every short CLI commit and checkout import blosc2 (~0.25 s).
MANIFEST_COMPRESS_FROM = 64 << 10
_MAP_SIZE = 1 << 34  # grown on MapFullError; LMDB files stay sparse


@dataclass(frozen=True, slots=True)
class Entry:
    pack: int
    encoding: int
    depth: int  # 0 for a plain record; n for the n-th delta against the same base
    offset: int
    stored_len: int
    raw_len: int
    base: bytes  # chunk id this record is a delta against, or 16 zero bytes

    @property
    def location(self) -> Location:
        return Location(self.pack, self.offset)

    def pack_bytes(self) -> bytes:
        return ENTRY.pack(self.pack, self.encoding, self.depth, self.offset, self.stored_len, self.raw_len, self.base)

    @classmethod
    def unpack(cls, raw: bytes) -> "Entry":
        return cls(*ENTRY.unpack(raw))


# LMDB allows one Environment per file per process: share it between Store objects.
_ENVS: dict[str, list] = {}  # realpath -> [env, refcount]
_ENVS_LOCK = threading.Lock()


def _acquire_env(path: Path, readonly: bool):
    """(env, {name: db handle}) shared by every ChunkIndex of this process on `path`.

    The named databases are opened once, with the environment: opening one takes LMDB's
    write lock, and doing it per Store while another thread commits could stall a server."""
    key = os.path.realpath(path)
    with _ENVS_LOCK:
        hit = _ENVS.get(key)
        if hit is not None:
            hit[1] += 1
            return hit[0], hit[2]
        try:
            # Read-only: no lock file either (it may sit on a read-only filesystem).
            env = lmdb.open(key, map_size=_MAP_SIZE, max_dbs=8, subdir=True, readonly=readonly,
                            readahead=False, create=not readonly, lock=not readonly)
            with env.begin(write=not readonly) as txn:
                dbs = {name: env.open_db(name.encode(), txn=txn, create=not readonly)
                       for name in ("chunks", "stats", "manifests")}
        except lmdb.Error as exc:
            if "env" in locals():
                env.close()
            raise FormatError(f"cannot open chunk index at {path}: {exc}") from None
        _ENVS[key] = [env, 1, dbs]
        return env, dbs


def _release_env(env) -> None:
    with _ENVS_LOCK:
        for key, hit in list(_ENVS.items()):
            if hit[0] is env:
                hit[1] -= 1
                if hit[1] == 0:
                    del _ENVS[key]
                    env.close()
                return


class ChunkIndex:
    def __init__(self, path: Path, readonly: bool = False):
        self.readonly = readonly
        self.env, dbs = _acquire_env(path, readonly)
        self._chunks, self._stats, self._manifests = dbs["chunks"], dbs["stats"], dbs["manifests"]

    def close(self) -> None:
        if self.env is not None:
            _release_env(self.env)
            self.env = None

    # -- reads -----------------------------------------------------------------------
    def get(self, cid: bytes) -> Entry | None:
        with self.env.begin(db=self._chunks, buffers=False) as txn:
            raw = txn.get(cid)
        return Entry.unpack(raw) if raw is not None else None

    def get_many(self, cids: Iterable[bytes]) -> dict[bytes, Entry]:
        out = {}
        with self.env.begin(db=self._chunks) as txn:
            for cid in cids:
                raw = txn.get(cid)
                if raw is not None:
                    out[cid] = Entry.unpack(raw)
        return out

    def get_stats(self, cid: bytes, code: int) -> tuple | None:
        with self.env.begin(db=self._stats) as txn:
            raw = txn.get(cid + bytes([code]))
        return STATS.unpack(raw) if raw is not None else None

    def reader(self):
        """A read transaction for many lookups (use as a context manager)."""
        return _Reader(self)

    def iter_entries(self) -> Iterator[tuple[bytes, Entry]]:
        with self.env.begin(db=self._chunks) as txn:
            for k, v in txn.cursor():
                yield bytes(k), Entry.unpack(v)

    def count(self) -> int:
        with self.env.begin() as txn:
            return txn.stat(self._chunks)["entries"]

    def get_manifest_bytes(self, content_id: bytes) -> bytes | None:
        with self.env.begin(db=self._manifests) as txn:
            raw = txn.get(content_id)
        if raw is None:
            return None
        enc, n = MREC.unpack_from(raw)
        return bytes(codecs.decode(enc, memoryview(raw)[MREC.size :], n))

    def iter_manifest_ids(self) -> Iterator[bytes]:
        with self.env.begin(db=self._manifests) as txn:
            for k in txn.cursor().iternext(keys=True, values=False):
                yield bytes(k)

    # -- writes ----------------------------------------------------------------------
    def _write(self, fn):
        if self.readonly:
            raise ReadOnlyError("the chunk index is open read-only")
        while True:
            try:
                with self.env.begin(write=True) as txn:
                    return fn(txn)
            except lmdb.MapFullError:
                self.env.set_mapsize(self.env.info()["map_size"] * 2)

    def commit_version(
        self,
        entries: dict[bytes, Entry],
        stats: dict[bytes, tuple],
        content_id: bytes,
        manifest_json: bytes,
    ) -> set[bytes]:
        """One transaction: new chunk entries (first writer wins), stats, the manifest.

        Returns the ids this call actually inserted (others were stored concurrently).
        """
        if len(manifest_json) < MANIFEST_COMPRESS_FROM:
            enc, payload = codecs.RAW, manifest_json
        else:
            enc, payload = codecs.encode(manifest_json, dtypes.get("U8"))
        mrec = MREC.pack(enc, len(manifest_json)) + bytes(payload)

        def fn(txn):
            inserted = set()
            for cid, e in entries.items():
                if txn.put(cid, e.pack_bytes(), db=self._chunks, overwrite=False):
                    inserted.add(cid)
            for key, st in stats.items():
                txn.put(key, STATS.pack(*st), db=self._stats, overwrite=False)
            txn.put(content_id, mrec, db=self._manifests, overwrite=False)
            return inserted

        return self._write(fn)

    def add_entries(self, entries: dict[bytes, Entry]) -> set[bytes]:
        """Index received records in one transaction, first writer wins (as in a commit);
        returns the ids that were new."""
        if not entries:
            return set()

        def fn(txn):
            return {cid for cid, e in entries.items()
                    if txn.put(cid, e.pack_bytes(), db=self._chunks, overwrite=False)}
        return self._write(fn)

    def put_entries(self, entries: dict[bytes, Entry]) -> None:
        """Overwrite entries (gc repack moves records)."""
        def fn(txn):
            for cid, e in entries.items():
                txn.put(cid, e.pack_bytes(), db=self._chunks)
        self._write(fn)

    def delete(self, chunk_ids: Iterable[bytes] = (), manifest_ids: Iterable[bytes] = ()) -> None:
        chunk_ids = list(chunk_ids)
        manifest_ids = list(manifest_ids)
        def fn(txn):
            for cid in chunk_ids:
                txn.delete(cid, db=self._chunks)
            for mid in manifest_ids:
                txn.delete(mid, db=self._manifests)
            if chunk_ids:
                dead = set(chunk_ids)
                cur = txn.cursor(db=self._stats)
                keys = [bytes(k) for k in cur.iternext(keys=True, values=False) if bytes(k[:16]) in dead]
                for k in keys:
                    txn.delete(k, db=self._stats)
        self._write(fn)


class _Reader:
    def __init__(self, index: ChunkIndex):
        self.index = index

    def __enter__(self):
        self.txn = self.index.env.begin()
        return self

    def __exit__(self, *exc):
        self.txn.abort()

    def get(self, cid: bytes) -> Entry | None:
        raw = self.txn.get(cid, db=self.index._chunks)
        return Entry.unpack(raw) if raw is not None else None

    def get_stats(self, cid: bytes, code: int) -> tuple | None:
        raw = self.txn.get(cid + bytes([code]), db=self.index._stats)
        return STATS.unpack(raw) if raw is not None else None


def check_entry(cid: bytes, e: Entry | None) -> Entry:
    if e is None:
        raise IntegrityError(f"chunk {cid.hex()} is missing from the index (run `modelstore fsck`)")
    return e
