"""fsck: check every invariant of docs/FORMAT.md §7 and re-hash every stored chunk.

Damage (exit non-zero): a catalog version whose manifest is missing or corrupt, a chunk a
manifest names that the index lacks, a record whose bytes do not hash to its id, an index
entry pointing into a missing or truncated pack. Unreferenced chunks and manifests (left
by an interrupted commit) are not damage: they are reported and `gc` removes them.
"""

from __future__ import annotations

from modelstore.checkout import read_chunk
from modelstore.errors import ModelstoreError
from modelstore.gc import with_bases
from modelstore.manifest import Manifest
from modelstore.packs import FILE_HEADER, REC_HEADER, list_packs


def fsck(store, verify_data: bool = True) -> dict:
    problems: list[str] = []
    referenced: set[bytes] = set()
    live_manifests: set[bytes] = set()
    versions = store.catalog.all_versions()
    names = {v.id: v.ref for v in store.log()}
    for vid, content_hex in versions:
        ref = names.get(vid, f"version#{vid}")
        cid = bytes.fromhex(content_hex)
        live_manifests.add(cid)
        raw = store.index.get_manifest_bytes(cid)
        if raw is None:
            problems.append(f"dangling version {ref}: manifest {content_hex} is missing")
            continue
        try:
            m = Manifest.from_json(raw)
        except ModelstoreError as exc:
            problems.append(f"version {ref}: {exc}")
            continue
        if m.content_id != cid:
            problems.append(f"version {ref}: manifest does not hash to its content id {content_hex}")
        referenced |= m.chunk_ids()

    entries = dict(store.index.iter_entries())
    for cid in sorted(referenced - entries.keys()):
        problems.append(f"missing chunk {cid.hex()} (referenced by a version)")
    direct = referenced
    referenced = with_bases(store, referenced)  # delta bases are referenced too
    for cid in sorted(referenced - direct - entries.keys()):
        problems.append(f"missing delta base {cid.hex()}")

    checked = checked_bytes = 0
    if verify_data:
        for cid, e in sorted(entries.items(), key=lambda kv: (kv[1].pack, kv[1].offset)):
            try:
                read_chunk(store, cid)  # decodes delta chains; verifies every hash on the way
            except ModelstoreError as exc:
                where = "referenced" if cid in referenced else "unreferenced"
                problems.append(f"corrupt chunk {cid.hex()} ({where}): {exc}")
                continue
            checked += 1
            checked_bytes += e.raw_len

    from modelstore.graph_store import check as check_graphs

    problems += check_graphs(store)  # versions whose stored graph is missing or corrupt
    unreferenced = entries.keys() - referenced
    stray_manifests = set(store.index.iter_manifest_ids()) - live_manifests
    # Pack bytes no index entry points at: records of a commit killed before its index
    # transaction (or one still running). gc reclaims them; they are never read.
    indexed = {}
    for e in entries.values():
        indexed[e.pack] = indexed.get(e.pack, 0) + REC_HEADER.size + e.stored_len
    orphan = sum(max(0, p.stat().st_size - len(FILE_HEADER) - indexed.get(n, 0))
                 for n, p in list_packs(store.layout.packs).items())
    return {
        "ok": not problems,
        "problems": problems,
        "versions": len(versions),
        "chunks": len(entries),
        "chunks_verified": checked,
        "bytes_verified": checked_bytes,
        "unreferenced_chunks": len(unreferenced),
        "unreferenced_bytes": sum(entries[c].stored_len for c in unreferenced) + orphan,
        "orphan_pack_bytes": orphan,
        "unreferenced_manifests": len(stray_manifests),
    }
