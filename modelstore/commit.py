"""Ingest: model file -> tensors -> chunks -> ids -> (dedup) -> records -> packs -> index -> catalog.

Write order (docs/FORMAT.md §7): new records are appended to a pack and fsynced; then the
index entries, chunk stats and manifest go into one LMDB transaction; then the version row
into one SQLite transaction. A crash anywhere before the last step leaves only
unreferenced records, which `gc` removes. Memory stays bounded by a few chunks: tensors are
read through memory maps and only the pack writer's short queue holds encoded records.
"""

from __future__ import annotations

import getpass
import os
import re
from collections import Counter
from collections.abc import Callable

from modelstore import chunking, codecs, dtypes, hashing, kernels
from modelstore.catalog import VersionInfo, check_model_name
from modelstore.chunkindex import Entry
from modelstore.errors import InvalidInputError
from modelstore.formats import open_model
from modelstore.locking import store_lock
from modelstore.manifest import Manifest, TensorEntry, TensorStats
from modelstore.packs import NO_BASE, PackWriter

META_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,99}$")
MAX_META_VALUE = 10_000


def check_meta(meta: dict | None) -> dict[str, str]:
    out = {}
    for k, v in (meta or {}).items():
        if not isinstance(k, str) or not META_KEY.match(k):
            raise InvalidInputError(f"invalid metadata key {str(k)[:60]!r}: letters, digits, '_', '.', '-'; starting with a letter")
        v = str(v)
        if len(v) > MAX_META_VALUE:
            raise InvalidInputError(f"metadata value for {k!r} is longer than {MAX_META_VALUE} characters")
        out[k] = v
    return out


def default_author() -> str:
    try:
        return os.environ.get("MODELSTORE_AUTHOR") or getpass.getuser()
    except Exception:
        return "unknown"


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
) -> VersionInfo:
    """Store a checkpoint (path or dict of arrays) as the next version of `model`."""
    check_model_name(model)
    meta = check_meta(meta)
    parent_ids = _parents(store, model, parent)
    target = store.config.chunk_target_bytes
    with store_lock(store.layout.lock, exclusive=False), open_model(source) as src:
        new_entries: dict[bytes, Entry] = {}
        new_stats: dict[bytes, tuple] = {}
        entries: list[TensorEntry] = []
        writer: PackWriter | None = None
        try:
            with store.index.reader() as rd:
                for t in src.tensors:
                    dt = dtypes.get(t.dtype)
                    rows = chunking.chunk_rows(t.shape, dt.itemsize, target)
                    buf = t.buffer() if t.nbytes else memoryview(b"")
                    ids, parts, sumsq = [], [], []
                    for off, length in chunking.chunk_spans(t.shape, dt.itemsize, rows):
                        view = buf[off : off + length]
                        cid = hashing.digest(view)
                        key = cid + bytes([dt.code])
                        st = new_stats.get(key) or rd.get_stats(cid, dt.code)
                        if st is None:
                            st = tuple(kernels.chunk_stats(view, dt.code))
                            new_stats[key] = st
                        if cid not in new_entries and rd.get(cid) is None:
                            enc, payload = codecs.encode(view, dt)
                            if writer is None:
                                writer = PackWriter(store.layout.packs)
                            loc = writer.append(cid, enc, length, payload)
                            new_entries[cid] = Entry(loc.pack, enc, loc.offset, len(payload), length, NO_BASE)
                        ids.append(cid)
                        parts.append(st)
                        sumsq.append(st[4])
                        if progress:
                            progress(length)
                    entries.append(TensorEntry(t.name, dt.name, tuple(t.shape), rows, tuple(ids),
                                               TensorStats.merge(parts), tuple(sumsq)))
            if writer is not None:
                writer.finish()
                writer = None
        finally:
            if writer is not None:
                writer.abort()
        manifest = Manifest(tuple(entries))
        content_id = manifest.content_id
        inserted = store.index.commit_version(new_entries, new_stats, content_id, manifest.to_json())
        stored = sum(new_entries[c].stored_len for c in inserted)
        by_dtype = Counter()
        for e in manifest.tensors:
            by_dtype[e.dtype] += e.nbytes
        merged_meta = {**check_meta_lenient(src.metadata), **meta}
        return store.catalog.insert_version(
            model=model, content_id=content_id.hex(), message=message or "", author=author or default_author(),
            fmt=src.format, size=manifest.nbytes, stored=stored, params=manifest.params,
            n_tensors=len(manifest.tensors), dtype=by_dtype.most_common(1)[0][0] if by_dtype else "",
            parents=parent_ids, meta=merged_meta,
            tensors=[(e.name, e.dtype, str(list(e.shape)), e.nbytes) for e in manifest.tensors],
        )


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
