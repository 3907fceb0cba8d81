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


def test_safetensors_metadata_survives_commit_checkout_and_catalog_sync(tmp_path):
    """A .safetensors file's own __metadata__ comes back verbatim on checkout (keys that are
    not valid attribute names included), travels with the version to another store, and
    goes with the version when it is deleted; other sources write no metadata."""
    import json
    import struct

    from safetensors.numpy import save_file

    from modelstore.catalog_sync import export_version, import_version
    from modelstore.errors import InvalidInputError

    def header_meta(path):
        raw = path.read_bytes()
        (n,) = struct.unpack("<Q", raw[:8])
        return json.loads(raw[8:8 + n]).get("__metadata__")

    meta = {"format": "pt", "lr": "3e-5", "not a key!": "ünïcode ✓", "empty": ""}
    src = tmp_path / "m.safetensors"
    save_file({"w": np.arange(12, dtype=np.float32).reshape(3, 4)}, str(src), metadata=meta)
    with Store.init(tmp_path / "a") as a, Store.init(tmp_path / "b") as b:
        v1 = a.commit(src, model="m")
        a.checkout(v1.ref, tmp_path / "out.safetensors")
        assert header_meta(tmp_path / "out.safetensors") == meta
        v2 = a.commit({"w": np.zeros((3, 4), np.float32)}, model="m")
        a.checkout(v2.ref, tmp_path / "plain.safetensors")
        assert header_meta(tmp_path / "plain.safetensors") is None

        doc = json.loads(json.dumps(export_version(a.catalog, v1.id)))  # as it travels
        m = a.manifest(v1.ref)
        b.index.commit_version({}, {}, m.content_id, m.to_json())
        import_version(b.catalog, doc, tensors=[(t.name, t.dtype, str(list(t.shape)), t.nbytes) for t in m.tensors])
        assert b.catalog.file_meta(b.resolve("m@1").id) == meta

        bad = dict(doc, file_meta={"k": 1})
        with pytest.raises(InvalidInputError, match="file_meta"):
            import_version(b.catalog, bad, tensors=[])

        a.delete(v1.ref)
        assert a.catalog.db.execute("SELECT COUNT(*) FROM file_meta").fetchone()[0] == 0


def test_checkout_memory_stays_bounded_by_a_few_chunks(tmp_path):
    """Checking out a 192 MiB version (plain records and a delta chain on top) grows the
    process's peak RSS by far less than the model: records are read (or mapped) one at a
    time and released, never the whole packs."""
    import textwrap

    from conftest import run_python

    rng = np.random.default_rng(3)
    w = (rng.standard_normal((48, 1 << 20), dtype=np.float32) * 0.02)  # 48 x 4 MiB
    with Store.init(tmp_path / "s") as s:
        s.commit({f"w{i}": w[i].reshape(1024, 1024) for i in range(48)}, model="m")
        w *= np.float32(1.0001)
        s.commit({f"w{i}": w[i].reshape(1024, 1024) for i in range(48)}, model="m")
    del w
    script = textwrap.dedent(f"""
        from modelstore.store import Store

        def hwm_mb():
            with open("/proc/self/status") as f:
                return next(int(l.split()[1]) for l in f if l.startswith("VmHWM")) / 1024

        s = Store.open({str(tmp_path / 's')!r})
        base = hwm_mb()
        for ref in ("m@2", "m@1"):
            s.checkout(ref, {str(tmp_path / 'out.safetensors')!r})
        print(hwm_mb() - base)
    """)
    stdout = run_python(script)
    grew_mb = float(stdout.strip())
    assert grew_mb < 100, f"peak RSS grew by {grew_mb:.0f} MB checking out 192 MiB"


def test_float_model_commit_and_checkout_never_import_blosc2(tmp_path):
    """A float model's chunks are splithuff/xor-planes records and a small manifest is
    stored raw, so a short CLI commit or checkout of one does not pay blosc2's ~0.25 s
    import; the manifest still round-trips. Checked in a fresh interpreter."""
    import textwrap

    from conftest import run_python

    script = textwrap.dedent(f"""
        import sys
        import numpy as np
        from modelstore.store import Store

        rng = np.random.default_rng(0)
        w = {{"w": rng.standard_normal((256, 256), dtype=np.float32), "b": np.zeros(256, np.float32)}}
        with Store.init({str(tmp_path / 's')!r}) as s:
            s.commit(w, model="m")
            s.commit({{k: v * np.float32(1.001) for k, v in w.items()}}, model="m")
            s.checkout("m@2", {str(tmp_path / 'out.safetensors')!r})
            assert [t.name for t in s.manifest("m@2").tensors] == ["b", "w"]
            got = s.load("m@1")
        assert got["w"].tobytes() == w["w"].tobytes()
        print("blosc2" in sys.modules)
    """)
    stdout = run_python(script)
    assert stdout.strip() == "False"
