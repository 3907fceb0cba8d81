"""Checkpoint series: delta records against the parent, bounded chains, gc keeps bases."""

import math

import ml_dtypes
import numpy as np
import pytest

from modelstore import codecs
from modelstore.store import Store

K = 3
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
    from modelstore.dtypes import get

    dt = get(dtype)
    rng = np.random.default_rng(7)
    s = Store.init(tmp_path / "s", chunk_target_bytes=8 << 10, delta_depth=K)
    if dt.kind in "iu":
        x = rng.integers(0, 7, (400, 33)).astype(dt.numpy)
    else:
        x = (rng.standard_normal((400, 33), dtype=np.float32) * 0.05).astype(dt.numpy)
    versions = []
    depths = []
    for step in range(K + 3):  # chains of depth 0 .. K, then a fresh plain base, and on
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
        assert max(depths) >= 1, f"no delta records were chosen for {dtype}: {depths}"
    assert s.fsck()["ok"]
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
    ratios = {}
    for depth in (0, 8):
        s = Store.init(tmp_path / f"s{depth}", chunk_target_bytes=16 << 10, delta_depth=depth)
        raw = 0
        for ckpt in _train_mlp_series(20):
            raw += s.commit(ckpt, model="mlp").size
        ratios[depth] = s.stats()["stored_bytes"] / raw
        for v in s.log("mlp"):
            s.load(v.ref)
        assert s.fsck()["ok"]
        s.close()
    assert ratios[8] < 0.85 * ratios[0], ratios


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
