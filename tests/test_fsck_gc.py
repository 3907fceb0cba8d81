"""fsck finds damage; gc never removes what a version can reach."""

import os

import numpy as np
import pytest

from modelstore.packs import list_packs
from modelstore.store import Store
from modelstore.testing.models import finetune, transformer


@pytest.fixture
def populated(tmp_path):
    s = Store.init(tmp_path / "store", chunk_target_bytes=32 << 10)
    sd = transformer(n_layers=2, d_model=64, vocab=300)
    s.commit(sd, model="m", message="one")
    s.commit(finetune(sd, [1]), model="m", message="two")
    yield s
    s.close()


def test_clean_store_passes(populated):
    rep = populated.fsck()
    assert rep["ok"], rep["problems"]
    assert rep["chunks_verified"] == rep["chunks"] > 0


def test_flipped_byte_is_found(populated):
    pack = sorted(list_packs(populated.layout.packs).values())[0]
    entries = sorted(populated.index.iter_entries(), key=lambda kv: kv[1].offset)
    cid, e = next((c, e) for c, e in entries if e.pack == int(pack.stem, 16) and e.stored_len > 100)
    with open(pack, "r+b") as f:
        f.seek(e.offset + 56 + e.stored_len // 2)
        b = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([b[0] ^ 0x40]))
    rep = populated.fsck()
    assert not rep["ok"]
    assert any(cid.hex() in p and "corrupt" in p for p in rep["problems"]), rep["problems"]


def test_missing_chunk_is_found(populated):
    m = populated.manifest("m@1")
    victim = m.tensors[0].chunks[0]
    populated.index.delete([victim])
    rep = populated.fsck()
    assert any(f"missing chunk {victim.hex()}" in p for p in rep["problems"])


def test_dangling_version_is_found(populated):
    info = populated.resolve("m@2")
    populated.index.delete(manifest_ids=[bytes.fromhex(info.content_id)])
    rep = populated.fsck()
    assert any("dangling version m@2" in p for p in rep["problems"]), rep["problems"]


def test_gc_removes_only_unreachable(populated, tmp_path):
    # Simulate a crashed commit: chunks written and indexed, but no catalog row.
    from modelstore.chunkindex import Entry
    from modelstore import codecs, dtypes, hashing
    from modelstore.packs import PackWriter

    junk = np.arange(5000, dtype=np.float32).tobytes()
    cid = hashing.digest(junk)
    w = PackWriter(populated.layout.packs)
    enc, payload = codecs.encode(junk, dtypes.get("F32"))
    loc = w.append(cid, enc, len(junk), payload)
    w.finish()
    populated.index.commit_version({cid: Entry(loc.pack, enc, 0, loc.offset, len(payload), len(junk), bytes(16))},
                                   {}, bytes(16), b'{"format":1,"tensors":[]}')
    rep = populated.fsck()
    assert rep["ok"] and rep["unreferenced_chunks"] == 1 and rep["unreferenced_manifests"] == 1
    before = {v.ref: populated.load(v.ref) for v in populated.log("m")}
    out = populated.gc()
    assert out["chunks_removed"] == 1 and out["manifests_removed"] == 1 and out["bytes_freed"] > 0
    rep = populated.fsck()
    assert rep["ok"] and rep["unreferenced_chunks"] == 0
    for ref, tensors in before.items():
        after = populated.load(ref)
        assert all(after[k].tobytes() == v.tobytes() for k, v in tensors.items())
    # A second gc has nothing left to do.
    assert populated.gc()["chunks_removed"] == 0
