"""Record encodings: every encoding round-trips bit-exact; corrupt payloads never decode silently."""

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelstore import codecs, dtypes
from modelstore.errors import FormatError, IntegrityError

native = pytest.importorskip("modelstore._native")


@settings(max_examples=300, deadline=None)
@given(k=st.sampled_from([1, 2, 4, 8]), n=st.integers(0, 5000), skew=st.integers(0, 8), seed=st.integers(0, 2**32 - 1))
def test_splithuff_round_trip(k, n, skew, seed):
    rng = np.random.default_rng(seed)
    # planes from uniform noise to nearly constant: exercises raw, Huffman and constant planes
    raw = (rng.integers(0, 256, n * k) >> skew).astype(np.uint8).tobytes()
    payload = native.splithuff_encode(raw, k)
    out = bytearray(len(raw))
    native.splithuff_decode(payload, out)
    assert bytes(out) == raw


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64, ml_dtypes.bfloat16, ml_dtypes.float8_e5m2])
def test_float_chunks_use_splithuff_and_shrink(dtype):
    x = (np.random.default_rng(0).standard_normal(100_000) * 0.02).astype(dtype)
    enc, payload = codecs.encode(x.tobytes(), dtypes.from_numpy(x.dtype))
    assert enc == codecs.SPLITHUFF and len(payload) < 0.9 * x.nbytes
    assert bytes(codecs.decode(enc, payload, x.nbytes)) == x.tobytes()


def test_xor_delta_round_trip():
    rng = np.random.default_rng(1)
    a = rng.standard_normal(50_000).astype(np.float32)
    b = (a * (1 + 1e-4 * rng.standard_normal(a.size))).astype(np.float32)
    payload = codecs.encode_delta(b.tobytes(), a.tobytes(), dtypes.get("F32"))
    assert len(payload) < 0.7 * b.nbytes
    assert bytes(codecs.decode(codecs.XOR_BLOSC2, payload, b.nbytes, base=a.tobytes())) == b.tobytes()
    with pytest.raises(IntegrityError):
        codecs.decode(codecs.XOR_BLOSC2, payload, b.nbytes)  # no base


def test_corrupt_payloads_never_crash_the_decoder():
    """Bit flips either raise ValueError or decode to bytes the chunk hash then rejects;
    anything else (a crash, another exception) fails the test."""
    x = (np.random.default_rng(2).standard_normal(200_000) * 0.02).astype(np.float32).tobytes()
    payload = native.splithuff_encode(x, 4)
    rng = np.random.default_rng(3)
    for _ in range(500):
        bad = bytearray(payload)
        bad[int(rng.integers(len(bad)))] ^= 1 << int(rng.integers(8))
        out = bytearray(len(x))
        try:
            native.splithuff_decode(bytes(bad), out)
        except ValueError:
            continue  # detected by the decoder; otherwise the chunk hash catches it
    with pytest.raises(IntegrityError):
        codecs.decode(codecs.SPLITHUFF, payload[:-7], len(x))
    with pytest.raises(FormatError):
        codecs.decode(99, payload, len(x))
