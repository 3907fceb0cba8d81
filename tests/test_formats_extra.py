"""ONNX, GGUF, Keras/HDF5 readers and writers, and safetensors metadata: bit-exact round trips
on models made here by the frameworks themselves, through a real Store, and hostile files."""

from __future__ import annotations

import json
import os
import struct
import sys
import warnings

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")

from conftest import assert_one_line_error, run_cli

from modelstore import dtypes
from modelstore.errors import InvalidInputError
from modelstore.formats import detect_format, format_for_path, open_model, write_model


def tensor_bytes(src) -> dict[str, tuple[str, tuple, bytes]]:
    return {t.name: (t.dtype, t.shape, bytes(t.buffer())) for t in src.tensors}


def rewrite(src, path, fmt, order=None, **kw) -> None:
    """Write an opened source back out, tensors in `order` (default: the source's)."""
    specs = [(t.name, t.dtype, t.shape) for t in src.tensors]
    if order == "sorted":
        specs.sort(key=lambda s: s[0])
    write_model(path, fmt, specs, lambda n: [src.tensor(n).buffer()], **kw)


def commit_and_check(store, path, model: str):
    """Commit a file, load the version back, compare with the file's tensors; returns (info, manifest specs)."""
    info = store.commit(str(path), model=model)
    with open_model(path) as src:
        want = tensor_bytes(src)
    got = store.load(info.ref)
    assert set(got) == set(want)
    for name, (dt, shape, raw) in want.items():
        arr = got[name]
        assert dtypes.from_numpy(arr.dtype).name == dt, name
        assert arr.shape == shape, name
        assert np.ascontiguousarray(arr).tobytes() == raw, name
    return info, got


def write_from_store(store, ref, path, fmt, **kw) -> None:
    """Write a stored version in the store's own tensor order (sorted by name), as checkout does."""
    m = store.manifest(ref)
    arrays = store.load(ref)
    specs = [(t.name, t.dtype, t.shape) for t in m.tensors]
    write_model(path, fmt, specs, lambda n: [np.ascontiguousarray(arrays[n]).reshape(-1).view(np.uint8)], **kw)


# ============================================================================ ONNX

try:
    import onnx
    from onnx import TensorProto, helper, numpy_helper
except ImportError:  # the ONNX tests skip; the others still run
    onnx = None
needs_onnx = pytest.mark.skipif(onnx is None, reason="needs the onnx package")


def _torch_onnx(tmp_path, name="m.onnx"):
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxscript")
    torch.manual_seed(0)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)
            self.fc = torch.nn.Linear(4 * 6 * 6, 5)

        def forward(self, x):
            return self.fc(torch.relu(self.conv(x)).flatten(1))

    net = Net().eval()
    x = torch.randn(2, 3, 8, 8)
    path = tmp_path / name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (x,), str(path), dynamo=True, verbose=False)
    return path, net, x


def _reference_initializers(path) -> dict[str, bytes]:
    model = onnx.load(str(path), load_external_data=True)
    return {i.name: np.ascontiguousarray(numpy_helper.to_array(i)).tobytes() for i in model.graph.initializer}


@needs_onnx
def test_onnx_torch_export_round_trip_through_store(tmp_path, store):
    path, net, x = _torch_onnx(tmp_path)
    ref = _reference_initializers(path)
    with open_model(path) as src:
        assert src.format == "onnx" and detect_format(path) == "onnx"
        got = tensor_bytes(src)
        assert {n: raw for n, (_, _, raw) in got.items()} == ref
        assert got["conv.weight"][2] == net.conv.weight.detach().numpy().tobytes()  # the torch weights, bit-exact
        proto = src.graph_proto
        g = src.graph
    ops = [n["op_type"] for n in g["nodes"]]
    assert "Conv" in ops and "Gemm" in ops and "Relu" in ops
    assert g["initializers"]["conv.weight"] == [4, 3, 3, 3]
    assert g["inputs"][0]["shape"] == [2, 3, 8, 8] and g["inputs"][0]["dtype"] == "F32"
    json.dumps(g)  # JSON-able
    stripped = onnx.ModelProto.FromString(proto)
    assert all(not i.raw_data and not i.external_data for i in stripped.graph.initializer)

    info, _ = commit_and_check(store, path, "net")
    out = tmp_path / "out" / "back.onnx"
    out.parent.mkdir()
    write_from_store(store, info.ref, out, "onnx", graph_proto=proto)
    onnx.checker.check_model(str(out))
    assert _reference_initializers(out) == ref
    # the rewritten model computes what the torch model computes
    from onnx.reference import ReferenceEvaluator

    (y,) = ReferenceEvaluator(str(out)).run(None, {g["inputs"][0]["name"]: x.numpy()})
    np.testing.assert_allclose(y, net(x).detach().numpy(), rtol=1e-4, atol=1e-5)


def _helper_model(inits, extra_nodes=()):
    nodes = [helper.make_node("Identity", [inits[0].name], ["y"], name="id0"), *extra_nodes]
    graph = helper.make_graph(nodes, "g", [], [helper.make_tensor_value_info("y", inits[0].data_type, None)], inits)
    return helper.make_model(graph, producer_name="test", opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("onnx_type,np_dtype,ours", [
    (1, np.float32, "F32"), (10, np.float16, "F16"),
    (11, np.float64, "F64"), (3, np.int8, "I8"), (2, np.uint8, "U8"),
    (5, np.int16, "I16"), (4, np.uint16, "U16"), (6, np.int32, "I32"),
    (7, np.int64, "I64"), (12, np.uint32, "U32"), (13, np.uint64, "U64"),
    (9, np.bool_, "BOOL"), (16, dtypes.get("BF16").numpy, "BF16"),
    (17, dtypes.get("F8_E4M3").numpy, "F8_E4M3"),
])
@needs_onnx
@pytest.mark.parametrize("raw", [True, False])
def test_onnx_typed_fields_and_raw_data_are_bit_exact(tmp_path, onnx_type, np_dtype, ours, raw):
    rng = np.random.default_rng(3)
    if np.dtype(np_dtype).kind == "b":
        arr = rng.integers(0, 2, (3, 5)).astype(bool)
    elif np.dtype(np_dtype).kind in "iu":
        info = np.iinfo(np_dtype)
        arr = rng.integers(info.min, info.max, (3, 5), dtype=np_dtype, endpoint=True)
    else:
        arr = (rng.standard_normal((3, 5)) * 3).astype(np_dtype)
        arr.reshape(-1)[0] = -0.0
    if raw:
        t = helper.make_tensor("w", onnx_type, arr.shape, arr.tobytes(), raw=True)
    else:
        t = _typed_tensor(arr, onnx_type, ours)
        assert not t.HasField("raw_data")
    path = tmp_path / "t.onnx"
    onnx.save(_helper_model([t]), str(path))
    with open_model(path) as src:
        (w,) = src.tensors
        assert (w.dtype, w.shape) == (ours, (3, 5))
        assert bytes(w.buffer()) == arr.tobytes()
        rewrite(src, tmp_path / "o.onnx", "onnx", graph_proto=src.graph_proto)
    with open_model(tmp_path / "o.onnx") as back:
        assert bytes(back.tensors[0].buffer()) == arr.tobytes()


def _typed_tensor(arr, onnx_type, ours):
    """A TensorProto holding `arr` in the typed field ONNX defines for its type (no raw_data)."""
    t = TensorProto()
    t.name, t.data_type = "w", onnx_type
    t.dims.extend(arr.shape)
    flat = arr.reshape(-1)
    if ours == "F32":
        t.float_data.extend(flat.tolist())
    elif ours == "F64":
        t.double_data.extend(flat.tolist())
    elif ours == "I64":
        t.int64_data.extend(flat.tolist())
    elif ours in ("U32", "U64"):
        t.uint64_data.extend(flat.tolist())
    elif ours in ("F16", "BF16", "F8_E4M3"):  # bit patterns in int32_data
        t.int32_data.extend(flat.view(f"u{arr.itemsize}").astype(np.int32).tolist())
    else:
        t.int32_data.extend(flat.astype(np.int32).tolist())
    return t


@needs_onnx
def test_onnx_writer_needs_a_graph_and_all_initializers(tmp_path):
    specs = [("w", "F32", (2,))]
    with pytest.raises(InvalidInputError, match="needs the version's graph"):
        write_model(tmp_path / "a.onnx", "onnx", specs, lambda n: [np.zeros(2, np.float32)])
    t = numpy_helper.from_array(np.ones(2, np.float32), "w")
    proto = _helper_model([t, numpy_helper.from_array(np.ones(1, np.float32), "other")]).SerializeToString()
    with pytest.raises(InvalidInputError, match="other"):
        write_model(tmp_path / "a.onnx", "onnx", specs, lambda n: [np.zeros(2, np.float32)], graph_proto=proto)
    assert not list(tmp_path.iterdir())
    with pytest.raises(InvalidInputError, match="needs the version's graph"):
        format_for_path("x.onnx") and write_model(tmp_path / "b.onnx", format_for_path("x.onnx"), specs, lambda n: [b"\0" * 8])


@needs_onnx
def test_onnx_writer_external_data_for_large_models(tmp_path):
    from modelstore.formats.onnx_io import write_onnx

    arrs = {"a": np.arange(5000, dtype=np.float32), "b": np.arange(7, dtype=np.int64)}
    inits = [numpy_helper.from_array(v, k) for k, v in arrs.items()]
    proto = _helper_model(inits).SerializeToString()
    out = tmp_path / "big.onnx"
    write_onnx(out, [(k, dtypes.from_numpy(v.dtype).name, v.shape) for k, v in arrs.items()],
               lambda n: [arrs[n]], graph_proto=proto, external_threshold=1000)
    assert (tmp_path / "big.onnx.data").stat().st_size >= 20000
    assert os.path.getsize(out) < 2000
    with open_model(out) as src:
        assert {t.name: bytes(t.buffer()) for t in src.tensors} == {k: v.tobytes() for k, v in arrs.items()}
    assert _reference_initializers(out) == {k: v.tobytes() for k, v in arrs.items()}


def _external_model(tmp_path, location, offset=0, length=None, name="m.onnx"):
    t = TensorProto()
    t.name, t.data_type = "w", TensorProto.FLOAT
    t.dims.extend([4])
    t.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", str(offset)), ("length", str(16 if length is None else length))):
        e = t.external_data.add()
        e.key, e.value = k, v
    path = tmp_path / "model" / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(_helper_model([t]).SerializeToString())
    return path


@needs_onnx
@pytest.mark.parametrize("location", ["../secret.bin", "/etc/passwd", "sub/../../secret.bin", "link.bin", "", "missing.bin"])
def test_onnx_external_data_must_stay_in_the_model_folder(tmp_path, location):
    (tmp_path / "secret.bin").write_bytes(b"S" * 64)
    (tmp_path / "model").mkdir()
    os.symlink(tmp_path / "secret.bin", tmp_path / "model" / "link.bin")
    path = _external_model(tmp_path, location)
    with pytest.raises(InvalidInputError) as e:
        open_model(path)
    assert "outside the model's folder" in str(e.value) or "missing" in str(e.value)


@needs_onnx
def test_onnx_external_data_inside_folder_and_out_of_range(tmp_path):
    path = _external_model(tmp_path, "w.bin")
    (tmp_path / "model" / "w.bin").write_bytes(np.arange(4, dtype=np.float32).tobytes())
    with open_model(path) as src:
        assert bytes(src.tensors[0].buffer()) == np.arange(4, dtype=np.float32).tobytes()
    path = _external_model(tmp_path, "w.bin", offset=8)
    with pytest.raises(InvalidInputError, match="truncated"):
        open_model(path)
    path = _external_model(tmp_path, "w.bin", length=1 << 40)
    with pytest.raises(InvalidInputError, match="length"):
        open_model(path)


@needs_onnx
def test_onnx_corrupt_files(tmp_path):
    good = tmp_path / "g.onnx"
    onnx.save(_helper_model([numpy_helper.from_array(np.ones((64, 64), np.float32), "w")]), str(good))
    raw = good.read_bytes()
    for i, data in enumerate([b"", b"\xff" * 100, raw[: len(raw) // 2], raw[:-7], os.urandom(3000)]):
        p = tmp_path / f"bad{i}.onnx"
        p.write_bytes(data)
        with pytest.raises(InvalidInputError):
            open_model(p)
    t = TensorProto()  # huge dims, 16 bytes
    t.name, t.data_type, t.raw_data = "w", TensorProto.FLOAT, b"\0" * 16
    t.dims.append(1 << 40)
    p = tmp_path / "huge.onnx"
    p.write_bytes(_helper_model([t]).SerializeToString())
    with pytest.raises(InvalidInputError, match="raw_data"):
        open_model(p)


# ============================================================================ GGUF


def _make_gguf(path, rng):
    gguf = pytest.importorskip("gguf")
    from gguf.constants import GGMLQuantizationType as Q
    from gguf.quants import quantize

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_string("general.name", "tiny-llama")
    w.add_uint32("llama.context_length", 256)
    w.add_float32("llama.rope.freq_base", 10000.5)
    w.add_bool("tokenizer.ggml.add_bos_token", True)
    w.add_array("tokenizer.ggml.tokens", [f"tok{i}\u00e9" for i in range(300)])
    w.add_array("tokenizer.ggml.scores", [float(i) / 3 for i in range(300)])
    w.add_array("llama.small", [1, 2, 3])
    tensors = {
        "token_embd.weight": rng.standard_normal((8, 64)).astype(np.float32),
        "blk.0.attn_norm.weight": rng.standard_normal(64).astype(np.float16),
    }
    for name, arr in tensors.items():
        w.add_tensor(name, arr)
    q8 = quantize(rng.standard_normal((4, 64)).astype(np.float32), Q.Q8_0)
    q4 = quantize(rng.standard_normal((2, 256)).astype(np.float32), Q.Q4_0)
    q4k = rng.integers(0, 256, (3, 144 * 2), dtype=np.uint8)  # two Q4_K blocks per row: any bytes are blocks
    w.add_tensor("blk.0.attn_q.weight", q8, raw_shape=q8.shape, raw_dtype=Q.Q8_0)
    w.add_tensor("blk.0.ffn_up.weight", q4, raw_shape=q4.shape, raw_dtype=Q.Q4_0)
    w.add_tensor("output.weight", q4k, raw_shape=q4k.shape, raw_dtype=Q.Q4_K)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return gguf


def _gguf_view(gguf, path):
    """(tensors {name: (type, shape, bytes)}, kv {key: value}) as the gguf package reads them."""
    r = gguf.GGUFReader(str(path))
    tensors = {t.name: (t.tensor_type.name, [int(d) for d in t.shape], t.data.tobytes()) for t in r.tensors}
    kv = {}
    for f in r.fields.values():
        if f.name.startswith("GGUF."):
            continue
        kv[f.name] = f.contents()
    return tensors, kv


def test_gguf_type_table_matches_the_gguf_package():
    gguf = pytest.importorskip("gguf")
    from modelstore.formats.gguf_io import GGML_TYPES

    for t, (block, size) in gguf.GGML_QUANT_SIZES.items():
        assert int(t) in GGML_TYPES, t.name
        assert GGML_TYPES[int(t)][:3] == (t.name, block, size)


def test_gguf_round_trip_with_quantized_tensors_through_store(tmp_path, store, rng):
    path = tmp_path / "m.gguf"
    gguf = _make_gguf(path, rng)
    want_t, want_kv = _gguf_view(gguf, path)
    with open_model(path) as src:
        assert src.format == "gguf"
        by = {t.name: t for t in src.tensors}
        assert by["output.weight"].dtype == "U8" and by["output.weight"].shape == (3, 288)
        assert by["blk.0.attn_q.weight"].shape == (4, 68)
        assert by["token_embd.weight"].dtype == "F32" and by["token_embd.weight"].shape == (8, 64)
        for name, (_, _, raw) in want_t.items():
            assert bytes(by[name].buffer()) == raw
        assert src.metadata["general.name"] == "tiny-llama"
        assert src.metadata["llama.context_length"] == "256"
        assert src.metadata["llama.small"] == "[1, 2, 3]"
        assert "tokenizer.ggml.tokens" not in src.metadata  # long arrays only in the record
        rewrite(src, tmp_path / "same.gguf", "gguf")
    assert (tmp_path / "same.gguf").read_bytes() == path.read_bytes()  # same order: the same file

    info, _ = commit_and_check(store, path, "llm")
    assert store.resolve(info.ref).meta["general.name"] == "tiny-llama"
    out = tmp_path / "back.gguf"
    write_from_store(store, info.ref, out, "gguf")
    got_t, got_kv = _gguf_view(gguf, out)
    assert got_t == want_t  # names, ggml types (Q4_K, Q8_0, ...), shapes, bytes
    assert got_kv == want_kv  # every key/value, the vocabulary included
    store.checkout(info.ref, tmp_path / "co.gguf")
    assert _gguf_view(gguf, tmp_path / "co.gguf") == (want_t, want_kv)


def test_gguf_written_from_plain_arrays(tmp_path):
    gguf = pytest.importorskip("gguf")
    arrays = {"a": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.arange(5, dtype=np.int32),
              "c": np.ones((2, 2), dtype=dtypes.get("BF16").numpy)}
    with open_model(arrays) as src:
        rewrite(src, tmp_path / "p.gguf", "gguf", metadata={"general.name": "plain"})
    tensors, kv = _gguf_view(gguf, tmp_path / "p.gguf")
    assert tensors["a"] == ("F32", [4, 3], arrays["a"].tobytes())
    assert tensors["c"][0] == "BF16"
    assert kv["general.name"] == "plain"
    with open_model({"u": np.zeros(3, np.uint8)}) as src, pytest.raises(InvalidInputError, match="no plain type"):
        rewrite(src, tmp_path / "u.gguf", "gguf")
    assert not (tmp_path / "u.gguf").exists()


def test_gguf_params_are_the_logical_element_counts(tmp_path, store, rng):
    """Q4_0/Q8_0/Q4_K tensors count their weights (GGUF dims), not their stored U8 bytes;
    the __gguf__ record counts nothing; the version's queryable params agree."""
    path = tmp_path / "m.gguf"
    gguf = _make_gguf(path, rng)
    reader = gguf.GGUFReader(str(path))
    want = sum(int(t.n_elements) for t in reader.tensors)
    assert {t.tensor_type.name for t in reader.tensors} >= {"Q4_0", "Q8_0", "Q4_K"}
    assert want == 8 * 64 + 64 + 4 * 64 + 2 * 256 + 3 * 512
    with open_model(path) as src:
        assert src.params == src.params_of() == want
        stored = sum(int(np.prod(t.shape)) for t in src.tensors)  # U8 block bytes and the record
        assert stored != want and stored - src.tensor("__gguf__").nbytes != want
    info = store.commit(str(path), model="llm")
    assert store.resolve(info.ref).params == want
    assert store.resolve(info.ref).size == sum(t.nbytes for t in store.manifest(info.ref).tensors)  # stored bytes
    assert [v.ref for v in store.query(f"params = {want}")] == [info.ref]
    # checked out to safetensors the record rides along: the same tensors, the same count
    store.checkout(info.ref, tmp_path / "m.safetensors")
    with open_model(tmp_path / "m.safetensors") as src:
        assert src.format == "safetensors" and src.params == want
    again = store.commit(str(tmp_path / "m.safetensors"), model="llm")
    assert again.content_id == info.content_id and store.resolve(again.ref).params == want


@pytest.mark.parametrize("fmt,record", [("gguf", "__gguf__"), ("h5", "__hdf5__"), ("keras", "__hdf5__")])
def test_a_foreign_record_is_refused(tmp_path, fmt, record):
    if fmt != "gguf":
        pytest.importorskip("h5py")
    for raw in (b"not json", json.dumps({"format": "other/1"}).encode(), b"\xff\xfe"):
        with pytest.raises(InvalidInputError, match=f"the '{record}' tensor is not a record modelstore wrote"):
            write_model(tmp_path / f"x.{fmt}", fmt, [(record, "U8", (len(raw),)), ("w", "F32", (1,))],
                        lambda n: [raw if n == record else b"\0" * 4])
    from modelstore.formats.gguf_io import read_gguf  # (open_model reads a folder as a Hugging Face one)

    (tmp_path / "dir.gguf").mkdir()
    with pytest.raises(InvalidInputError, match="is a folder, expected a .gguf file"):
        read_gguf(tmp_path / "dir.gguf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir.gguf"]


def _gguf_header(n_tensors, n_kv, body=b""):
    return b"GGUF" + struct.pack("<IQQ", 3, n_tensors, n_kv) + body


def test_gguf_hostile_files(tmp_path, rng):
    path = tmp_path / "m.gguf"
    _make_gguf(path, rng)
    raw = path.read_bytes()
    cases = {
        "magic": b"GGUX" + raw[4:],
        "version": raw[:4] + struct.pack("<I", 99) + raw[8:],
        "huge counts": _gguf_header(1 << 60, 1 << 60),
        "huge string": _gguf_header(0, 1, struct.pack("<Q", 1 << 62) + b"k"),
        "huge array": _gguf_header(0, 1, struct.pack("<Q", 1) + b"k" + struct.pack("<IIQ", 9, 8, 1 << 61)),
        "bad value type": _gguf_header(0, 1, struct.pack("<Q", 1) + b"k" + struct.pack("<I", 77) + b"\0" * 16),
        "unknown ggml type": _gguf_header(1, 0, struct.pack("<Q", 1) + b"t" + struct.pack("<IQIQ", 1, 4, 999, 0)),
        "bad dims": _gguf_header(1, 0, struct.pack("<Q", 1) + b"t" + struct.pack("<I", 1 << 20)),
        "tensor past end": _gguf_header(1, 0, struct.pack("<Q", 1) + b"t" + struct.pack("<IQIQ", 1, 1 << 40, 0, 0)),
        "quant not multiple": _gguf_header(1, 0, struct.pack("<Q", 1) + b"t" + struct.pack("<IQIQ", 1, 33, 8, 0) + b"\0" * 64),
        "empty": b"",
    }
    for cut in (10, 30, len(raw) // 3, len(raw) - 1):
        cases[f"truncated at {cut}"] = raw[:cut]
    for label, data in cases.items():
        p = tmp_path / "bad.gguf"
        p.write_bytes(data)
        with pytest.raises(InvalidInputError):
            src = open_model(p)
            src.close()
            pytest.fail(label)


# ============================================================================ Keras / HDF5

try:
    import h5py
except ImportError:
    h5py = None
needs_h5py = pytest.mark.skipif(h5py is None, reason="needs the h5py package")


def _keras_model(tmp_path):
    keras = pytest.importorskip("keras")
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="d1"),
                              keras.layers.BatchNormalization(), keras.layers.Dense(2)])
    model.compile(optimizer="adam", loss="mse")
    model.fit(np.ones((8, 4)), np.ones((8, 2)), verbose=0, epochs=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save(tmp_path / "m.keras")
        model.save_weights(tmp_path / "m.weights.h5")
        model.save(tmp_path / "legacy.h5")  # the legacy HDF5 full-model format
    fresh = lambda: keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="d1"),
                                      keras.layers.BatchNormalization(), keras.layers.Dense(2)])
    return keras, model, fresh


def _h5_datasets(path) -> dict[str, bytes]:
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda n, o: out.__setitem__(n, np.ascontiguousarray(o[()]).tobytes()) if isinstance(o, h5py.Dataset) else None)
    return out


@needs_h5py
def test_keras_files_round_trip_and_load_in_keras(tmp_path, store):
    keras, model, fresh = _keras_model(tmp_path)
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    y = keras.ops.convert_to_numpy(model(x))
    inner = tmp_path / "inner.h5"
    import zipfile

    with zipfile.ZipFile(tmp_path / "m.keras") as zf:
        inner.write_bytes(zf.read("model.weights.h5"))
    for name, fmt, truth in [("m.keras", "keras", inner), ("m.weights.h5", "h5", tmp_path / "m.weights.h5"),
                             ("legacy.h5", "h5", tmp_path / "legacy.h5")]:
        path = tmp_path / name
        with open_model(path) as src:
            assert src.format == fmt
            got = {n: raw for n, (_, _, raw) in tensor_bytes(src).items() if n != "__hdf5__"}
            assert got == _h5_datasets(truth), name
            if name != "m.weights.h5":  # (a bare weights file carries no version)
                assert src.metadata["keras_version"] == keras.__version__
        info, _ = commit_and_check(store, path, "k-" + name.replace(".", "-"))
        out = tmp_path / ("back-" + name.replace(".keras", ".weights.h5"))  # keras picks its loader by suffix
        write_from_store(store, info.ref, out, "h5")
        assert _h5_datasets(out) == _h5_datasets(truth)
        with open_model(out) as back:  # read -> write -> read: the same names, dtypes, bytes
            assert {n: v for n, v in tensor_bytes(back).items() if n != "__hdf5__"} == \
                {n: v for n, v in tensor_bytes(open_model(path)).items() if n != "__hdf5__"}
        m2 = fresh()
        m2.load_weights(out)  # groups and attributes (legacy layer_names/weight_names) came back too
        assert np.array_equal(keras.ops.convert_to_numpy(m2(x)), y), name


@needs_h5py
def test_keras_params_are_count_params(tmp_path, store):
    """Keras' own count: the __hdf5__ record and the optimizer's state are not parameters."""
    keras, model, _ = _keras_model(tmp_path)
    for name in ("m.keras", "m.weights.h5", "legacy.h5"):
        with open_model(tmp_path / name) as src:
            assert any(t.name.startswith(("optimizer/", "optimizer_weights/")) for t in src.tensors), name
            assert src.params == model.count_params() == 35, name
        info = store.commit(str(tmp_path / name), model="k-" + name.replace(".", "-"))
        assert store.resolve(info.ref).params == 35, name
        store.checkout(info.ref, tmp_path / "co.npz")  # the __hdf5__ record rides along
        with open_model(tmp_path / "co.npz") as src:
            assert src.params == 35, name
    with open_model({"a/w": np.ones((3, 4), np.float32)}) as src:
        assert src.params is None and src.params_of() == 12  # the manifest's sum
        rewrite(src, tmp_path / "plain.h5", "h5")
    with open_model(tmp_path / "plain.h5") as src:
        assert src.params == 12 and src.tensor("__hdf5__").nbytes > 12


def _keras_with_assets(tmp_path):
    """A functional model with a custom layer that saves text and binary assets."""
    keras = pytest.importorskip("keras")

    @keras.saving.register_keras_serializable(package="modelstore_test")
    class Vocab(keras.layers.Layer):
        def __init__(self, **kw):
            super().__init__(**kw)
            self.words, self.blob = "alpha\nbeta\n", bytes(range(256)) * 3

        def build(self, shape):
            self.scale = self.add_weight(shape=(shape[-1],), initializer="ones", name="scale")

        def call(self, x):
            return x * self.scale

        def save_assets(self, inner_path):
            with open(os.path.join(inner_path, "vocab.txt"), "w") as f:
                f.write(self.words)
            with open(os.path.join(inner_path, "table.bin"), "wb") as f:
                f.write(self.blob)

        def load_assets(self, inner_path):
            with open(os.path.join(inner_path, "vocab.txt")) as f:
                self.words = f.read()
            with open(os.path.join(inner_path, "table.bin"), "rb") as f:
                self.blob = f.read()

    keras.utils.set_random_seed(2)
    inp = keras.Input((4,))
    out = keras.layers.Dense(2, name="head")(Vocab(name="vocab")(keras.layers.Dense(4, name="d1")(inp)))
    model = keras.Model(inp, out)
    model.compile(optimizer="adam", loss="mse")
    model.fit(np.ones((8, 4)), np.ones((8, 2)), verbose=0, epochs=1)
    model.layers[2].words = "gamma\ndelta\n"  # not the constructor's: must come back from the assets
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save(tmp_path / "a.keras")
    return keras, model


@needs_h5py
def test_keras_checkout_to_keras_round_trips_and_loads(tmp_path, store):
    import zipfile

    keras, model = _keras_with_assets(tmp_path)
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    y = keras.ops.convert_to_numpy(model(x))
    path = tmp_path / "a.keras"
    with zipfile.ZipFile(path) as zf:
        want = {i.filename: zf.read(i) for i in zf.infolist() if i.filename != "model.weights.h5"}
        names = zf.namelist()
        (tmp_path / "inner.h5").write_bytes(zf.read("model.weights.h5"))
    assert any(n.endswith("table.bin") for n in names)
    info = store.commit(str(path), model="ka")
    out = tmp_path / "co.keras"
    store.checkout(info.ref, out)
    assert detect_format(out) == "keras"
    with zipfile.ZipFile(out) as zf:
        assert zf.namelist() == names  # the same members in the same order
        assert {n: zf.read(n) for n in names if n != "model.weights.h5"} == want  # config, metadata, assets
        assert all(i.compress_type == zipfile.ZIP_STORED for i in zf.infolist())
        (tmp_path / "back.h5").write_bytes(zf.read("model.weights.h5"))
    assert _h5_datasets(tmp_path / "back.h5") == _h5_datasets(tmp_path / "inner.h5")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m2 = keras.saving.load_model(out)
    assert np.array_equal(keras.ops.convert_to_numpy(m2(x)), y)
    assert m2.layers[2].words == "gamma\ndelta\n" and m2.layers[2].blob == bytes(range(256)) * 3
    assert len(m2.optimizer.variables) == len(model.optimizer.variables)
    # read -> write -> read is a fixed point: committing the checkout gives the same version
    assert store.commit(str(out), model="ka").content_id == info.content_id
    store.checkout(info.ref, tmp_path / "again.keras")
    assert (tmp_path / "again.keras").read_bytes() == out.read_bytes()  # reproducible bytes


@needs_h5py
def test_keras_writer_needs_a_keras_config(tmp_path, store):
    keras, model, _ = _keras_model(tmp_path)
    info = store.commit(str(tmp_path / "legacy.h5"), model="legacy")
    with pytest.raises(InvalidInputError, match="config.json.*weights.h5"):
        store.checkout(info.ref, tmp_path / "x.keras")
    with open_model({"w": np.ones(2, np.float32)}) as src, pytest.raises(InvalidInputError, match="config.json"):
        rewrite(src, tmp_path / "y.keras", "keras")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".keras") or p.name.startswith(".")) == \
        ["m.keras"]  # nothing written, no temp files left
    st = tmp_path / "st"
    run_cli("init", st, check=0)
    run_cli("commit", tmp_path / "legacy.h5", "--model", "legacy", store=st, check=0)
    assert_one_line_error(run_cli("checkout", "legacy", "-o", tmp_path / "z.keras", store=st), contains="config.json")
    # a record from before keras_members (config only): metadata.json is made from `metadata`
    with open_model(tmp_path / "m.keras") as src:
        rec = json.loads(bytes(src.tensor("__hdf5__").buffer()))
        del rec["keras_members"]
        old = json.dumps(rec).encode()
        specs = [(t.name, t.dtype, t.shape if t.name != "__hdf5__" else (len(old),)) for t in src.tensors]
        write_model(tmp_path / "old.keras", "keras", specs,
                    lambda n: [old if n == "__hdf5__" else src.tensor(n).buffer()], metadata={"keras_version": "3.1.0"})
    import zipfile

    with zipfile.ZipFile(tmp_path / "old.keras") as zf:
        assert zf.namelist() == ["metadata.json", "config.json", "model.weights.h5"]
        assert json.loads(zf.read("metadata.json")) == {"keras_version": "3.1.0"}
    x = np.ones((2, 4), np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m2 = keras.saving.load_model(tmp_path / "old.keras")
    assert np.array_equal(keras.ops.convert_to_numpy(m2(x)), keras.ops.convert_to_numpy(model(x)))


@needs_h5py
def test_keras_zip_with_compressed_weights_member(tmp_path):
    """Keras stores model.weights.h5 uncompressed (read in place); a deflated one is extracted."""
    import zipfile

    arrays = {"layers/dense/vars/0": np.arange(12, dtype=np.float32).reshape(3, 4)}
    with open_model(arrays) as src:
        rewrite(src, tmp_path / "w.h5", "h5")
    with zipfile.ZipFile(tmp_path / "z.keras", "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("metadata.json", json.dumps({"keras_version": "3.0.0"}))
        zf.write(tmp_path / "w.h5", "model.weights.h5")
    with open_model(tmp_path / "z.keras") as src:
        assert src.format == "keras" and src.metadata["keras_version"] == "3.0.0"
        assert bytes(src.tensor("layers/dense/vars/0").buffer()) == arrays["layers/dense/vars/0"].tobytes()


@needs_h5py
def test_h5_writer_bf16_and_paths(tmp_path):
    bf = dtypes.get("BF16").numpy
    arrays = {"a/b/w": np.arange(6, dtype=np.float32).reshape(2, 3).astype(bf), "a/c": np.arange(3, dtype=np.int64),
              "flag": np.array([True, False])}
    with open_model(arrays) as src:
        rewrite(src, tmp_path / "x.h5", "h5", metadata={"note": "hi"})
    with open_model(tmp_path / "x.h5") as back:
        got = tensor_bytes(back)
        assert back.metadata["note"] == "hi"
    for k, v in arrays.items():
        assert got[k] == (dtypes.from_numpy(v.dtype).name, v.shape, v.tobytes())
    with open_model({"a": np.zeros(1), "a/b": np.zeros(1)}) as src, pytest.raises(InvalidInputError, match="group"):
        rewrite(src, tmp_path / "y.h5", "h5")
    assert not (tmp_path / "y.h5").exists()


@needs_h5py
def test_h5_hostile_files(tmp_path):
    (tmp_path / "outside.h5").write_bytes(b"")
    with h5py.File(tmp_path / "outside.h5", "w") as f:
        f["secret"] = np.arange(3)
    with h5py.File(tmp_path / "link.h5", "w") as f:
        f["w"] = np.ones(2)
        f["ext"] = h5py.ExternalLink(str(tmp_path / "outside.h5"), "/secret")
    (tmp_path / "raw.bin").write_bytes(b"\0" * 64)
    with h5py.File(tmp_path / "extstore.h5", "w") as f:
        f.create_dataset("w", shape=(16,), dtype="f4", external=[(str(tmp_path / "raw.bin"), 0, 64)])
    with h5py.File(tmp_path / "huge.h5", "w") as f:
        f.create_dataset("w", shape=(1 << 40,), dtype="f4", chunks=(1 << 16,))  # nothing stored
    with h5py.File(tmp_path / "good.h5", "w") as f:
        f["w"] = np.random.default_rng(0).standard_normal((256, 256))
    good = (tmp_path / "good.h5").read_bytes()
    (tmp_path / "trunc.h5").write_bytes(good[: len(good) // 2])
    (tmp_path / "hdr.h5").write_bytes(good[:200])
    for name, match in [("link.h5", "external link"), ("extstore.h5", "other files"), ("huge.h5", "declares"),
                        ("hdr.h5", "HDF5")]:
        with pytest.raises(InvalidInputError, match=match):
            open_model(tmp_path / name)
    with pytest.raises(InvalidInputError):  # truncated data: caught at open or when read
        with open_model(tmp_path / "trunc.h5") as src:
            for t in src.tensors:
                t.buffer()
    import zipfile

    with zipfile.ZipFile(tmp_path / "nokeras.keras", "w") as zf:
        zf.writestr("config.json", "{}")
    with pytest.raises(InvalidInputError, match="model.weights.h5"):
        open_model(tmp_path / "nokeras.keras")
    with zipfile.ZipFile(tmp_path / "escape.keras", "w") as zf:
        zf.write(tmp_path / "good.h5", "model.weights.h5")
        zf.writestr("assets/../../evil.txt", "x")
    with pytest.raises(InvalidInputError, match="outside the archive"):
        open_model(tmp_path / "escape.keras")


# ============================================================================ safetensors metadata, deps, CLI


def test_safetensors_metadata_becomes_version_attributes(tmp_path, store):
    from safetensors.numpy import save_file

    path = tmp_path / "m.safetensors"
    save_file({"w": np.ones(3, np.float32)}, str(path), metadata={"base_model": "llama-7b", "lora_rank": "16"})
    with open_model(path) as src:
        assert src.metadata == {"base_model": "llama-7b", "lora_rank": "16"}
    info = store.commit(str(path), model="st")
    assert store.resolve(info.ref).meta["base_model"] == "llama-7b"
    assert store.resolve(info.ref).meta["lora_rank"] == 16


@pytest.mark.parametrize("module,suffix,extra", [("onnx", ".onnx", "onnx"), ("h5py", ".h5", "keras"),
                                                  ("h5py", ".keras", "keras")])
def test_missing_optional_dependency_names_the_extra(tmp_path, monkeypatch, module, suffix, extra):
    p = tmp_path / ("m" + suffix)
    p.write_bytes(b"PK\x05\x06" + b"\0" * 18 if suffix == ".keras" else b"\0" * 64)
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if it were not installed
    with pytest.raises(InvalidInputError, match=rf"needs the '{extra}' extra: pip install 'modelstore\[{extra}\]'"):
        open_model(p)


def test_cli_commit_and_checkout_gguf(tmp_path, rng):
    path = tmp_path / "m.gguf"
    gguf = _make_gguf(path, rng)
    st = tmp_path / "st"
    run_cli("init", st, check=0)
    run_cli("commit", path, "--model", "llm", store=st, check=0)
    run_cli("checkout", "llm", "-o", tmp_path / "out.gguf", store=st, check=0)
    assert _gguf_view(gguf, tmp_path / "out.gguf") == _gguf_view(gguf, path)
    (tmp_path / "bad.gguf").write_bytes(path.read_bytes()[:100])
    assert_one_line_error(run_cli("commit", tmp_path / "bad.gguf", "--model", "x", store=st), contains="bad.gguf")
