"""Bit-exact round trips through the store for every dtype, shape and file format."""

import math

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelstore import dtypes
from modelstore.store import Store

DTYPES = ["F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2", "I64", "I32", "I16", "I8", "U8", "BOOL"]
SHAPES = st.one_of(
    st.just(()), st.just((0,)), st.just((0, 5)), st.just((1,)), st.just((1, 7)),
    st.tuples(st.integers(1, 300)), st.tuples(st.integers(1, 60), st.integers(1, 9)),
    st.tuples(st.integers(1, 9), st.integers(0, 3), st.integers(1, 5)),
)


def random_tensor(draw_bytes: bytes, dtype: str, shape) -> np.ndarray:
    """Any bit pattern (NaNs, infs, subnormals included) for the given dtype and shape."""
    dt = dtypes.get(dtype)
    n = math.prod(shape) * dt.itemsize
    raw = (draw_bytes * (n // max(1, len(draw_bytes)) + 1))[:n] if draw_bytes else bytes(n)
    arr = np.frombuffer(raw, dtype=dt.raw_numpy if dt.kind != "b" else np.uint8).copy()
    if dt.kind == "b":
        arr = arr % 2
    return arr.view(dt.numpy).reshape(shape)


@st.composite
def models(draw):
    n = draw(st.integers(1, 5))
    names = draw(st.lists(st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                                  min_size=1, max_size=12), min_size=n, max_size=n, unique=True))
    out = {}
    for name in names:
        dtype = draw(st.sampled_from(DTYPES))
        shape = draw(SHAPES)
        out[name] = random_tensor(draw(st.binary(min_size=1, max_size=64)), dtype, shape)
    return out


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory):
    # A small chunk target so that multi-chunk tensors and short last chunks are common.
    s = Store.init(tmp_path_factory.mktemp("rt") / "store", chunk_target_bytes=64)
    yield s
    s.close()


def assert_same(a: dict, b: dict):
    assert set(a) == set(b)
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert a[k].shape == b[k].shape, k
        assert a[k].tobytes() == b[k].tobytes(), k


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(model=models(), fmt=st.sampled_from(["arrays", "safetensors", "npz"]))
def test_roundtrip_bit_exact(shared_store, tmp_path_factory, model, fmt):
    from modelstore.formats import write_model

    src = model
    if fmt != "arrays":
        path = tmp_path_factory.mktemp("f") / f"m.{fmt}"
        specs = [(k, dtypes.from_numpy(v.dtype).name, v.shape) for k, v in model.items()]
        write_model(path, fmt, specs, lambda name: iter([model[name].tobytes()]))
        src = path
    info = shared_store.commit(src, model="rt")
    assert_same(model, shared_store.load(info.ref))
    out = tmp_path_factory.mktemp("o") / "out.safetensors"
    shared_store.checkout(info.ref, out)
    from modelstore.formats import open_model

    with open_model(out) as m:
        back = {t.name: np.frombuffer(t.buffer(), dtype=dtypes.get(t.dtype).numpy).reshape(t.shape) for t in m.tensors}
    assert_same(model, back)


def test_every_dtype_through_npz_and_safetensors(store, tmp_path, rng):
    model = {d: random_tensor(rng.bytes(97), d, (13, 3)) for d in DTYPES}
    for fmt in ("safetensors", "npz"):
        info = store.commit(model, model="all")
        out = tmp_path / f"all.{fmt}"
        store.checkout(info.ref, out)
        again = store.commit(out, model="all-" + fmt)
        assert again.content_id == info.content_id  # same weights, same content id
        assert again.stored == 0
        assert_same(model, store.load(again.ref))


def test_stats_in_manifest(store):
    a = np.array([[1.0, -2.0], [np.nan, 4.0], [np.inf, 0.5]], dtype=np.float32)
    info = store.commit({"a": a}, model="s")
    t = store.manifest(info.ref).tensors[0]
    assert t.stats.n == 6 and t.stats.n_nan == 1 and t.stats.n_inf == 1
    assert t.stats.min == -2.0 and t.stats.max == 4.0
    assert t.stats.sumsq == pytest.approx(1 + 4 + 16 + 0.25)
    assert t.stats.mean == pytest.approx((1 - 2 + 4 + 0.5) / 4)
    assert sum(t.chunk_sumsq) == pytest.approx(t.stats.sumsq)


def test_bf16_values_survive(store):
    x = np.linspace(-3, 3, 1001, dtype=np.float32).astype(ml_dtypes.bfloat16)
    info = store.commit({"x": x}, model="bf")
    y = store.load(info.ref)["x"]
    assert y.dtype == ml_dtypes.bfloat16 and y.tobytes() == x.tobytes()
