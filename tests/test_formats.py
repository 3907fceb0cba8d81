"""Tests of modelstore.formats: real files in tmp dirs, hand-made corrupt inputs."""

from __future__ import annotations

import json
import mmap
import os
import pickle
import struct
import sys
import tempfile
import zipfile

import ml_dtypes
import numpy as np
import pytest
import safetensors
import safetensors.numpy as stnp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelstore import dtypes
from modelstore.errors import InternalError, InvalidInputError, NotFoundError
from modelstore.formats import (
    ModelSource,
    TensorSource,
    detect_format,
    format_for_path,
    open_model,
    write_model,
)

ALL_DTYPES = list(dtypes.BY_NAME)
# dtypes that safetensors.numpy.save_file / load_file know (it lacks bf16 and fp8)
ST_NUMPY_DTYPES = [d for d in ALL_DTYPES if d not in ("BF16", "F8_E4M3", "F8_E5M2")]
SHAPES = [(), (0,), (0, 5), (5, 0), (1,), (1, 7), (3,), (3, 5), (2, 3, 1), (7, 1, 3)]

# ----------------------------------------------------------------------------- helpers


def make_array(dtype: str, shape: tuple[int, ...], data: bytes) -> np.ndarray:
    dt = dtypes.get(dtype)
    arr = np.frombuffer(data, dtype=np.uint8)
    if dtype == "BOOL":
        arr = arr & 1  # only 0/1 are valid bools
    return arr.view(dt.numpy).reshape(shape).copy()


@st.composite
def arrays_strategy(draw, dtype_names=ALL_DTYPES):
    dtype = draw(st.sampled_from(dtype_names))
    shape = draw(st.sampled_from(SHAPES) | st.lists(st.integers(0, 6), min_size=1, max_size=3).map(tuple))
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtypes.get(dtype).itemsize
    return make_array(dtype, shape, draw(st.binary(min_size=nbytes, max_size=nbytes)))


names_strategy = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=12
).filter(lambda n: n not in ("__metadata__", "__modelstore_dtypes__"))


def models_strategy(dtype_names=ALL_DTYPES):
    return st.dictionaries(names_strategy, arrays_strategy(dtype_names), min_size=1, max_size=4)


def chunked(view: memoryview, size: int):
    for i in range(0, len(view), size):
        yield view[i : i + size]


def save_via_engine(src: ModelSource, path, fmt: str, chunk: int = 7, metadata=None) -> None:
    """Write a ModelSource the way the engine does: specs + chunked read_tensor."""
    by_name = {t.name: t for t in src.tensors}
    specs = [(t.name, t.dtype, t.shape) for t in src.tensors]
    write_model(path, fmt, specs, lambda n: chunked(by_name[n].buffer(), chunk), metadata=metadata)


def assert_same(src: ModelSource, arrays: dict[str, np.ndarray]) -> None:
    assert sorted(t.name for t in src.tensors) == sorted(arrays)
    for t in src.tensors:
        a = arrays[t.name]
        assert t.dtype == dtypes.from_numpy(a.dtype).name
        assert t.shape == a.shape
        assert t.nbytes == a.nbytes
        buf = t.buffer()
        assert isinstance(buf, memoryview) and buf.format == "B" and buf.ndim == 1
        assert bytes(buf) == a.tobytes()
        assert bytes(t.buffer()) == a.tobytes()  # buffer() may be called again


def st_file(path, header, data: bytes = b"", hlen: int | None = None) -> str:
    """A hand-made safetensors file: header is a dict/list (JSON-encoded) or raw bytes."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw) if hlen is None else hlen) + raw + data)
    return str(path)


def expect_invalid(path, *fragments: str, exc=InvalidInputError) -> str:
    with pytest.raises(exc) as info:
        open_model(path)
    msg = str(info.value)
    for frag in fragments:
        assert frag in msg, msg
    assert "\n" not in msg
    return msg


# MODELSTORE_HYPOTHESIS_EXAMPLES=500 for a longer soak; the default keeps the file fast
EXAMPLES = int(os.environ.get("MODELSTORE_HYPOTHESIS_EXAMPLES", "40"))
FAST = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ----------------------------------------------------------------------------- round trips


@FAST
@given(model=models_strategy(), chunk=st.integers(1, 64))
def test_roundtrip_safetensors_and_npz(model, chunk):
    with tempfile.TemporaryDirectory() as d, open_model(model) as src:
        assert src.format == "arrays"
        assert_same(src, model)
        for fmt, name in (("safetensors", "m.safetensors"), ("npz", "m.npz")):
            path = os.path.join(d, name)
            save_via_engine(src, path, fmt, chunk=chunk, metadata={"who": "test"})
            with open_model(path) as back:
                assert back.format == fmt
                assert [t.name for t in back.tensors] == list(model)  # writer order kept
                assert_same(back, model)
                if fmt == "safetensors":
                    assert back.metadata == {"who": "test"}
        # cross-check our safetensors output with the official implementation
        path = os.path.join(d, "m.safetensors")
        with open(path, "rb") as f:
            blob = f.read()
        (hlen,) = struct.unpack("<Q", blob[:8])
        assert hlen % 8 == 0
        official = dict(safetensors.deserialize(blob))
        for name, a in model.items():
            assert official[name]["dtype"] == dtypes.from_numpy(a.dtype).name
            assert tuple(official[name]["shape"]) == a.shape
            assert bytes(official[name]["data"]) == a.tobytes()
        if all(dtypes.from_numpy(a.dtype).name in ST_NUMPY_DTYPES for a in model.values()):
            loaded = stnp.load_file(path)
            for name, a in model.items():
                assert loaded[name].dtype == a.dtype and loaded[name].shape == a.shape
                assert loaded[name].tobytes() == a.tobytes()


@FAST
@given(model=models_strategy())
def test_reads_files_written_by_official_safetensors(model):
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "official.safetensors")
        specs = {
            name: safetensors.TensorSpec(
                dtype=a.dtype.name, shape=list(a.shape), data_ptr=a.ctypes.data, data_len=a.nbytes
            )
            for name, a in model.items()
        }
        safetensors.serialize_file(specs, path, metadata={"format": "np"})
        with open_model(path) as src:
            assert src.metadata == {"format": "np"}
            assert_same(src, model)


@settings(max_examples=max(EXAMPLES // 2, 10), deadline=None)
@given(model=models_strategy(ST_NUMPY_DTYPES))
def test_reads_files_written_by_safetensors_numpy(model):
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "np.safetensors")
        stnp.save_file(model, path)
        with open_model(path) as src:
            assert_same(src, model)
            offsets = [t.buffer().obj for t in src.tensors]  # mmap slices, no copies
            assert all(isinstance(o, mmap.mmap) for o in offsets)


def test_safetensors_buffers_are_zero_copy_readonly_mmap_slices(tmp_path):
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    path = tmp_path / "z.safetensors"
    stnp.save_file({"a": a, "e": np.zeros((0, 3), np.int8), "s": np.array(7, np.int64)}, str(path))
    with open_model(path) as src:
        buf = src.tensor("a").buffer()
        assert isinstance(buf.obj, mmap.mmap) and buf.readonly
        np.testing.assert_array_equal(src.tensor("a").array(), a)
        assert src.tensor("e").buffer().nbytes == 0
        assert src.tensor("s").array() == 7
        with pytest.raises(NotFoundError, match="no tensor named 'zz'"):
            src.tensor("zz")
        del buf
    with pytest.raises(InternalError, match="after the model source was closed"):
        src.tensors[0].buffer()


def test_tensor_order_is_data_offset_order(tmp_path):
    header = {
        "b": {"dtype": "U8", "shape": [2], "data_offsets": [2, 4]},
        "a": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]},
        "gap": {"dtype": "U8", "shape": [1], "data_offsets": [8, 9]},  # gaps are tolerated
        "empty": {"dtype": "F32", "shape": [0, 3], "data_offsets": [4, 4]},
    }
    path = st_file(tmp_path / "o.safetensors", header, b"\x01\x02\x03\x04\x00\x00\x00\x00\x09\x00")
    with open_model(path) as src:
        assert [t.name for t in src.tensors] == ["a", "b", "empty", "gap"]
        assert [bytes(t.buffer()) for t in src.tensors] == [b"\x01\x02", b"\x03\x04", b"", b"\x09"]


def test_safetensors_with_empty_data_section(tmp_path):
    header = {"e": {"dtype": "BF16", "shape": [0], "data_offsets": [0, 0]},
              "f": {"dtype": "F64", "shape": [4, 0], "data_offsets": [0, 0]}}
    with open_model(st_file(tmp_path / "e.safetensors", header)) as src:
        assert [(t.name, t.shape, bytes(t.buffer())) for t in src.tensors] == [("e", (0,), b""), ("f", (4, 0), b"")]
    with open_model(st_file(tmp_path / "n.safetensors", {})) as src:
        assert src.tensors == [] and src.metadata == {}


def test_npz_reads_numpy_written_files_and_non_c_order(tmp_path):
    a = np.asfortranarray(np.arange(12, dtype=">i4").reshape(3, 4))
    b = np.arange(10, dtype=np.float16)[::3]
    path = tmp_path / "n.npz"
    np.savez_compressed(path, a=a, b=b, c=np.array(True))
    with open_model(path) as src:
        assert src.format == "npz"
        assert_same(src, {"a": np.ascontiguousarray(a.astype("<i4")), "b": b.copy(), "c": np.array(True)})


def test_npz_writer_records_true_dtypes(tmp_path):
    bf = np.array([1.5, -2.0], dtype=ml_dtypes.bfloat16)
    f8 = np.array([[0.5]], dtype=ml_dtypes.float8_e5m2)
    path = tmp_path / "x.npz"
    with open_model({"bf": bf, "f8": f8}) as src:
        save_via_engine(src, path, "npz")
    with zipfile.ZipFile(path) as zf:
        assert zf.namelist()[0] == "__modelstore_dtypes__.npy"
        assert all(i.compress_type == zipfile.ZIP_STORED for i in zf.infolist())
    raw = np.load(path, allow_pickle=False)  # plain numpy still reads it (as void)
    assert json.loads(raw["__modelstore_dtypes__"].tobytes()) == {"bf": "BF16", "f8": "F8_E5M2"}
    assert raw["bf"].dtype.kind == "V" and raw["bf"].tobytes() == bf.tobytes()
    raw.close()
    with open_model(path) as src:
        assert [t.name for t in src.tensors] == ["bf", "f8"]
        assert_same(src, {"bf": bf, "f8": f8})


def test_hf_folder_with_index(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    s1 = {"z.w": np.arange(6, dtype=np.float32).reshape(2, 3), "a.b": np.array(3, np.int64)}
    s2 = {"emb": np.ones((4, 2), ml_dtypes.bfloat16), "none": np.zeros((0,), np.uint16)}
    for fname, model in (("model-00002-of-00002.safetensors", s2), ("model-00001-of-00002.safetensors", s1)):
        with open_model(model) as src:
            save_via_engine(src, folder / fname, "safetensors", metadata={"format": "pt"})
    weight_map = {"emb": "model-00002-of-00002.safetensors", "z.w": "model-00001-of-00002.safetensors",
                  "a.b": "model-00001-of-00002.safetensors", "none": "model-00002-of-00002.safetensors"}
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": 123}, "weight_map": weight_map}))
    with open_model(folder) as src:
        assert src.format == "hf-safetensors" and src.metadata == {"format": "pt"}
        # shards sorted by file name, then data-offset order inside each shard
        assert [t.name for t in src.tensors] == ["z.w", "a.b", "emb", "none"]
        assert_same(src, {**s1, **s2})
    # a folder with exactly one .safetensors file and no index
    single = tmp_path / "single"
    single.mkdir()
    os.replace(folder / "model-00001-of-00002.safetensors", single / "model.safetensors")
    with open_model(single) as src:
        assert src.format == "hf-safetensors"
        assert_same(src, s1)


def test_detect_by_magic_bytes(tmp_path):
    a = {"w": np.arange(3, dtype=np.int16)}
    stnp.save_file(a, str(tmp_path / "model.weights"))
    np.savez(tmp_path / "arrays.npz", **a)
    os.replace(tmp_path / "arrays.npz", tmp_path / "arrays.data")
    assert detect_format(tmp_path / "model.weights") == "safetensors"
    assert detect_format(tmp_path / "arrays.data") == "npz"
    for p in ("model.weights", "arrays.data"):
        with open_model(tmp_path / p) as src:
            assert_same(src, a)


# ----------------------------------------------------------------------------- bad safetensors


def test_truncated_file(tmp_path):
    (tmp_path / "t.safetensors").write_bytes(b"\x10\x00\x00")
    expect_invalid(tmp_path / "t.safetensors", "t.safetensors", "truncated", "3 bytes")


def test_header_larger_than_file(tmp_path):
    path = st_file(tmp_path / "h.safetensors", b'{"a":1}', hlen=1000)
    expect_invalid(path, "header claims 1000 bytes but file has 15")


def test_header_of_200mb_claimed(tmp_path):
    path = st_file(tmp_path / "big.safetensors", b"{}" + b" " * 30, hlen=200_000_000)
    expect_invalid(path, "header claims 200000000 bytes", "100 MB limit")


def test_truncated_data_section(tmp_path):
    header = {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}
    path = st_file(tmp_path / "d.safetensors", header, b"\x00" * 10)
    expect_invalid(path, "'a'", "out of range", "10 bytes")


@pytest.mark.parametrize(
    ("header", "fragments"),
    [
        (b"{not json", ["not valid JSON"]),
        (b"\xff\xfe{}", ["not valid UTF-8"]),
        (b"[1, 2, 3]", ["JSON array", "expected a JSON object"]),
        (b'"text"', ["expected a JSON object"]),
        ({"a": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}}, ["unsupported dtype 'C64' in tensor 'a'"]),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
          "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, ["overlapping", "'a'", "'b'"]),
        ({"a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 16]}}, ["'a'", "16 bytes", "needs 24"]),
        ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [16, 20]}}, ["out of range"]),
        ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}}, ["invalid data_offsets"]),
        ({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, ["non-negative integers"]),
        ({"a": {"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}}, ["non-negative integers"]),
        ({"a": {"dtype": "F32", "shape": [1]}}, ["no 'data_offsets'"]),
        ({"a": [1, 2]}, ["not a JSON object"]),
        ({"__metadata__": {"k": 1}}, ["__metadata__ must map strings to strings"]),
        ({"__metadata__": ["x"]}, ["__metadata__ must map strings to strings"]),
        ({"": {"dtype": "U8", "shape": [0], "data_offsets": [0, 0]}}, ["empty tensor name"]),
    ],
)
def test_bad_headers(tmp_path, header, fragments):
    path = st_file(tmp_path / "bad.safetensors", header, b"\x00" * 16)
    expect_invalid(path, "bad.safetensors", *fragments)


def test_duplicate_tensor_names(tmp_path):
    raw = (b'{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},'
           b'"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}')
    expect_invalid(st_file(tmp_path / "dup.safetensors", raw, b"\x00\x00"), "duplicate", "'a'")


def test_missing_file(tmp_path):
    for name in ("nope.safetensors", "nope.npz", "nope.pt", "nope"):
        expect_invalid(tmp_path / name, "no such file", name, exc=NotFoundError)


def test_random_bytes_file(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "junk.dat").write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    expect_invalid(tmp_path / "junk.dat", "junk.dat", "unknown model file format", ".safetensors", ".npz", ".pt")
    (tmp_path / "junk.safetensors").write_bytes(b"\x7f" * 4096)
    expect_invalid(tmp_path / "junk.safetensors", "junk.safetensors", "header claims")
    (tmp_path / "junk.npz").write_bytes(b"\x7f" * 4096)
    expect_invalid(tmp_path / "junk.npz", "junk.npz", "not a readable .npz")


# ----------------------------------------------------------------------------- bad folders / npz


def test_directory_without_safetensors(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"x")
    expect_invalid(tmp_path, "no .safetensors files", "pytorch_model.bin")


def test_directory_with_several_safetensors_and_no_index(tmp_path):
    for n in ("a.safetensors", "b.safetensors"):
        st_file(tmp_path / n, {})
    expect_invalid(tmp_path, "2 .safetensors files", "model.safetensors.index.json")


def _index(folder, weight_map):
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))


def test_hf_index_pointing_outside_folder(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    st_file(tmp_path / "outside.safetensors", {"w": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}, b"\x01")
    _index(folder, {"w": "../outside.safetensors"})
    expect_invalid(folder, "'../outside.safetensors'", "outside the model folder")
    _index(folder, {"w": str(tmp_path / "outside.safetensors")})
    expect_invalid(folder, "outside the model folder")
    os.symlink(tmp_path / "outside.safetensors", folder / "link.safetensors")
    _index(folder, {"w": "link.safetensors"})
    expect_invalid(folder, "resolves outside the model folder")


def test_hf_index_inconsistent_with_shards(tmp_path):
    st_file(tmp_path / "s1.safetensors", {"w": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]},
                                          "x": {"dtype": "U8", "shape": [1], "data_offsets": [1, 2]}}, b"\x01\x02")
    _index(tmp_path, {"w": "s1.safetensors"})
    expect_invalid(tmp_path, "'x' is in this shard", "fix the index")
    _index(tmp_path, {"w": "s1.safetensors", "x": "s1.safetensors", "y": "s1.safetensors"})
    expect_invalid(tmp_path, "'y' listed in model.safetensors.index.json is not in this shard")
    _index(tmp_path, {"w": "s2.safetensors"})
    expect_invalid(tmp_path, "'s2.safetensors'", "does not exist", exc=NotFoundError)
    (tmp_path / "model.safetensors.index.json").write_text('{"weight_map": {"w": "a", "w": "b"}}')
    expect_invalid(tmp_path, "duplicate key 'w'")


def test_npz_with_object_array_refused(tmp_path):
    path = tmp_path / "obj.npz"
    np.savez(path, ok=np.zeros(2), bad=np.array([{"x": 1}, None], dtype=object))
    expect_invalid(path, "obj.npz", "'bad'", "object array", "allow_pickle=False")


def test_npz_void_without_dtype_record_refused(tmp_path):
    path = tmp_path / "bf.npz"
    np.savez(path, w=np.ones(3, dtype=ml_dtypes.bfloat16))
    expect_invalid(path, "'w'", "void dtype", "re-save")


def test_npz_duplicate_and_foreign_members(tmp_path):
    path = tmp_path / "dup.npz"
    np.savez(path, a=np.zeros(2))
    with zipfile.ZipFile(path, "a") as zf, pytest.warns(UserWarning, match="Duplicate name"):
        with zf.open("a.npy", "w") as out:
            np.lib.format.write_array(out, np.ones(3))
    expect_invalid(path, "dup.npz", "duplicate tensor name 'a'")
    path = tmp_path / "readme.npz"
    np.savez(path, a=np.zeros(2))
    with zipfile.ZipFile(path, "a") as zf:
        zf.writestr("README.txt", b"hello")
    expect_invalid(path, "'README.txt'", "not a .npy array")


def test_npz_unsupported_dtype_and_npy(tmp_path):
    np.savez(tmp_path / "c.npz", z=np.ones(2, np.complex64))
    expect_invalid(tmp_path / "c.npz", "'z'", "unsupported dtype complex64")
    np.save(tmp_path / "single.npy", np.ones(2))
    os.replace(tmp_path / "single.npy", tmp_path / "single.npz")
    expect_invalid(tmp_path / "single.npz", "single .npy array")


# ----------------------------------------------------------------------------- arrays


def test_arrays_conversions():
    big = np.arange(6, dtype=">f8").reshape(2, 3)
    strided = np.arange(20, dtype=np.int32).reshape(4, 5)[:, ::2]
    fortran = np.asfortranarray(np.arange(6, dtype=np.uint64).reshape(2, 3))
    with open_model({"big": big, "strided": strided, "f": fortran, "s": np.float32(2.5)}) as src:
        assert_same(src, {"big": big.astype("<f8"), "strided": strided.copy(), "f": fortran.copy(order="C"),
                          "s": np.array(2.5, np.float32)})
    with pytest.raises(InternalError, match="closed"):
        src.tensors[0].buffer()


@pytest.mark.parametrize(
    ("model", "fragment"),
    [
        ({"c": np.ones(2, np.complex64)}, "unsupported dtype complex64"),
        ({"o": np.array([None], dtype=object)}, "unsupported dtype object"),
        ({"u": np.array(["abc"])}, "unsupported dtype <U3"),
        ({"v": np.zeros(2, "V2")}, "unsupported dtype |V2"),
        ({"": np.zeros(2)}, "empty tensor name"),
        ({3: np.zeros(2)}, "must be strings"),
        ({"l": [1, 2]}, "expected a numpy array"),
    ],
)
def test_arrays_rejected(model, fragment):
    with pytest.raises(InvalidInputError) as info:
        open_model(model)
    assert fragment in str(info.value)


# ----------------------------------------------------------------------------- writer


def test_write_model_validation_and_atomicity(tmp_path):
    target = tmp_path / "out.safetensors"
    target.write_bytes(b"old contents")

    def chunks(name):
        yield b"\x00" * 4

    with pytest.raises(InvalidInputError, match="unknown output format 'tflite'"):
        write_model(target, "tflite", [], chunks)
    with pytest.raises(InvalidInputError, match="unsupported dtype 'F128'"):
        write_model(target, "safetensors", [("a", "F128", (1,))], chunks)
    with pytest.raises(InvalidInputError, match="duplicate tensor name 'a'"):
        write_model(target, "npz", [("a", "F32", (1,)), ("a", "F32", (1,))], chunks)
    with pytest.raises(InvalidInputError, match="empty tensor name"):
        write_model(target, "safetensors", [("", "F32", (1,))], chunks)
    with pytest.raises(InvalidInputError, match="non-negative"):
        write_model(target, "safetensors", [("a", "F32", (-1,))], chunks)
    with pytest.raises(InvalidInputError, match="reserved"):
        write_model(tmp_path / "x.npz", "npz", [("__modelstore_dtypes__", "F32", (1,))], chunks)
    with pytest.raises(InvalidInputError, match="metadata must be a dict of str to str"):
        write_model(target, "safetensors", [("a", "F32", (1,))], chunks, metadata={"k": 1})
    for fmt in ("safetensors", "npz"):
        with pytest.raises(InternalError, match=r"yielded 4 bytes, expected 8"):
            write_model(target, fmt, [("a", "F32", (2,))], chunks)
        with pytest.raises(InternalError, match=r"yielded more than 4 bytes, expected 0"):
            write_model(target, fmt, [("a", "F32", (0,))], chunks)

    def exploding(name):
        yield b"\x00" * 4
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        write_model(target, "safetensors", [("a", "F32", (2,))], exploding)
    assert target.read_bytes() == b"old contents"  # never half-written
    assert sorted(os.listdir(tmp_path)) == ["out.safetensors"]  # no temp files left behind
    with pytest.raises(NotFoundError, match="does not exist"):
        write_model(tmp_path / "no" / "dir.npz", "npz", [], chunks)
    write_model(target, "safetensors", [("a", "F32", (1,))], chunks)
    assert stnp.load_file(str(target))["a"].tolist() == [0.0]
    assert oct(os.stat(target).st_mode & 0o777) != oct(0o600)  # normal permissions, not mkstemp's


@pytest.mark.parametrize("fmt", ["safetensors", "npz", "pt"])
def test_writer_reads_tensors_in_spec_order_and_exhausts_each(tmp_path, fmt):
    if fmt == "pt":
        pytest.importorskip("torch")
    specs = [("z", "F32", (2,)), ("a", "U8", (0,)), ("m", "BF16", (1, 3))]
    calls, finished = [], []

    def read_tensor(name):
        calls.append(name)
        n = {"z": 8, "a": 0, "m": 6}[name]
        for i in range(n):
            yield bytes([i])
        finished.append(name)

    write_model(tmp_path / f"o.{fmt}", fmt, specs, read_tensor)
    assert calls == finished == ["z", "a", "m"]
    with open_model(tmp_path / f"o.{fmt}") as src:
        assert [(t.name, t.dtype, t.shape) for t in src.tensors] == specs
        assert bytes(src.tensor("m").buffer()) == bytes(range(6))


# every writer goes through base.format_writer: the same arguments, the same spec checks
# naming the path, the same byte-count check, and nothing left behind when it fails
_WRITERS_NEED = {"pt": "torch", "onnx": "onnx", "h5": "h5py", "keras": "h5py"}


@pytest.mark.parametrize("fmt", ["safetensors", "npz", "pt", "gguf", "h5", "onnx", "keras"])
def test_every_writer_validates_specs_and_streams_atomically(tmp_path, fmt):
    from modelstore.formats import WRITE_FORMATS

    assert fmt in WRITE_FORMATS
    if fmt in _WRITERS_NEED:
        pytest.importorskip(_WRITERS_NEED[fmt])
    target = tmp_path / f"out.{fmt}"
    kw = {}
    if fmt == "onnx":
        import onnx

        kw["graph_proto"] = onnx.helper.make_model(onnx.helper.make_graph([], "g", [], [])).SerializeToString()
    with pytest.raises(InvalidInputError, match=rf"{target}.*unsupported dtype 'F128'"):
        write_model(target, fmt, [("a", "F128", (1,))], lambda n: [b""], **kw)
    with pytest.raises(InvalidInputError, match=rf"{target}.*duplicate tensor name 'a'"):
        write_model(target, fmt, [("a", "F32", (1,)), ("a", "F32", (1,))], lambda n: [b""], **kw)
    if fmt == "keras":  # refused before any bytes are read: no Keras config to build the zip
        with pytest.raises(InvalidInputError, match="config.json"):
            write_model(target, fmt, [("a", "F32", (2,))], lambda n: [b"\0" * 4], **kw)
    else:
        with pytest.raises(InternalError, match=r"yielded 4 bytes, expected 8"):
            write_model(target, fmt, [("a", "F32", (2,))], lambda n: [b"\0" * 4], **kw)
        write_model(target, fmt, [("a/b", "F32", (2,)), ("c", "I64", (0,))],
                    lambda n: [np.arange(2, dtype=np.float32)] if n == "a/b" else [], **kw)
        with open_model(target) as src:
            assert src.tensor("a/b").array().tolist() == [0.0, 1.0]
            assert src.params_of() == 2  # the record (gguf, h5) is not a parameter
    assert sorted(os.listdir(tmp_path)) == ([] if fmt == "keras" else [f"out.{fmt}"])


def test_format_for_path():
    assert format_for_path("a/b.safetensors") == "safetensors"
    assert format_for_path("x.NPZ") == "npz"
    assert [format_for_path(f"m{s}") for s in (".pt", ".pth", ".bin")] == ["pt"] * 3
    assert format_for_path("m.keras") == "keras" and format_for_path("m.weights.h5") == "h5"
    with pytest.raises(InvalidInputError, match=r"\.safetensors, \.npz, \.pt/\.pth/\.bin"):
        format_for_path("model.tflite")


def test_tensor_source_is_frozen():
    t = TensorSource("a", "F32", (1,), 4, lambda: memoryview(b"\x00" * 4))
    with pytest.raises(AttributeError):
        t.name = "b"  # type: ignore[misc]
    assert t == TensorSource("a", "F32", (1,), 4, lambda: memoryview(b""))


# ----------------------------------------------------------------------------- torch


def test_pt_without_torch_gives_clear_error(tmp_path, monkeypatch):
    (tmp_path / "m.pt").write_bytes(b"PK\x03\x04whatever")
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
    expect_invalid(tmp_path / "m.pt", "needs PyTorch", "pip install torch", ".safetensors")
    with pytest.raises(InvalidInputError, match="writing .pt files needs PyTorch"):
        write_model(tmp_path / "o.pt", "pt", [("a", "F32", (1,))], lambda n: [b"\0" * 4])
    assert not (tmp_path / "o.pt").exists()


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_torch_roundtrip_all_dtypes(tmp_path):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    model = {}
    for i, name in enumerate(ALL_DTYPES):
        shape = SHAPES[i % len(SHAPES)]
        n = int(np.prod(shape)) * dtypes.get(name).itemsize
        model[f"t.{name}"] = make_array(name, shape, rng.integers(0, 256, n, dtype=np.uint8).tobytes())
    path = tmp_path / "m.pt"
    with open_model(model) as src:
        save_via_engine(src, path, "pt", chunk=5)
    with open_model(path) as src:
        assert src.format == "torch" and [t.name for t in src.tensors] == list(model)
        assert_same(src, model)
    sd = torch.load(path, weights_only=True)
    assert sd["t.BF16"].dtype == torch.bfloat16 and sd["t.F8_E4M3"].dtype == torch.float8_e4m3fn
    assert sd["t.BF16"].view(torch.int16).numpy().tobytes() == model["t.BF16"].tobytes()


def test_torch_native_files(tmp_path):
    torch = pytest.importorskip("torch")
    w = torch.randn(3, 4).to(torch.bfloat16)
    t = torch.arange(12, dtype=torch.float32).reshape(3, 4).t()  # non-contiguous
    checkpoint = {"epoch": 3, "model_state_dict": {"w": w, "t": t, "n": 5, "s": torch.tensor(1.5)},
                  "optimizer_state_dict": {"state": {}}}
    torch.save(checkpoint, tmp_path / "ckpt.pth")
    expected = {"w": w.view(torch.int16).numpy().view(ml_dtypes.bfloat16), "t": t.contiguous().numpy(),
                "s": np.array(1.5, np.float32)}
    with open_model(tmp_path / "ckpt.pth") as src:
        assert [x.name for x in src.tensors] == ["w", "t", "s"]  # scalar "n" skipped
        assert_same(src, expected)
    torch.save({"w": w}, tmp_path / "legacy.bin", _use_new_zipfile_serialization=False)
    with open_model(tmp_path / "legacy.bin") as src:
        assert_same(src, {"w": expected["w"]})
    torch.save({"w": w}, tmp_path / "noext")
    assert detect_format(tmp_path / "noext") == "torch"
    torch.save({"w": w, "nested": {"a": w}}, tmp_path / "nested.pt")
    expect_invalid(tmp_path / "nested.pt", "'nested'", "holds a dict", "flat state dicts")
    torch.save([w], tmp_path / "list.pt")
    expect_invalid(tmp_path / "list.pt", "holds a list", "state_dict()")
    torch.save({"c": torch.ones(2, dtype=torch.complex64)}, tmp_path / "cplx.pt")
    expect_invalid(tmp_path / "cplx.pt", "'c'", "unsupported dtype torch.complex64")


def test_dict_of_torch_tensors():
    torch = pytest.importorskip("torch")
    p = torch.nn.Parameter(torch.randn(2, 3))
    b = torch.randn(5).to(torch.bfloat16)
    with open_model({"p": p, "b": b, "i": torch.tensor(7, dtype=torch.uint16)}) as src:
        assert src.format == "arrays"
        assert_same(src, {"p": p.detach().numpy(), "b": b.view(torch.int16).numpy().view(ml_dtypes.bfloat16),
                          "i": np.array(7, np.uint16)})


def test_malicious_pickle_refused(tmp_path):
    torch = pytest.importorskip("torch")
    marker = tmp_path / "MARKER"
    torch.save({"w": torch.ones(1), "evil": _Evil(marker)}, tmp_path / "evil.pt")
    with open(tmp_path / "raw.pt", "wb") as f:  # a bare (non-zip) pickle
        pickle.dump(_Evil(marker), f, protocol=2)
    with open(tmp_path / "raw.bin", "wb") as f:
        f.write(pickle.dumps({"w": _Evil(marker)}))
    for name in ("evil.pt", "raw.pt", "raw.bin"):
        msg = expect_invalid(tmp_path / name, "refusing to unpickle", name)
        if name != "raw.bin":  # protocol 4 is refused earlier, at an opcode
            assert "GLOBAL posix.system" in msg, msg
        assert not marker.exists()
    assert not marker.exists()
