"""Checkpoint series: delta records against the parent, bounded chains, gc keeps bases."""


import numpy as np
import pytest

from modelstore import codecs
from modelstore.store import Store

K = 2
FLOATS = ["F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"]
INTS = ["I64", "I32", "I16", "I8", "U8"]


def _perturb(x: np.ndarray, rng, step: int) -> np.ndarray:
    if x.dtype.kind in "iu":
        y = x.copy()
        idx = rng.integers(0, x.size, max(1, x.size // 50))
        y.reshape(-1)[idx] = (y.reshape(-1)[idx] + step) % 7
        return y
    f = x.astype(np.float32)
    return (f * (1 + 1e-2 * rng.standard_normal(x.shape, dtype=np.float32))).astype(x.dtype)


@pytest.mark.parametrize("dtype", FLOATS + INTS)
def test_chains_round_trip_bit_exact(tmp_path, dtype):
    """2^(K+1) + 1 versions: chains of every depth 0..K, a version whose chain would need
    K+1 links (stored plain instead) and chains growing again after it; every version
    reads back bit-exact and fsck decodes every chain."""
    from modelstore.dtypes import get

    dt = get(dtype)
    rng = np.random.default_rng(7)
    s = Store.init(tmp_path / "s", chunk_target_bytes=8 << 10, delta_depth=K)
    if dt.kind in "iu":
        x = rng.integers(0, 7, (240, 33)).astype(dt.numpy)
    else:
        x = (rng.standard_normal((240, 33), dtype=np.float32) * 0.05).astype(dt.numpy)
    versions = []
    depths = []
    for step in range(2 ** (K + 1) + 1):
        info = s.commit({"w": x, "b": x[:3]}, model="series")
        versions.append((info.ref, x))
        m = s.manifest(info.ref)
        entries = s.index.get_many(m.tensors[1].chunks)  # "w" (sorted after "b")
        depths.append(max(e.depth for e in entries.values()))
        for e in entries.values():
            assert e.depth <= K
            assert (e.encoding in codecs.DELTA_ENCODINGS) == (e.depth > 0)
        x = _perturb(x, rng, step + 1)
    for ref, expected in versions:
        got = s.load(ref)["w"]
        assert got.dtype == expected.dtype and got.tobytes() == expected.tobytes()
    assert depths[0] == 0
    if dt.itemsize > 1 or dt.kind in "iu":
        assert max(depths) == K, f"chains never reached depth {K} for {dtype}: {depths}"
    if dt.kind == "f" and dt.itemsize > 1:  # every chunk changes each step (ints keep some)
        assert depths[2 ** (K + 1) - 1] == 0, f"no plain restart past depth {K} for {dtype}: {depths}"
    assert s.fsck()["ok"]
    s.close()


def test_skip_delta_ladder_bounds_chains(tmp_path):
    """Along a linear history version g (0-based) chains popcount(g) links: the newest of
    a long series decodes a few links, not one per version."""
    s = Store.init(tmp_path / "s", chunk_target_bytes=1 << 20, delta_depth=6)
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((64, 64), dtype=np.float32) * 0.05)
    for g in range(20):
        info = s.commit({"w": x}, model="m")
        e = s.index.get(s.manifest(info.ref).tensors[0].chunks[0])
        assert e.depth == g.bit_count(), (g, e.depth)
        x = (x * (1 + 1e-3 * rng.standard_normal(x.shape, dtype=np.float32))).astype(np.float32)
    # a branch off an old version deltas against its own parent
    side = s.commit({"w": x}, model="m", parent="m@3")
    e = s.index.get(s.manifest(side.ref).tensors[0].chunks[0])
    assert e.depth == s.index.get(s.manifest("m@3").tensors[0].chunks[0]).depth + 1
    assert s.load(side.ref)["w"].tobytes() == x.tobytes()
    s.close()


def test_corrupt_delta_record_is_an_integrity_error(tmp_path):
    """A flipped byte or a truncated pack under a delta record fails loudly, never
    returns wrong bytes."""
    from modelstore.errors import IntegrityError

    s = Store.init(tmp_path / "s", chunk_target_bytes=1 << 20, delta_depth=4)
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((256, 256), dtype=np.float32) * 0.05)
    s.commit({"w": x}, model="m")
    y = (x * (1 + 1e-3 * rng.standard_normal(x.shape, dtype=np.float32))).astype(np.float32)
    v2 = s.commit({"w": y}, model="m")
    e = s.index.get(s.manifest(v2.ref).tensors[0].chunks[0])
    assert e.encoding == codecs.XOR_PLANES
    from modelstore.packs import REC_HEADER, pack_path

    pack = pack_path(tmp_path / "s" / "packs", e.location.pack)
    data = bytearray(pack.read_bytes())
    start = e.location.offset + REC_HEADER.size
    for pos in (start + 1, start + 40, start + e.stored_len // 2, start + e.stored_len - 3):
        bad = bytearray(data)
        bad[pos] ^= 0x10
        pack.write_bytes(bytes(bad))
        s.packs.close()
        with pytest.raises(IntegrityError):
            s.load(v2.ref)
    pack.write_bytes(bytes(data[: e.location.offset + 100]))
    s.packs.close()
    with pytest.raises(IntegrityError):
        s.load(v2.ref)
    s.close()


def _train_mlp_series(epochs: int, seed: int = 0):
    """A real (tiny) training loop: 2-layer MLP, softmax regression on synthetic blobs."""
    rng = np.random.default_rng(seed)
    n, d, h, c = 2048, 64, 256, 10
    centers = rng.standard_normal((c, d)) * 2
    y = rng.integers(0, c, n)
    x = (centers[y] + rng.standard_normal((n, d))).astype(np.float32)
    w1 = (rng.standard_normal((d, h)) / np.sqrt(d)).astype(np.float32)
    w2 = (rng.standard_normal((h, c)) / np.sqrt(h)).astype(np.float32)
    b1 = np.zeros(h, np.float32)
    b2 = np.zeros(c, np.float32)
    lr = 0.05
    for _ in range(epochs):
        for i in range(0, n, 256):
            xb, yb = x[i:i + 256], y[i:i + 256]
            a = np.maximum(xb @ w1 + b1, 0)
            logits = a @ w2 + b2
            p = np.exp(logits - logits.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            p[np.arange(len(yb)), yb] -= 1
            p /= len(yb)
            gw2, gb2 = a.T @ p, p.sum(0)
            da = (p @ w2.T) * (a > 0)
            gw1, gb1 = xb.T @ da, da.sum(0)
            w1 -= lr * gw1
            w2 -= lr * gw2
            b1 -= lr * gb1
            b2 -= lr * gb2
        yield {"fc1.weight": w1.copy(), "fc1.bias": b1.copy(), "fc2.weight": w2.copy(), "fc2.bias": b2.copy()}


def test_training_series_stores_far_less_than_plain(tmp_path):
    """20 epochs of real training: the default delta chains store well under plain records."""
    from modelstore.config import Config

    series = list(_train_mlp_series(20))
    ratios = {}
    for depth in (0, Config.delta_depth):
        s = Store.init(tmp_path / f"s{depth}", chunk_target_bytes=16 << 10, delta_depth=depth)
        raw = 0
        for ckpt in series:
            raw += s.commit(ckpt, model="mlp").size
        ratios[depth] = s.stats()["stored_bytes"] / raw
        for v in s.log("mlp"):
            s.load(v.ref)
        assert s.fsck()["ok"]
        s.close()
    assert ratios[Config.delta_depth] < 0.8 * ratios[0], ratios


def test_missing_base_is_reported_not_decoded(tmp_path):
    s = Store.init(tmp_path / "s", chunk_target_bytes=8 << 10, delta_depth=4)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((300, 16)).astype(np.float32)
    s.commit({"w": x}, model="m")
    v2 = s.commit({"w": x * np.float32(1.0001)}, model="m")
    entries = s.index.get_many(s.manifest(v2.ref).tensors[0].chunks)
    delta = [e for e in entries.values() if e.depth > 0]
    assert delta, "expected delta records"
    s.index.delete([delta[0].base])
    from modelstore.errors import IntegrityError

    with pytest.raises(IntegrityError, match="missing"):
        s.load(v2.ref)
    assert not s.fsck()["ok"]
    s.close()


def test_delete_middle_version_then_gc_keeps_later_versions(tmp_path):
    s = Store.init(tmp_path / "s", chunk_target_bytes=8 << 10, delta_depth=4)
    series = list(_train_mlp_series(6))
    infos = [s.commit(ck, model="mlp", message=f"epoch {i}") for i, ck in enumerate(series)]
    deltas = [e for e in s.index.get_many(s.manifest(infos[3].ref).chunk_ids()).values() if e.depth > 0]
    assert deltas, "the series should be stored as deltas"
    s.delete(infos[2].ref)  # a middle version that later deltas are chained through
    assert [v.number for v in s.log("mlp")] == [1, 2, 4, 5, 6]
    assert s.resolve("mlp@4").parents == ["mlp@2"]  # re-parented across the gap
    freed = s.gc()
    assert freed["manifests_removed"] == 1
    for i, ck in enumerate(series):
        if i == 2:
            continue
        got = s.load(infos[i].ref)
        assert all(got[k].tobytes() == v.tobytes() for k, v in ck.items())
    rep = s.fsck()
    assert rep["ok"] and rep["unreferenced_chunks"] == 0
    s.close()


def _records(s, ref):
    return [(e.encoding, e.stored_len, e.base, e.depth)
            for e in (s.index.get(c) for c in s.manifest(ref).chunk_ids())]


def test_base_cache_writes_the_same_records_without_decoding_bases(tmp_path, monkeypatch):
    """Committing a series from one process deltas against cached raw chunks: the records
    are exactly those written when every base is decoded from the packs, and most bases
    come from the cache."""
    from modelstore import commit as commit_mod

    series = list(_train_mlp_series(9))
    stores = {}
    for label, mb in (("decoded", "0"), ("cached", "64")):
        monkeypatch.setenv("MODELSTORE_BASE_CACHE_MB", mb)
        s = Store.init(tmp_path / label, chunk_target_bytes=16 << 10, delta_depth=4)
        infos = [s.commit(ck, model="mlp") for ck in series]
        stores[label] = (s, infos)
    (dec, dinfos), (cac, cinfos) = stores["decoded"], stores["cached"]
    cache = commit_mod._caches.get(cac)
    assert commit_mod._caches.get(dec) is None
    assert cache is not None and cache.hits > 0 and cache.misses <= cache.hits // 10, (cache.hits, cache.misses)
    # versions no later one deltas against (0-based number odd) are not kept
    held = {g: any(cache.get(cid) is not None for cid in cac.manifest(info.ref).chunk_ids())
            for g, info in enumerate(cinfos)}
    assert held == {g: g % 2 == 0 for g in range(len(cinfos))}, held
    for d, c, ck in zip(dinfos, cinfos, series):
        assert _records(dec, d.ref) == _records(cac, c.ref)
        got = cac.load(c.ref)
        assert all(got[k].tobytes() == v.tobytes() for k, v in ck.items())
    assert cac.fsck()["ok"]
    dec.close()
    cac.close()


def test_base_cache_is_bounded_and_skips_models_larger_than_it(tmp_path, monkeypatch):
    from modelstore.commit import BaseCache, base_cache

    cache = BaseCache(1000)
    for i in range(50):
        cache.put(bytes([i]) * 16, bytes(200))
        assert cache.used <= 1000
    assert cache.get(bytes([49]) * 16) == bytes(200) and cache.get(bytes([0]) * 16) is None
    cache.put(b"x" * 16, bytes(400))  # over a quarter of the budget: not kept
    assert cache.get(b"x" * 16) is None
    monkeypatch.setenv("MODELSTORE_BASE_CACHE_MB", "1")
    s = Store.init(tmp_path / "s")
    assert base_cache(s, 2 << 20) is None  # a version would not fit: no cache at all
    assert base_cache(s, 512 << 10) is base_cache(s, 100)  # one cache per store
    s.close()


def test_reused_read_buffers_return_independent_chunks(tmp_path):
    """Records are read into per-thread buffers: chunks handed out (raw or decoded) must
    not change when later chunks are read."""
    from modelstore.checkout import read_chunk

    s = Store.init(tmp_path / "s", chunk_target_bytes=4 << 10, delta_depth=2)
    rng = np.random.default_rng(4)
    ints = rng.integers(0, 256, 24_000, dtype=np.uint8)  # incompressible: raw records
    x = (rng.standard_normal(6000) * 0.05).astype(np.float32)
    s.commit({"i": ints, "w": x}, model="m")
    v2 = s.commit({"i": ints, "w": (x * np.float32(1.001))}, model="m")
    ids = s.manifest(v2.ref).chunk_ids()
    assert {s.index.get(c).encoding for c in ids} >= {codecs.RAW, codecs.XOR_PLANES}
    got = [read_chunk(s, c) for c in ids]
    from modelstore import hashing

    assert [hashing.digest(g) for g in got] == list(ids)
    s.close()
