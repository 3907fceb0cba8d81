"""gc: remove chunks and manifests no catalog version reaches, and compact the packs.

Holds the store lock exclusively (no commit can be deciding to reuse a chunk meanwhile).
Reachability is computed from the manifests of catalog versions, never from counters.
Compaction copies live records to fresh packs, fsyncs them, repoints the index in one
transaction, and only then deletes the old packs: a crash at any point loses nothing.
"""

from __future__ import annotations

import os
from dataclasses import replace

from modelstore.locking import store_lock
from modelstore.manifest import Manifest
from modelstore.packs import REC_HEADER, PackWriter, list_packs


def reachable(store) -> tuple[set[bytes], set[bytes]]:
    """(manifest ids, chunk ids) reachable from the catalog, including delta bases."""
    manifests, chunks = set(), set()
    for _vid, content_hex in store.catalog.all_versions():
        cid = bytes.fromhex(content_hex)
        raw = store.index.get_manifest_bytes(cid)
        if raw is None:
            continue
        manifests.add(cid)
        chunks |= Manifest.from_json(raw).chunk_ids()
    return manifests, with_bases(store, chunks)


def with_bases(store, chunks: set[bytes]) -> set[bytes]:
    """`chunks` plus every record their delta chains need (base links to a fixed point)."""
    chunks = set(chunks)
    frontier = set(chunks)
    while frontier:
        bases = set()
        for _cid, e in store.index.get_many(frontier).items():
            if any(e.base) and e.base not in chunks:
                bases.add(e.base)
        chunks |= bases
        frontier = bases
    return chunks


def gc(store, dry_run: bool = False) -> dict:
    with store_lock(store.layout.lock, exclusive=True):
        live_m, live_c = reachable(store)
        entries = dict(store.index.iter_entries())
        dead_c = entries.keys() - live_c
        dead_m = set(store.index.iter_manifest_ids()) - live_m
        freed_records = sum(REC_HEADER.size + entries[c].stored_len for c in dead_c)
        from modelstore.graph_store import sweep as sweep_graphs  # graph blobs no version names

        graphs = sweep_graphs(store, dry_run=dry_run)
        if dry_run:
            return {"chunks_removed": len(dead_c), "manifests_removed": len(dead_m),
                    "bytes_freed": freed_records + graphs["graph_bytes_freed"], "packs_rewritten": 0,
                    "dry_run": True, **graphs}
        store.index.delete(dead_c, dead_m)
        for c in dead_c:
            del entries[c]

        # Compact: every pack holding anything but live records is rewritten or deleted.
        live_by_pack: dict[int, list] = {}
        for cid, e in entries.items():
            live_by_pack.setdefault(e.pack, []).append((cid, e))
        before = 0
        rewrite, delete = [], []
        for number, path in list_packs(store.layout.packs).items():
            size = path.stat().st_size
            before += size
            live = live_by_pack.get(number, [])
            live_bytes = 16 + sum(REC_HEADER.size + e.stored_len for _, e in live)
            if not live:
                delete.append(path)
            elif size > live_bytes:
                rewrite.append((path, sorted(live, key=lambda ce: ce[1].offset)))
        if rewrite:
            writer = PackWriter(store.layout.packs, reuse=False)
            moved = {}
            try:
                for _path, live in rewrite:
                    for cid, e in live:
                        enc, raw_len, base, payload = store.packs.read(cid, e.location, e.stored_len)
                        loc = writer.append(cid, enc, raw_len, payload, base)
                        moved[cid] = replace(e, pack=loc.pack, offset=loc.offset)
                writer.finish()
            except BaseException:
                writer.abort()
                raise
            store.index.put_entries(moved)
            delete.extend(path for path, _ in rewrite)
        store.packs.close()
        for path in delete:
            os.unlink(path)
        after = sum(p.stat().st_size for p in list_packs(store.layout.packs).values())
        for p in store.layout.tmp.glob("*"):
            if p.is_file():
                p.unlink()
        return {"chunks_removed": len(dead_c), "manifests_removed": len(dead_m),
                "bytes_freed": before - after + graphs["graph_bytes_freed"], "packs_rewritten": len(rewrite),
                "packs_deleted": len(delete), **graphs}
