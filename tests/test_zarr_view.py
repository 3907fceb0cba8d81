"""Stock zarr reads a stored version through the read-only view, bit-exact."""

import asyncio

import ml_dtypes
import numpy as np
import pytest
import zarr

from modelstore.zarr_view import array_name


@pytest.fixture
def version(tmp_path):
    from modelstore.store import Store

    s = Store.init(tmp_path / "store", chunk_target_bytes=4096)
    rng = np.random.default_rng(3)
    tensors = {
        "enc.layer.0.weight": rng.standard_normal((333, 7)).astype(np.float32),  # many chunks, short last one
        "bf": rng.standard_normal((100, 3)).astype(ml_dtypes.bfloat16),
        "f8": rng.standard_normal(50).astype(ml_dtypes.float8_e4m3fn),
        "scalar": np.array(2.5, dtype=np.float64),
        "empty": np.zeros((0, 4), dtype=np.int16),
        "mask": rng.integers(0, 2, (17, 2)).astype(bool),
        "odd/name": np.arange(10, dtype=np.int64),
        "__dunder": np.arange(3, dtype=np.uint8),
    }
    info = s.commit(tensors, model="z")
    yield s, info, tensors
    s.close()


def test_open_group_reads_every_tensor(version):
    s, info, tensors = version
    g = zarr.open_group(store=s.zarr(info.ref), mode="r")
    names = g.attrs["modelstore"]["arrays"]
    assert set(names.values()) == set(tensors)
    for name, expected in tensors.items():
        arr = g[array_name(name)]
        got = arr[...]
        assert got.shape == expected.shape
        assert got.tobytes() == expected.tobytes(), name
        assert arr.attrs["modelstore_dtype"] in ("F32", "BF16", "F8_E4M3", "F64", "I16", "BOOL", "I64", "U8")
    bf = g["bf"]
    assert bf.dtype == np.uint16
    assert np.array_equal(bf[...].view(ml_dtypes.bfloat16), tensors["bf"])


def test_partial_reads(version):
    s, info, tensors = version
    a = zarr.open_array(store=s.zarr(info.ref), path="enc.layer.0.weight", mode="r")
    w = tensors["enc.layer.0.weight"]
    assert np.array_equal(a[100:250, 2:5], w[100:250, 2:5])
    assert np.array_equal(a[-3:], w[-3:])


def test_view_is_read_only(version):
    s, info, _ = version
    st = s.zarr(info.ref)
    assert st.read_only and not st.supports_writes
    with pytest.raises(Exception):
        asyncio.run(st.set("x/zarr.json", None))
    keys = asyncio.run(_collect(st.list()))
    assert "zarr.json" in keys and "enc.layer.0.weight/zarr.json" in keys


async def _collect(agen):
    return [k async for k in agen]
