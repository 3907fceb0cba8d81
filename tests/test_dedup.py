"""Dedup: what a commit adds is exactly the chunks no version had before."""

import numpy as np
import pytest

from modelstore.store import Store
from modelstore.testing.models import finetune, transformer


@pytest.fixture
def small_store(tmp_path):
    # 64 KiB chunks so that a small model still spans many chunks.
    s = Store.init(tmp_path / "store", chunk_target_bytes=64 << 10)
    yield s
    s.close()


def chunk_bytes(store, ref, names=None):
    m = store.manifest(ref)
    ids = set()
    for t in m.tensors:
        if names is None or t.name in names:
            ids |= set(t.chunks)
    return ids


def test_same_weights_other_format_adds_nothing(small_store, tmp_path):
    sd = transformer(n_layers=2, d_model=64, vocab=500)
    v1 = small_store.commit(sd, model="a")
    assert v1.stored > 0
    path = tmp_path / "m.npz"
    small_store.checkout(v1.ref, path)
    before = small_store.stats()["stored_bytes"]
    v2 = small_store.commit(path, model="other")
    assert v2.stored == 0
    assert small_store.stats()["stored_bytes"] == before
    st = tmp_path / "m.safetensors"
    small_store.checkout(v1.ref, st)
    assert small_store.commit(st, model="third").stored == 0


def test_rename_and_reorder_add_nothing(small_store):
    sd = transformer(n_layers=2, d_model=64, vocab=500)
    small_store.commit(sd, model="a")
    before = small_store.stats()["stored_bytes"]
    renamed = {("model." + k): v for k, v in reversed(list(sd.items()))}
    v = small_store.commit(renamed, model="a")
    assert v.stored == 0
    assert small_store.stats()["stored_bytes"] == before


def test_finetune_two_of_twelve_layers_adds_only_those(small_store):
    sd = transformer(n_layers=12, d_model=64, vocab=500)
    v1 = small_store.commit(sd, model="ft")
    ft = finetune(sd, layers=[3, 7])
    v2 = small_store.commit(ft, model="ft")
    changed = [k for k in sd if k.startswith(("layers.3.", "layers.7."))]
    new_ids = chunk_bytes(small_store, v2.ref) - chunk_bytes(small_store, v1.ref)
    assert new_ids == chunk_bytes(small_store, v2.ref, changed)
    entries = small_store.index.get_many(new_ids)
    assert v2.stored == sum(e.stored_len for e in entries.values())
    assert 0 < v2.stored < v1.stored / 5


def test_appended_rows_add_only_new_chunks(small_store):
    rng = np.random.default_rng(0)
    emb = (rng.standard_normal((20000, 64)) * 0.02).astype(np.float32)  # 5 MB, 64 KiB chunks = 256 rows
    v1 = small_store.commit({"emb": emb}, model="emb")
    grown = np.concatenate([emb, (rng.standard_normal((1000, 64)) * 0.02).astype(np.float32)])
    v2 = small_store.commit({"emb": grown}, model="emb")
    old = small_store.manifest(v1.ref).tensors[0]
    new = small_store.manifest(v2.ref).tensors[0]
    rows = old.chunk_rows
    assert new.chunk_rows == rows
    full_old = 20000 // rows  # chunks entirely below the old end
    assert new.chunks[:full_old] == old.chunks[:full_old]
    added = set(new.chunks) - set(old.chunks)
    # Only chunks covering rows >= the old last chunk's start are new.
    assert added == set(new.chunks[full_old:])
    assert len(added) == -(-21000 // rows) - full_old


def test_identical_commit_is_idempotent(small_store):
    sd = transformer(n_layers=1, d_model=32, vocab=100)
    a = small_store.commit(sd, model="x")
    b = small_store.commit(sd, model="x")
    assert a.content_id == b.content_id and b.stored == 0 and b.number == 2
    assert b.parents == [a.ref]
