"""Storage accounting: logical bytes, unique bytes, stored bytes, and the ratios between them."""

from __future__ import annotations

from collections import Counter

from modelstore import codecs
from modelstore.packs import list_packs


def storage_stats(store) -> dict:
    versions = store.log()
    logical = sum(v.size for v in versions)
    raw = stored = 0
    by_enc: Counter = Counter()
    by_enc_raw: Counter = Counter()
    by_enc_stored: Counter = Counter()
    n = 0
    for _cid, e in store.index.iter_entries():
        n += 1
        raw += e.raw_len
        stored += e.stored_len
        name = codecs.NAMES.get(e.encoding, str(e.encoding))
        by_enc[name] += 1
        by_enc_raw[name] += e.raw_len
        by_enc_stored[name] += e.stored_len
    disk = sum(p.stat().st_size for p in list_packs(store.layout.packs).values())
    index_bytes = sum(p.stat().st_size for p in store.layout.index.glob("*.mdb"))
    catalog_bytes = sum(p.stat().st_size for p in store.root.glob("catalog.sqlite*"))
    per_model: dict[str, dict] = {}
    for v in versions:
        m = per_model.setdefault(v.model, {"versions": 0, "logical_bytes": 0, "new_bytes": 0})
        m["versions"] += 1
        m["logical_bytes"] += v.size
        m["new_bytes"] += v.stored
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
        "per_model": per_model,
    }
