"""Graphs: normalization, the graph-aware diff (names exactly the changes), graph storage
(content-addressed, verified, kept and swept by gc) and `modelstore diff --graph`."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from conftest import assert_one_line_error, run_cli
from onnx import TensorProto, helper, numpy_helper
from test_hwfigures import _onnx_reader_wired

from modelstore import graph as graphs
from modelstore import graph_diff, graph_store, hashing
from modelstore.errors import IntegrityError, InvalidInputError


def _w(name, shape, seed):
    return numpy_helper.from_array(np.random.default_rng(seed).standard_normal(shape).astype(np.float32), name)


def make_mlp(insert=False, activation="Relu", named=True, softmax_axis=-1, hidden=32):
    """fc1 -> act1 -> [mid -> act_mid] -> fc2 -> softmax; `insert` adds the bracketed layer."""
    nm = (lambda s: s) if named else (lambda s: None)
    nodes = [helper.make_node("Gemm", ["x", "fc1.weight", "fc1.bias"], ["h1"], name=nm("fc1"), transB=1),
             helper.make_node(activation, ["h1"], ["a1"], name=nm("act1"))]
    inits = [_w("fc1.weight", (hidden, 16), 1), _w("fc1.bias", (hidden,), 2), _w("fc2.weight", (4, hidden), 3),
             _w("fc2.bias", (4,), 4)]
    last = "a1"
    if insert:
        nodes += [helper.make_node("Gemm", ["a1", "mid.weight", "mid.bias"], ["hm"], name=nm("mid"), transB=1),
                  helper.make_node("Relu", ["hm"], ["am"], name=nm("act_mid"))]
        inits += [_w("mid.weight", (32, 32), 5), _w("mid.bias", (32,), 6)]
        last = "am"
    nodes += [helper.make_node("Gemm", [last, "fc2.weight", "fc2.bias"], ["logits"], name=nm("fc2"), transB=1),
              helper.make_node("Softmax", ["logits"], ["y"], name=nm("softmax"), axis=softmax_axis)]
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _names(nodes):
    return sorted((n["name"], n["op_type"]) for n in nodes)


def test_normalized_graph_has_shapes_and_a_stable_id():
    g = graphs.from_onnx(make_mlp())
    assert [n["op_type"] for n in g["nodes"]] == ["Gemm", "Relu", "Gemm", "Softmax"]
    assert g["inputs"] == [{"name": "x", "shape": ["N", 16], "dtype": "F32"}]
    assert g["initializers"]["fc1.weight"] == [32, 16]
    assert g["value_info"]["h1"]["shape"] == [1, 32]  # inferred for one sample
    assert g["nodes"][0]["attributes"] == {"transB": 1}
    assert graphs.graph_id(g) == graphs.graph_id(graphs.from_onnx(make_mlp()))
    assert graphs.graph_id(g) != graphs.graph_id(graphs.from_onnx(make_mlp(activation="Tanh")))
    assert json.loads(graphs.canonical_bytes(g)) == g


def test_reader_dict_and_proto_normalize_alike(tmp_path):
    """The ONNX reader's light dict (no value_info) gets its shapes from inference too."""
    path = tmp_path / "m.onnx"
    onnx.save(make_mlp(), str(path))
    if not _onnx_reader_wired(path):
        pytest.skip("the ONNX reader is not wired into formats.open_model yet")
    from modelstore.formats import open_model

    with open_model(path) as src:
        from_proto = graphs.of_source(src)
        from_dict = graphs.normalize(src.graph)
    for g in (from_proto, from_dict):
        assert g["value_info"]["logits"]["shape"] == [1, 4]
        assert [n["op_type"] for n in g["nodes"]] == ["Gemm", "Relu", "Gemm", "Softmax"]
    assert graph_diff.graph_diff(from_proto, from_dict)["identical"]


@pytest.mark.parametrize("named", [True, False])
def test_inserted_layer_and_changed_activation_are_exactly_the_changes(named):
    a = graphs.from_onnx(make_mlp(named=named))
    b = graphs.from_onnx(make_mlp(insert=True, activation="Sigmoid", named=named))
    d = graph_diff.graph_diff(a, b)
    if named:
        assert _names(d["added"]) == [("act_mid", "Relu"), ("mid", "Gemm")]
        assert [(c["name"], c["op_type_a"], c["op_type_b"], c["changes"]) for c in d["changed"]] == \
            [("act1", "Relu", "Sigmoid", ["op_type"])]
    else:  # unnamed nodes: matched through their wiring, labelled by op and output
        assert _names(d["added"]) == [("Gemm->hm", "Gemm"), ("Relu->am", "Relu")]
        assert [(c["name"], c["op_type_a"], c["op_type_b"]) for c in d["changed"]] == [("Sigmoid->a1", "Relu", "Sigmoid")]
    assert d["removed"] == [] and d["rewired"] == []
    assert d["unchanged"] == 3 and d["nodes_a"] == 4 and d["nodes_b"] == 6
    assert d["initializers"] == {"added": ["mid.bias", "mid.weight"], "removed": []}
    assert d["inputs"] == d["outputs"] == {"added": [], "removed": [], "renamed": [], "changed": []}
    back = graph_diff.graph_diff(b, a)  # the other way round: a removal, the same change
    assert _names(back["removed"]) == _names(d["added"]) and back["added"] == [] and len(back["changed"]) == 1


def test_torch_export_with_index_names(tmp_path):
    """torch names nodes by module index, so an insertion shifts every later name
    (A's /2/Gemm is B's /4/Gemm): still one insertion and one changed activation."""
    torch = pytest.importorskip("torch")
    import warnings

    nn = torch.nn
    a = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    b = nn.Sequential(nn.Linear(16, 32), nn.Sigmoid(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
    paths = []
    for i, m in enumerate((a, b)):
        paths.append(tmp_path / f"{i}.onnx")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(m.eval(), torch.zeros(1, 16), str(paths[-1]), dynamo=False)
    d = graph_diff.graph_diff(graphs.load_onnx_graph(paths[0]), graphs.load_onnx_graph(paths[1]))
    assert _names(d["added"]) == [("/2/Gemm", "Gemm"), ("/3/Relu", "Relu")]
    assert [(c["name_a"], c["name"], c["changes"]) for c in d["changed"]] == [("/1/Relu", "/1/Sigmoid", ["op_type"])]
    assert d["removed"] == d["rewired"] == []
    assert d["outputs"]["added"] == d["outputs"]["removed"] == [] and len(d["outputs"]["renamed"]) == 1


def test_attribute_change_and_rewired_edge():
    a = graphs.from_onnx(make_mlp())
    b = graphs.from_onnx(make_mlp(softmax_axis=1))
    d = graph_diff.graph_diff(a, b)
    assert [(c["name"], c["changes"], c["attributes"]) for c in d["changed"]] == \
        [("softmax", ["attributes"], {"axis": [-1, 1]})]
    assert d["added"] == d["removed"] == d["rewired"] == []
    # fc2 now reads the pre-activation h1 instead of a1: one edge rewired, no node changed.
    m = make_mlp()
    m.graph.node[2].input[0] = "h1"
    d = graph_diff.graph_diff(a, graphs.from_onnx(m))
    assert d["rewired"] == [{"node": "fc2", "input": 0, "from": "act1", "to": "fc1"}]
    assert d["changed"] == d["added"] == d["removed"] == []
    assert graph_diff.graph_diff(a, a)["identical"]


def test_wider_layer_is_a_weight_shape_change():
    d = graph_diff.graph_diff(graphs.from_onnx(make_mlp()), graphs.from_onnx(make_mlp(hidden=64)))
    assert [(c["name"], c["changes"], c["weight_shapes"]) for c in d["changed"]] == [
        ("fc1", ["weight_shapes"], {"1": [[32, 16], [64, 16]], "2": [[32], [64]]}),
        ("fc2", ["weight_shapes"], {"1": [[4, 32], [4, 64]]}),
    ]
    assert d["added"] == d["removed"] == d["rewired"] == []


def test_bad_graph_input_is_one_clear_error():
    with pytest.raises(InvalidInputError, match="malformed graph"):
        graphs.normalize({"nodes": [{"inputs": []}]})
    with pytest.raises(InvalidInputError, match="not supported"):
        graphs.normalize({"format": 99})
    with pytest.raises(InvalidInputError, match="not a serialized ONNX"):
        graphs.normalize(b"\xff\xfe not protobuf")


def test_graph_blobs_are_verified_kept_and_swept(store, tmp_path):
    g = graphs.from_onnx(make_mlp())
    gid = graph_store.put(store, g, proto=b"proto-bytes")
    assert graph_store.put(store, g, proto=b"proto-bytes") == gid  # idempotent
    assert graph_store.get(store, gid) == {**g, "onnx_proto": hashing.hexdigest(b"proto-bytes")}
    assert graph_store.onnx_proto(store, gid) == b"proto-bytes"
    # Nothing names it: gc removes the graph and its proto (a crash between blob and catalog row).
    assert store.gc()["graphs_removed"] == 1
    assert list(graph_store.graphs_dir(store).iterdir()) == []
    # Corruption is detected, not returned.
    gid = graph_store.put(store, g)
    p = graph_store.blob_path(store, gid)
    import zlib

    p.write_bytes(zlib.compress(graphs.canonical_bytes({**g, "nodes": []})))
    with pytest.raises(IntegrityError):
        graph_store.get(store, gid)


def test_committed_graph_is_stored_diffed_and_kept_by_gc(store, tmp_path):
    pa, pb = tmp_path / "a.onnx", tmp_path / "b.onnx"
    onnx.save(make_mlp(), str(pa))
    onnx.save(make_mlp(insert=True, activation="Sigmoid"), str(pb))
    if not _onnx_reader_wired(pa):
        pytest.skip("the ONNX reader is not wired into formats.open_model yet")
    va = store.commit(pa, model="mlp")
    vb = store.commit(pb, model="mlp")
    gid = vb.meta["graph"]
    assert graph_store.of_version(store, vb)["nodes"][2]["name"] == "mid"
    proto = graph_store.onnx_proto_of_version(store, va)
    assert onnx.load_model_from_string(proto).graph.node[1].op_type == "Relu"
    d = store.diff("mlp@1", "mlp@2")
    assert _names(d.graph["added"]) == [("act_mid", "Relu"), ("mid", "Gemm")]
    assert d.graph["figures"]["b"]["flops"] > d.graph["figures"]["a"]["flops"]
    # A stored version against a file: the same graph section.
    d2 = store.diff("mlp@1", str(pb))
    assert d2.graph["changed"] == d.graph["changed"]
    assert d.to_dict()["graph"] == d.graph  # the JSON of the CLI and of GET /api/diff
    assert store.gc()["graphs_removed"] == 0
    assert store.fsck()["ok"]
    assert graph_store.check(store) == []
    blob = graph_store.blob_path(store, gid)
    saved = blob.read_bytes()
    blob.unlink()
    problems = store.fsck()["problems"]
    assert len(problems) == 1 and "graph" in problems[0] and "mlp@2" in problems[0], problems
    blob.write_bytes(saved)
    store.delete("mlp@2")
    assert store.gc()["graphs_removed"] == 1
    assert not graph_store.blob_path(store, gid).exists()
    assert graph_store.of_version(store, va) is not None
    with pytest.raises(InvalidInputError, match="graph"):
        store.commit(pa, model="mlp", meta={"graph": "x"})


def test_cli_diff_graph_json(tmp_path):
    pa, pb = tmp_path / "a.onnx", tmp_path / "b.onnx"
    onnx.save(make_mlp(), str(pa))
    onnx.save(make_mlp(insert=True, activation="Sigmoid"), str(pb))
    if not _onnx_reader_wired(pa):
        pytest.skip("the ONNX reader is not wired into formats.open_model yet")
    proc = run_cli("diff", "--graph", pa, pb, "--json", check=0)
    doc = json.loads(proc.stdout)
    g = doc["graph"]
    assert _names(g["added"]) == [("act_mid", "Relu"), ("mid", "Gemm")]
    assert [c["name"] for c in g["changed"]] == ["act1"] and g["removed"] == [] and g["rewired"] == []
    assert g["figures"]["a"]["flops"] == 32 * 16 + 32 + 32 + 4 * 32 + 4 + 3 * 4
    assert {t["name"] for t in doc["tensors"] if t["status"] == "added"} == {"mid.weight", "mid.bias"}
    human = run_cli("diff", "--graph", pa, pb, check=0).stdout
    assert "act1" in human and "Relu -> Sigmoid" in human and "2 added" in human
    # --graph on a side without a graph: one clear line, exit 1.
    from safetensors.numpy import save_file

    st = tmp_path / "w.safetensors"
    save_file({"w": np.zeros(3, np.float32)}, str(st))
    assert_one_line_error(run_cli("diff", "--graph", pa, st), code=1, contains="carries no graph")
    assert os.path.exists(pa)


def test_failed_commit_leaves_only_an_unreferenced_graph_that_gc_removes(store, tmp_path, monkeypatch):
    """The graph blob is written before the catalog row: a commit that fails after it (here the
    index transaction failing, standing in for a crash) leaves no version, only a blob gc sweeps."""
    pa = tmp_path / "a.onnx"
    onnx.save(make_mlp(), str(pa))
    if not _onnx_reader_wired(pa):
        pytest.skip("the ONNX reader is not wired into formats.open_model yet")
    with monkeypatch.context() as m:
        m.setattr(store.index, "commit_version", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
        with pytest.raises(OSError):
            store.commit(pa, model="mlp")
    assert store.log() == [] and len(list(graph_store.graphs_dir(store).glob("*.json.z"))) == 1
    assert store.gc()["graphs_removed"] == 1
    # User metadata wins over a derived figure; a later `graph` attribute that is no id is harmless.
    v = store.commit(pa, model="mlp", meta={"flops": 123, "ops_per_cycle": 8})
    assert v.meta["flops"] == 123 and v.meta["ops_per_cycle"] == 8
    assert v.meta["cpu_ghz_min"] == pytest.approx(720 / (8 * 1e9))  # the derived one with the user's ops/cycle
    w = store.commit({"w": np.ones(3, np.float32)}, model="plain")
    store.set_meta(w.ref, {"graph": "resnet-like"})
    assert graph_store.of_version(store, store.resolve(w.ref)) is None
    assert store.gc()["graphs_removed"] == 0 and graph_store.check(store) == []


def test_checkout_as_onnx_writes_the_stored_graph_back(store, tmp_path):
    src = tmp_path / "a.onnx"
    onnx.save(make_mlp(), str(src))
    if not _onnx_reader_wired(src):
        pytest.skip("the ONNX reader is not wired into formats.open_model yet")
    store.commit(src, model="mlp")
    out = store.checkout("mlp@1", tmp_path / "back.onnx")
    onnx.checker.check_model(str(out))
    a, b = onnx.load(str(src)), onnx.load(str(out))
    weights = lambda m: {t.name: numpy_helper.to_array(t).tobytes() for t in m.graph.initializer}  # noqa: E731
    assert weights(a) == weights(b) and len(weights(a)) > 0
    assert [(n.op_type, list(n.input)) for n in a.graph.node] == [(n.op_type, list(n.input)) for n in b.graph.node]
    # A version without a graph cannot become an .onnx file: one clear error, no file.
    store.commit({"w": np.ones((2, 2), np.float32)}, model="plain")
    with pytest.raises(InvalidInputError, match="graph"):
        store.checkout("plain@1", tmp_path / "plain.onnx")
    assert not (tmp_path / "plain.onnx").exists()
