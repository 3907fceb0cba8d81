"""modelstore diff: structure classification, block alignment, chunk-skip weight deltas.

Everything runs on real files (safetensors written to tmp_path) and real stores.
"""

from __future__ import annotations

import json
import math
import os
import textwrap

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import save_file

from modelstore import diff as D
from modelstore.diff import FileSide, diff, diff_files, diff_sides
from modelstore.errors import InvalidInputError, NotFoundError
from modelstore.store import Store

from conftest import assert_one_line_error, run_cli, run_python

BF16 = ml_dtypes.bfloat16
REQUIRED_TENSOR_KEYS = {"name", "status", "shape_a", "shape_b", "dtype_a", "dtype_b", "l2_delta", "rel_l2", "cosine",
                        "max_abs", "mean_abs", "frac_changed", "frac_chunks_changed", "renamed_from"}
REQUIRED_SUMMARY_KEYS = {"identical", "modified", "added", "removed", "reshaped", "retyped", "renamed", "rel_l2"}
NUMERIC = ("l2_delta", "rel_l2", "cosine", "max_abs", "mean_abs", "frac_changed", "frac_chunks_changed")


def save(path, arrays) -> str:
    save_file({k: v if v.flags.c_contiguous else v.copy(order="C") for k, v in arrays.items()}, str(path))
    return str(path)


def w(rng, *shape, dtype=np.float32, scale=0.02):
    return (rng.standard_normal(shape, dtype=np.float32) * scale).astype(dtype)


def blocks_model(rng, n=12, d=32, prefix="encoder.layer", dtype=np.float32):
    sd = {"embeddings.word_embeddings.weight": w(rng, 200, d, dtype=dtype)}
    for i in range(n):
        sd.update(block(rng, f"{prefix}.{i}", d, dtype))
    sd["pooler.dense.weight"] = w(rng, d, d, dtype=dtype)
    return sd


def block(rng, p, d=32, dtype=np.float32):
    return {f"{p}.attention.self.query.weight": w(rng, d, d, dtype=dtype),
            f"{p}.attention.self.key.weight": w(rng, d, d, dtype=dtype),
            f"{p}.attention.self.query.bias": w(rng, d, dtype=dtype),
            f"{p}.output.dense.weight": w(rng, 4 * d, d, dtype=dtype)}


def status_of(d, name):
    return d.tensor(name).status


# ----------------------------------------------------------------------------- classification


def _status_pair(rng):
    a = {
        "same.weight": w(rng, 40, 8),
        "changed.weight": w(rng, 40, 8),
        "gone.weight": w(rng, 5, 5),
        "grown.weight": w(rng, 10, 4),
        "cast.weight": w(rng, 6, 6),
        "old_name.weight": w(rng, 12, 3),
    }
    b = dict(a)
    b["changed.weight"] = a["changed.weight"].copy()
    b["changed.weight"][3, 2] += 0.5
    del b["gone.weight"]
    b["new.weight"] = w(rng, 7, 7)
    b["grown.weight"] = w(rng, 12, 4)
    b["cast.weight"] = a["cast.weight"].astype(np.float16)
    b["new_name.weight"] = b.pop("old_name.weight")
    return a, b


def _check_statuses(d):
    assert status_of(d, "same.weight") == "identical"
    assert status_of(d, "changed.weight") == "modified"
    assert status_of(d, "gone.weight") == "removed"
    assert status_of(d, "new.weight") == "added"
    assert status_of(d, "grown.weight") == "reshaped"
    assert status_of(d, "cast.weight") == "retyped"
    t = d.tensor("new_name.weight")
    assert t.status == "renamed" and t.renamed_from == "old_name.weight"
    c = d.counts
    assert c == {"identical": 1, "modified": 1, "added": 1, "removed": 1, "reshaped": 1, "retyped": 1, "renamed": 1}
    g = d.tensor("grown.weight").to_dict()
    assert g["shape_a"] == [10, 4] and g["shape_b"] == [12, 4] and g["l2_delta"] is None
    r = d.tensor("cast.weight").to_dict()
    assert r["dtype_a"] == "F32" and r["dtype_b"] == "F16" and r["rel_l2"] is None
    m = d.tensor("changed.weight").to_dict()
    assert m["frac_changed"] == pytest.approx(1 / 320) and m["max_abs"] == pytest.approx(0.5)


def test_statuses_files(tmp_path, rng):
    a, b = _status_pair(rng)
    d = diff_files(save(tmp_path / "a.safetensors", a), save(tmp_path / "b.safetensors", b))
    _check_statuses(d)
    assert d.a.endswith("a.safetensors") and d.a_kind == "file"


def test_statuses_versions(store, rng):
    a, b = _status_pair(rng)
    store.commit(a, model="m")
    store.commit(b, model="m")
    d = diff("m@1", "m@2", store=store)
    _check_statuses(d)
    assert (d.a, d.b, d.a_kind) == ("m@1", "m@2", "version")


def test_renamed_is_found_by_chunk_ids_without_reading_weights(store, rng, monkeypatch):
    a = {"encoder.old.weight": w(rng, 300, 64), "other": w(rng, 10)}
    b = {"encoder.new.weight": a["encoder.old.weight"], "other": a["other"]}
    store.commit(a, model="m")
    store.commit(b, model="m")
    import modelstore.checkout as co

    calls = []
    real = co.read_chunk
    monkeypatch.setattr(co, "read_chunk", lambda s, cid, *x, **k: calls.append(cid) or real(s, cid, *x, **k))
    d = diff("m@1", "m@2", store=store)
    t = d.tensor("encoder.new.weight")
    assert t.status == "renamed" and t.renamed_from == "encoder.old.weight"
    assert t.to_dict()["rel_l2"] == 0.0 and t.to_dict()["cosine"] == 1.0
    assert calls == []  # nothing decoded: ids and stored Σx² were enough
    assert d.counts["added"] == 0 and d.counts["removed"] == 0


def test_copy_under_new_name_is_added(tmp_path, rng):
    a = {"x": w(rng, 20, 4)}
    b = {"x": a["x"], "y": a["x"]}
    d = diff_files(save(tmp_path / "a.safetensors", a), save(tmp_path / "b.safetensors", b))
    assert status_of(d, "x") == "identical" and status_of(d, "y") == "added"


# ----------------------------------------------------------------------------- alignment


def _insert_block(sd, at, new_block, prefix="encoder.layer", n=12):
    out = {k: v for k, v in sd.items() if not k.startswith(prefix + ".")}
    for i in range(n + 1):
        if i < at:
            src = i
        elif i == at:
            for k, v in new_block.items():
                out[f"{prefix}.{i}.{k}"] = v
            continue
        else:
            src = i - 1
        for k, v in sd.items():
            if k.startswith(f"{prefix}.{src}."):
                out[f"{prefix}.{i}." + k[len(f"{prefix}.{src}."):]] = v
    return out


def test_layer_insertion_is_one_added_block(store, rng):
    a = blocks_model(rng)
    new = {k.split(".", 3)[3]: v for k, v in block(rng, "encoder.layer.x").items()}
    b = _insert_block(a, 4, new)
    store.commit(a, model="bert")
    store.commit(b, model="bert")
    d = store_diff(store, "bert@1", "bert@2")
    c = d.counts
    assert c["modified"] == 0 and c["removed"] == 0 and c["added"] == 4, c
    assert c["identical"] == len(a)
    assert [g.name for g in d.layers if g.status == "added"] == ["encoder.layer.4"]
    assert d.layer("encoder.layer.5").matched_to == "encoder.layer.4"
    assert d.layer("encoder.layer.12").matched_to == "encoder.layer.11"
    assert d.layer("encoder.layer.3").matched_to is None
    t = d.tensor("encoder.layer.5.output.dense.weight")
    assert t.status == "identical" and t.matched_to == "encoder.layer.4.output.dense.weight"
    doc = d.to_dict()
    assert doc["summary"]["layers_added"] == ["encoder.layer.4"]
    assert {"matched_to"} <= set(doc["layers"][0]) and doc["summary"]["rel_l2"] == 0.0
    # Without alignment the same pair is 32 spurious modifications.
    plain = diff("bert@1", "bert@2", store=store, align=False)
    assert plain.counts["modified"] == 32


def store_diff(store, a, b, **kw):
    return diff(a, b, store=store, **kw)


def test_layer_removal_and_partial_finetune_alignment(tmp_path, rng):
    a = blocks_model(rng)
    b = {}
    for k, v in a.items():  # fine-tune: every query weight changes, the rest is frozen
        b[k] = v + np.float32(1e-3) if k.endswith("query.weight") else v
    # remove block 7: blocks 8..11 become 7..10
    b2 = {k: v for k, v in b.items() if not k.startswith("encoder.layer.")}
    for k, v in b.items():
        if k.startswith("encoder.layer."):
            i = int(k.split(".")[2])
            if i == 7:
                continue
            j = i - 1 if i > 7 else i
            b2[k.replace(f"encoder.layer.{i}.", f"encoder.layer.{j}.", 1)] = v
    d = diff_files(save(tmp_path / "a.safetensors", a), save(tmp_path / "b.safetensors", b2))
    assert [g.name for g in d.layers if g.status == "removed"] == ["encoder.layer.7"]
    assert d.counts["removed"] == 4 and d.counts["added"] == 0
    assert d.counts["modified"] == 11  # the 11 remaining fine-tuned query weights, nothing spurious
    assert d.layer("encoder.layer.7").matched_to == "encoder.layer.8"
    assert d.tensor("encoder.layer.7.attention.self.key.weight", status="identical").matched_to == \
        "encoder.layer.8.attention.self.key.weight"


def test_ambiguous_alignment_pairs_by_index(tmp_path, rng):
    """No content evidence (every block changed): blocks pair by index, extra block last."""
    a = blocks_model(rng, n=6)
    b = {k: v + np.float32(1e-3) for k, v in a.items()}
    b.update(block(rng, "encoder.layer.6"))
    d = diff_files(save(tmp_path / "a.safetensors", a), save(tmp_path / "b.safetensors", b))
    assert [g.name for g in d.layers if g.status == "added"] == ["encoder.layer.6"]
    assert all(g.matched_to is None for g in d.layers)


# ----------------------------------------------------------------------------- weights


def _numbers(d):
    out = {}
    for t in d.tensors:
        out[(t.name, t.status)] = {k: t.to_dict()[k] for k in NUMERIC}
    for g in d.layers:
        out[("layer", g.name)] = {k: g.to_dict()[k] for k in NUMERIC}
    out["summary"] = {k: d.to_dict()["summary"][k] for k in NUMERIC}
    return out


def _assert_close(x, y, rel=1e-9):
    assert x.keys() == y.keys()
    for k in x:
        for f in x[k]:
            u, v = x[k][f], y[k][f]
            if u is None or v is None:
                assert u == v, (k, f, u, v)
            else:
                assert math.isclose(u, v, rel_tol=rel, abs_tol=1e-300), (k, f, u, v)


def _finetune_pair(rng, dtype=np.float32):
    a = blocks_model(rng, n=6, d=64, dtype=dtype)
    a["big"] = w(rng, 3000, 256, dtype=dtype)  # several chunks at a 256 KiB target
    a["nonfinite"] = np.array([1.0, np.nan, -np.inf, 2.0] * 50, dtype=dtype)
    b = dict(a)
    big = a["big"].astype(np.float32)
    big[1000:1010] += 0.25
    b["big"] = big.astype(dtype)
    for k in list(b):
        if k.startswith("encoder.layer.2."):
            b[k] = (a[k].astype(np.float32) * 1.01).astype(dtype)
    return a, b


@pytest.mark.parametrize("dtype", [np.float32, BF16])
def test_skip_shortcut_equals_full_computation_versions(tmp_path, rng, dtype):
    s = Store.init(tmp_path / "st", chunk_target_bytes=256 << 10)
    try:
        a, b = _finetune_pair(rng, dtype)
        s.commit(a, model="m")
        s.commit(b, model="m")
        fast = diff("m@1", "m@2", store=s)
        full = diff("m@1", "m@2", store=s, skip_shared=False)
        _assert_close(_numbers(fast), _numbers(full))
        assert fast.io["chunks_skipped"] > 0 and fast.io["chunks_compared"] < full.io["chunks_compared"]
        assert full.io["chunks_skipped"] == 0
        big = fast.tensor("big")
        assert big.status == "modified" and 0 < big.to_dict()["frac_chunks_changed"] < 0.5
        assert big.chunks_read == 1  # only the differing chunk pair was decoded
        assert fast.tensor("nonfinite").status == "identical"
    finally:
        s.close()


def test_skip_shortcut_equals_full_computation_files(tmp_path, rng):
    a, b = _finetune_pair(rng)
    pa, pb = save(tmp_path / "a.safetensors", a), save(tmp_path / "b.safetensors", b)
    fast = diff_files(pa, pb, chunk_target=256 << 10)
    full = diff_files(pa, pb, chunk_target=256 << 10, skip_shared=False)
    _assert_close(_numbers(fast), _numbers(full))
    assert fast.io["chunks_skipped"] > 0


def test_versions_in_delta_chains_match_file_diffs(tmp_path, rng, monkeypatch):
    """v2 and v3 are stored as XOR deltas on their parents: a pair is rebuilt from the
    ancestor's bytes (decoded once) and must give exactly the numbers of the plain files."""
    s = Store.init(tmp_path / "st", chunk_target_bytes=64 << 10)
    try:
        v1 = {"w": w(rng, 3000, 64), "b": w(rng, 64)}
        v2 = {"w": v1["w"] * np.float32(1.001), "b": v1["b"]}
        v3 = {"w": v2["w"] + w(rng, 3000, 64, scale=1e-4), "b": v1["b"] + 1}
        versions = (v1, v2, v3)
        for v in versions:
            s.commit(v, model="m")
        import modelstore.checkout as co

        reads = []
        real = co.read_chunk
        monkeypatch.setattr(co, "read_chunk", lambda st, cid, *a, **k: reads.append(cid) or real(st, cid, *a, **k))
        for i, j in ((1, 3), (3, 1), (2, 3), (1, 2)):
            reads.clear()
            stored = diff(f"m@{i}", f"m@{j}", store=s)
            files = diff_files(versions[i - 1], versions[j - 1], chunk_target=64 << 10)
            _assert_close(_numbers(stored), _numbers(files))
            n = len(s.manifest("m@1").by_name()["w"].chunks)
            assert stored.tensor("w").chunks_read == n
            # one read_chunk per chunk pair of w when one side's delta chain runs through the
            # other's chunk (the descendant is rebuilt from those bytes plus its XOR links),
            # else one per side
            ca, cb = (s.manifest(f"m@{k}").by_name()["w"].chunks for k in (i, j))
            lo, hi = (ca, cb) if i < j else (cb, ca)
            via = sum(x in {c for c, _ in co.delta_chain(s, y)} for x, y in zip(lo, hi))
            assert sum(c in set(ca) | set(cb) for c in reads) == 2 * n - via, (i, j, len(reads))
            if (i, j) in ((1, 3), (1, 2)):
                assert via == n  # the skip-delta ladder builds both on the first version
    finally:
        s.close()


def test_metrics_match_numpy_float64(tmp_path, rng):
    a = {"x": w(rng, 513, 77, dtype=BF16), "y": w(rng, 1000, dtype=np.float32), "z": w(rng, 3, 5, 7, dtype=np.float16)}
    b = {"x": (a["x"].astype(np.float32) + w(rng, 513, 77, scale=1e-3)).astype(BF16),
         "y": a["y"].copy(), "z": a["z"] * np.float16(-1)}
    b["y"][::7] = 0
    d = diff_files(save(tmp_path / "a.safetensors", a), save(tmp_path / "b.safetensors", b), chunk_target=8 << 10)
    tot_d2 = tot_a2 = 0.0
    for k in a:
        x, y = a[k].astype(np.float64).ravel(), b[k].astype(np.float64).ravel()
        dd = x - y
        t = d.tensor(k).to_dict()
        assert t["status"] == "modified"
        assert t["l2_delta"] == pytest.approx(np.sqrt(dd @ dd), rel=1e-12)
        assert t["rel_l2"] == pytest.approx(np.sqrt(dd @ dd) / np.sqrt(x @ x), rel=1e-12)
        assert t["cosine"] == pytest.approx(x @ y / np.sqrt((x @ x) * (y @ y)), rel=1e-12)
        assert t["max_abs"] == pytest.approx(np.abs(dd).max(), rel=1e-12)
        assert t["mean_abs"] == pytest.approx(np.abs(dd).mean(), rel=1e-12)
        assert t["frac_changed"] == pytest.approx(np.count_nonzero(x != y) / x.size)
        tot_d2 += dd @ dd
        tot_a2 += x @ x
    assert d.rel_l2 == pytest.approx(math.sqrt(tot_d2 / tot_a2), rel=1e-12)
    assert d.tensor("z").to_dict()["cosine"] == pytest.approx(-1.0)


def test_chunk_rows_mismatch_uses_aligned_ranges(tmp_path, rng):
    a, b = _finetune_pair(rng)
    pa, pb = save(tmp_path / "a.safetensors", a), save(tmp_path / "b.safetensors", b)
    ref = diff_files(pa, pb, chunk_target=256 << 10, skip_shared=False)
    with FileSide(pa, 256 << 10) as sa, FileSide(pb, 100_000) as sb:
        assert sa.tensors["big"].chunk_rows != sb.tensors["big"].chunk_rows
        mixed = diff_sides(sa, sb)
    for t in ref.tensors:
        u, v = t.to_dict(), mixed.tensor(t.name, status=t.status).to_dict()
        assert u["status"] == v["status"]
        for f in ("l2_delta", "rel_l2", "cosine", "max_abs", "mean_abs", "frac_changed"):
            if u[f] is None:
                assert v[f] is None
            else:
                assert math.isclose(u[f], v[f], rel_tol=1e-9, abs_tol=1e-300), (t.name, f)
    assert mixed.tensor("big").to_dict()["frac_chunks_changed"] > 0
    assert mixed.summary()["rel_l2"] == pytest.approx(ref.summary()["rel_l2"], rel=1e-9)


def test_tolerance_counts_noise_as_unchanged(tmp_path, rng):
    x = w(rng, 400, 10, scale=1.0)
    noisy = x + np.float32(1e-7) * np.sign(x)
    big = x.copy()
    big[0, :3] += 0.1
    a = {"noise": x, "real": x}
    b = {"noise": noisy, "real": big}
    pa, pb = save(tmp_path / "a.safetensors", a), save(tmp_path / "b.safetensors", b)
    exact = diff_files(pa, pb)
    assert status_of(exact, "noise") == "modified" and exact.tensor("noise").to_dict()["frac_changed"] > 0.9
    tol = diff_files(pa, pb, atol=1e-6)
    assert status_of(tol, "noise") == "identical"
    assert tol.tensor("noise").to_dict()["frac_changed"] == 0 and tol.tensor("noise").exact is False
    assert tol.tensor("noise").to_dict()["l2_delta"] > 0  # the norms still see the noise
    assert status_of(tol, "real") == "modified"
    assert tol.tensor("real").to_dict()["frac_changed"] == pytest.approx(3 / 4000)
    pc = save(tmp_path / "c.safetensors", {"noise": x * np.float32(1 + 2e-6), "real": big})  # relative noise
    assert status_of(diff_files(pa, pc), "noise") == "modified"
    rt = diff_files(pa, pc, rtol=1e-5)
    assert status_of(rt, "noise") == "identical" and status_of(rt, "real") == "modified"
    with pytest.raises(InvalidInputError):
        diff_files(pa, pb, atol=-1)


def test_nan_inf_and_edge_shapes_give_valid_json(tmp_path, rng):
    a = {"nan": np.array([np.nan, 1.0, np.inf, 3.0], np.float32),
         "scalar": np.array(2.0, np.float32),
         "empty": np.zeros((0, 5), np.float32),
         "zeros": np.zeros(8, np.float32),
         "zero_vs_x": np.zeros(8, np.float32),
         "huge": np.array([3e38, -3e38], np.float32)}
    b = {"nan": np.array([np.nan, 1.5, -np.inf, 3.0], np.float32),
         "scalar": np.array(2.5, np.float32),
         "empty": np.zeros((0, 5), np.float32),
         "zeros": np.zeros(8, np.float32),
         "zero_vs_x": np.ones(8, np.float32),
         "huge": np.array([-3e38, 3e38], np.float32)}
    d = diff_files(save(tmp_path / "a.safetensors", a), save(tmp_path / "b.safetensors", b))
    text = json.dumps(d.to_dict(), allow_nan=False)  # raises on NaN/Inf
    doc = json.loads(text)
    t = {x["name"]: x for x in doc["tensors"]}
    assert t["nan"]["status"] == "modified" and t["nan"]["n_nonfinite"] == 2
    assert t["nan"]["max_abs"] == 0.5 and t["nan"]["frac_changed"] == 0.5  # the Inf flip + 1.0 -> 1.5
    assert t["scalar"]["status"] == "modified" and t["scalar"]["shape_a"] == []
    assert t["scalar"]["rel_l2"] == pytest.approx(0.25)
    assert t["empty"]["status"] == "identical" and t["empty"]["frac_changed"] == 0 and t["empty"]["mean_abs"] is None
    assert t["zeros"]["cosine"] == 1.0 and t["zeros"]["rel_l2"] == 0.0
    assert t["zero_vs_x"]["cosine"] is None and t["zero_vs_x"]["rel_l2"] is None
    assert t["huge"]["status"] == "modified" and t["huge"]["rel_l2"] == pytest.approx(2.0)  # Δ = 6e38 > f32 max
    assert doc["summary"]["rel_l2"] is None or math.isfinite(doc["summary"]["rel_l2"])


def test_files_need_no_store(tmp_path, rng, monkeypatch):
    a, b = _status_pair(rng)
    pa, pb = save(tmp_path / "a.safetensors", a), save(tmp_path / "b.safetensors", b)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MODELSTORE_DIR", raising=False)
    assert D.needs_store(pa, pb) is False
    _check_statuses(diff_files(pa, pb))


def test_version_vs_file_skips_shared_chunks(tmp_path, rng):
    s = Store.init(tmp_path / "st", chunk_target_bytes=256 << 10)
    try:
        a, b = _finetune_pair(rng)
        s.commit(a, model="m")
        s.commit(b, model="m")
        pb = save(tmp_path / "b.safetensors", b)
        vv = diff("m@1", "m@2", store=s)
        vf = diff("m@1", pb, store=s)
        fv = diff(save(tmp_path / "a.safetensors", a), "m@2", store=s)
        _assert_close(_numbers(vv), _numbers(vf))
        _assert_close(_numbers(vv), _numbers(fv))
        assert vf.io["chunks_compared"] == vv.io["chunks_compared"] < vf.io["chunks_total"] / 2
        assert vf.io["stats_chunks"] == 0  # Σx² of shared chunks came from the manifest
        assert (vf.a_kind, vf.b_kind) == ("version", "file")
    finally:
        s.close()


def test_json_document_has_the_documented_keys(tmp_path, rng):
    a, b = _status_pair(rng)
    doc = diff_files(save(tmp_path / "a.safetensors", a), save(tmp_path / "b.safetensors", b)).to_dict()
    assert {"a", "b", "summary", "tensors", "layers"} <= set(doc)
    assert REQUIRED_SUMMARY_KEYS <= set(doc["summary"])
    assert len(doc["tensors"]) == 7
    for t in doc["tensors"]:
        assert REQUIRED_TENSOR_KEYS <= set(t), REQUIRED_TENSOR_KEYS - set(t)
        assert t["status"] in D.STATUSES
    for g in doc["layers"]:
        assert {"name", "status", "matched_to", "rel_l2", "l2_delta", "cosine", "frac_changed"} <= set(g)
    json.dumps(doc, allow_nan=False)
    assert "rank" not in doc["tensors"][0]  # low-rank check is off by default


def test_layers_and_whole_model_aggregate_members(tmp_path, rng):
    a, b = _finetune_pair(rng)
    d = diff_files(save(tmp_path / "a.safetensors", a), save(tmp_path / "b.safetensors", b))
    g = d.layer("encoder.layer.2")
    members = [t for t in d.tensors if t.block == "encoder.layer.2"]
    assert len(members) == 4 and g.status == "modified"
    d2 = math.fsum(t.sums.sum_d2 for t in members)
    a2 = math.fsum(t.sums.sum_a2 for t in members)
    assert g.to_dict()["rel_l2"] == pytest.approx(math.sqrt(d2 / a2), rel=1e-12)
    assert g.to_dict()["rel_l2"] == pytest.approx(0.01, rel=1e-3)
    assert d.layer("encoder.layer.1").status == "identical"
    assert d.layer("embeddings.word_embeddings").status == "identical"  # no index: grouped by module
    assert {m.name for m in d.modules} >= {"encoder.layer.2.attention.self.query", "encoder.layer.2.output.dense"}
    d2all = math.fsum(t.sums.sum_d2 for t in d.tensors if t.sums)
    a2all = math.fsum(t.sums.sum_a2 for t in d.tensors if t.sums)
    assert d.rel_l2 == pytest.approx(math.sqrt(d2all / a2all), rel=1e-12)
    assert "whole-model relative change" in d.summary_line() and "4 modified" not in d.summary_line()


def test_block_rule():
    assert D.block_of("encoder.layer.3.attention.self.query.weight") == "encoder.layer.3"
    assert D.module_of("encoder.layer.3.attention.self.query.weight") == "encoder.layer.3.attention.self.query"
    assert D.block_of("model.layers.10.mlp.experts.3.w1.weight") == "model.layers.10"
    assert D.block_of("lm_head.weight") == "lm_head"
    assert D.block_of("params.0") == "params"  # the trailing parameter name is stripped first
    assert D.block_of("bias") == ""


# ----------------------------------------------------------------------------- low rank


def test_rank_of_merged_lora_is_8(tmp_path, rng):
    m, n = 768, 512
    base = w(rng, m, n, dtype=BF16)
    lora = (rng.standard_normal((m, 8)) * 0.05) @ (rng.standard_normal((8, n)) * 0.05)
    a = {"q.weight": base, "full.weight": w(rng, 256, 300), "vec": w(rng, 64)}
    b = {"q.weight": (base.astype(np.float32) + lora.astype(np.float32)).astype(BF16),
         "full.weight": a["full.weight"] + w(rng, 256, 300, scale=1e-3), "vec": a["vec"] + 1}
    pa, pb = save(tmp_path / "a.safetensors", a), save(tmp_path / "b.safetensors", b)
    d = diff_files(pa, pb, rank=True)
    assert d.tensor("q.weight").rank == 8
    full = d.tensor("full.weight")
    assert full.rank is not None and full.rank >= 200
    assert d.tensor("vec").rank is None  # 1-D: not estimated
    doc = d.to_dict()
    assert {x["name"]: x.get("rank") for x in doc["tensors"]}["q.weight"] == 8
    skipped = diff_files(pa, pb, rank=True, rank_max_elems=1000).tensor("q.weight")
    assert skipped.rank is None and "skipped" in skipped.rank_note
    # Stored versions (Δ built from differing chunks only) and mismatched row blocks agree.
    s = Store.init(tmp_path / "st", chunk_target_bytes=64 << 10)
    try:
        s.commit(pa, model="m")
        s.commit(pb, model="m")
        assert diff("m@1", "m@2", store=s, rank=True).tensor("q.weight").rank == 8
    finally:
        s.close()
    with FileSide(pa, 64 << 10) as sa, FileSide(pb, 100_000) as sb:
        assert diff_sides(sa, sb, rank=True).tensor("q.weight").rank == 8


# ----------------------------------------------------------------------------- errors


def test_bad_inputs(tmp_path, store, rng):
    good = save(tmp_path / "a.safetensors", {"x": w(rng, 4)})
    text = tmp_path / "notes.txt"
    text.write_text("hello, not a model\n" * 10)
    with pytest.raises(InvalidInputError):
        diff_files(str(text), good)
    with pytest.raises(NotFoundError):
        diff_files(str(tmp_path / "missing.safetensors"), good)
    with pytest.raises(NotFoundError):
        diff("nosuchmodel@3", good, store=store)
    store.commit({"x": w(rng, 4)}, model="m")
    with pytest.raises(NotFoundError):
        diff("m@1", "m@9", store=store)
    with pytest.raises(NotFoundError):
        diff("m@1", "./missing.safetensors", store=store)
    # a safetensors file with a dtype modelstore does not support
    header = json.dumps({"c": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}}).encode()
    bad = tmp_path / "c64.safetensors"
    bad.write_bytes(len(header).to_bytes(8, "little") + header + bytes(8))
    with pytest.raises(InvalidInputError):
        diff_files(str(bad), good)


# ----------------------------------------------------------------------------- memory


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc")
def test_streaming_keeps_rss_bounded(tmp_path, no_release=False):
    """Two 192 MiB files, every chunk different: peak RSS grows by far less than the files."""
    n = 48 << 20  # float32 elements
    for name, seed in (("a", 1), ("b", 2)):
        x = np.random.default_rng(seed).standard_normal(n, dtype=np.float32).reshape(-1, 1024)
        save(tmp_path / f"{name}.safetensors", {"w": x})
        del x
    script = textwrap.dedent(f"""
        import numpy, modelstore.diff as D

        def hwm_mb():  # peak RSS of this process (ru_maxrss would include the forking parent's)
            with open("/proc/self/status") as f:
                return next(int(l.split()[1]) for l in f if l.startswith("VmHWM")) / 1024

        if {no_release!r}:
            D._release_pages = lambda view: None
        base = hwm_mb()
        d = D.diff_files({str(tmp_path / 'a.safetensors')!r}, {str(tmp_path / 'b.safetensors')!r})
        assert d.tensor("w").status == "modified"
        print(hwm_mb() - base)
    """)
    stdout = run_python(script)
    grew_mb = float(stdout.strip())
    assert grew_mb < 120, f"peak RSS grew by {grew_mb:.0f} MB for 2 x 192 MiB of input"


# ----------------------------------------------------------------------------- CLI (once wired)


def _cli_has_diff() -> bool:
    from modelstore import cli

    return any((c.name or getattr(c.callback, "__name__", "")) == "diff" for c in cli.app.registered_commands)


cli_wired = pytest.mark.skipif(not _cli_has_diff(), reason="`modelstore diff` is not wired into cli.py yet")


@cli_wired
def test_cli_files_json_and_table(tmp_path, rng):
    a, b = _status_pair(rng)
    pa, pb = save(tmp_path / "a.safetensors", a), save(tmp_path / "b.safetensors", b)
    env = {"MODELSTORE_DIR": str(tmp_path / "no-store-here")}
    p = run_cli("diff", pa, pb, "--json", cwd=tmp_path, env=env, check=0)
    doc = json.loads(p.stdout)  # exactly one JSON document
    assert doc["summary"]["renamed"] == 1 and REQUIRED_SUMMARY_KEYS <= set(doc["summary"])
    p = run_cli("diff", pa, pb, cwd=tmp_path, env=env, check=0)
    assert "1 identical, 1 modified, 1 added, 1 removed, 1 renamed" in p.stdout
    p = run_cli("diff", pa, pb, "--layers", "--atol", "1e-6", "--rtol", "1e-5", cwd=tmp_path, env=env, check=0)
    assert "whole-model relative change" in p.stdout


@cli_wired
def test_cli_versions_and_errors(tmp_path, rng):
    st = tmp_path / "st"
    run_cli("init", st, check=0)
    a, b = _status_pair(rng)
    pa, pb = save(tmp_path / "a.safetensors", a), save(tmp_path / "b.safetensors", b)
    run_cli("commit", pa, "--model", "m", store=st, check=0)
    run_cli("commit", pb, "--model", "m", store=st, check=0)
    doc = json.loads(run_cli("diff", "m@1", "m@2", "--json", store=st, check=0).stdout)
    assert doc["a"] == "m@1" and doc["summary"]["modified"] == 1
    doc = json.loads(run_cli("diff", "m@1", pb, "--json", store=st, check=0).stdout)
    assert doc["summary"]["modified"] == 1 and doc["b"].endswith("b.safetensors")
    assert_one_line_error(run_cli("diff", "m@1", "m@7", store=st), 1, "m@7")
    text = tmp_path / "x.txt"
    text.write_text("not a model")
    assert_one_line_error(run_cli("diff", str(text), pa, cwd=tmp_path), 1)
    assert_one_line_error(run_cli("diff", "missing.safetensors", pa, cwd=tmp_path), 1, "missing.safetensors")
