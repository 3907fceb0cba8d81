"""Storage accounting: logical bytes, unique bytes, stored bytes, and the ratios between them."""

from __future__ import annotations

from collections import Counter

from modelstore import codecs
from modelstore.errors import ModelstoreError
from modelstore.packs import list_packs


def storage_stats(store) -> dict:
    versions = store.log()
    logical = sum(v.size for v in versions)
    raw = stored = 0
    by_enc: Counter = Counter()
    by_enc_raw: Counter = Counter()
    by_enc_stored: Counter = Counter()
    longest = 0
    n = 0
    for _cid, e in store.index.iter_entries():
        n += 1
        raw += e.raw_len
        stored += e.stored_len
        name = codecs.NAMES.get(e.encoding, str(e.encoding))
        by_enc[name] += 1
        by_enc_raw[name] += e.raw_len
        by_enc_stored[name] += e.stored_len
        longest = max(longest, e.depth)
    disk = sum(p.stat().st_size for p in list_packs(store.layout.packs).values())
    index_bytes = sum(p.stat().st_size for p in store.layout.index.glob("*.mdb"))
    catalog_bytes = sum(p.stat().st_size for p in store.root.glob("catalog.sqlite*"))
    entries = dict(store.index.iter_entries())
    per_model: dict[str, dict] = {}
    model_chunks: dict[str, set] = {}
    for v in versions:
        m = per_model.setdefault(v.model, {"versions": 0, "logical_bytes": 0, "new_bytes": 0})
        m["versions"] += 1
        m["logical_bytes"] += v.size
        m["new_bytes"] += v.stored
        try:
            model_chunks.setdefault(v.model, set()).update(store.manifest(v).chunk_ids())
        except ModelstoreError:
            pass  # fsck reports the missing manifest
    for model, ids in model_chunks.items():
        enc: dict[str, dict] = {}
        longest = 0
        for cid in ids:
            e = entries.get(cid)
            if e is None:
                continue
            d = enc.setdefault(codecs.NAMES.get(e.encoding, str(e.encoding)),
                               {"records": 0, "raw_bytes": 0, "stored_bytes": 0})
            d["records"] += 1
            d["raw_bytes"] += e.raw_len
            d["stored_bytes"] += e.stored_len
            longest = max(longest, e.depth)
        per_model[model]["encodings"] = dict(sorted(enc.items()))
        # Deltas always point at a plain record, so a read decodes at most 2 records;
        # the chain length is how many versions share that plain base.
        per_model[model]["longest_chain"] = longest
    return {
        "models": len(per_model),
        "versions": len(versions),
        "chunks": n,
        "logical_bytes": logical,
        "unique_bytes": raw,
        "stored_bytes": stored,
        "pack_bytes": disk,
        "index_bytes": index_bytes,
        "catalog_bytes": catalog_bytes,
        "dedup_ratio": (logical / raw) if raw else 1.0,
        "compression_ratio": (raw / stored) if stored else 1.0,
        "stored_over_logical": (stored / logical) if logical else 0.0,
        "encodings": {k: {"records": by_enc[k], "raw_bytes": by_enc_raw[k], "stored_bytes": by_enc_stored[k]}
                      for k in sorted(by_enc)},
        "longest_chain": longest,
        "per_model": per_model,
    }
