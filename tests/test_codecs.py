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


def _xor_pattern(rng, n: int, k: int, density: float) -> np.ndarray:
    """An XOR mask of n bytes: bytes are nonzero with a probability falling from the low
    plane (density) to the high planes, like a trained weight's step (and exact zeros)."""
    x = rng.integers(0, 256, n, dtype=np.uint8)
    keep = rng.random(n) < density
    if k > 1:
        plane = np.arange(n) % k
        keep &= rng.random(n) < np.where(plane == k - 1, density / 8, 1.0)
    return np.where(keep, x, 0).astype(np.uint8)


@settings(max_examples=200, deadline=None)
@given(k=st.sampled_from([1, 2, 4, 8]), count=st.integers(0, 3000), links=st.integers(1, 5),
       density=st.sampled_from([0.0, 0.001, 0.02, 0.3, 0.9, 1.0]), seed=st.integers(0, 2**32 - 1))
def test_xor_planes_chain_round_trip(k, count, links, density, seed):
    """A chain of xor-planes deltas applied in one call rebuilds every version bit-exact."""
    rng = np.random.default_rng(seed)
    versions = [rng.integers(0, 256, count * k, dtype=np.uint8)]
    for _ in range(links):
        versions.append(versions[-1] ^ _xor_pattern(rng, count * k, k, density))
    payloads = [native.xordelta_encode(versions[i + 1].tobytes(), versions[i].tobytes(), k) for i in range(links)]
    out = bytearray(versions[0].tobytes())
    native.xordelta_apply(payloads[::-1], out)  # top first
    assert bytes(out) == versions[-1].tobytes()
    one = bytearray(versions[-2].tobytes())  # the last link alone, through the codecs API
    codecs.xor_into(codecs.XOR_PLANES, payloads[-1], len(one), one)
    assert bytes(one) == versions[-1].tobytes()


@pytest.mark.parametrize("dtype", ["F64", "F32", "F16", "BF16", "F8_E4M3", "I64", "I32", "I16", "I8", "U8", "BOOL"])
def test_encode_xor_every_dtype_round_trip(dtype):
    dt = dtypes.get(dtype)
    rng = np.random.default_rng(4)
    if dt.kind == "f":
        a = (rng.standard_normal(30_000) * 0.02).astype(dt.numpy)
        b = (a.astype(np.float32) * (1 + 1e-3 * rng.standard_normal(a.size))).astype(dt.numpy)
    elif dt.kind == "b":
        a = rng.random(30_000) < 0.5
        b = a ^ (rng.random(a.size) < 0.01)
    else:
        a = rng.integers(0, 100, 30_000).astype(dt.numpy)
        b = a.copy()
        b[rng.integers(0, a.size, 300)] += 1
    enc, payload = codecs.encode_xor(b.tobytes(), a.tobytes(), dt)
    assert enc == codecs.XOR_PLANES
    assert len(payload) < b.nbytes
    assert bytes(codecs.decode(enc, payload, b.nbytes, base=a.tobytes())) == b.tobytes()


def test_sparse_xor_planes_code_below_one_bit_per_byte():
    """A byte Huffman code cannot go below one bit a byte; zero-run tokens must."""
    rng = np.random.default_rng(5)
    a = rng.integers(0, 256, 1 << 20, dtype=np.uint8)
    b = a.copy()
    b[rng.integers(0, a.size, 2000)] ^= 0x5A
    payload = native.xordelta_encode(b.tobytes(), a.tobytes(), 1)
    assert len(payload) < a.size / 8 / 10
    identical = native.xordelta_encode(a.tobytes(), a.tobytes(), 4)
    assert len(identical) < 64  # every plane constant zero


def test_xor_planes_beats_blosc2_delta_on_trained_like_weights():
    rng = np.random.default_rng(6)
    a = (rng.standard_normal(1 << 18) * 0.02).astype(np.float32)
    dt = dtypes.get("F32")
    for step in (1e-2, 1e-3, 1e-4, 1e-5):  # from a large step to a nearly frozen weight
        b = (a * (1 + step * rng.standard_normal(a.size))).astype(np.float32)
        old = codecs.encode_delta(b.tobytes(), a.tobytes(), dt)
        _enc, new = codecs.encode_xor(b.tobytes(), a.tobytes(), dt)
        assert len(new) < len(old), (step, len(new), len(old))


def test_mixed_chain_of_old_and_new_deltas():
    """A chain may hold xor-blosc2 links from older writers and xor-planes links."""
    rng = np.random.default_rng(7)
    v0 = (rng.standard_normal(20_000) * 0.02).astype(np.float32)
    v1 = (v0 * (1 + 1e-3 * rng.standard_normal(v0.size))).astype(np.float32)
    v2 = (v1 * (1 + 1e-3 * rng.standard_normal(v0.size))).astype(np.float32)
    dt = dtypes.get("F32")
    for older_on_top in (False, True):  # links top first; an old writer may have added the top one
        if older_on_top:
            links = [(codecs.XOR_BLOSC2, codecs.encode_delta(v2.tobytes(), v1.tobytes(), dt)),
                     codecs.encode_xor(v1.tobytes(), v0.tobytes(), dt)]
        else:
            links = [codecs.encode_xor(v2.tobytes(), v1.tobytes(), dt),
                     (codecs.XOR_BLOSC2, codecs.encode_delta(v1.tobytes(), v0.tobytes(), dt))]
        assert any(p[2 + 6 * b] == 5 for e, p in links if e == codecs.XOR_PLANES for b in range(4))
        out = bytearray(v0.tobytes())
        codecs.apply_deltas(links, len(out), out)
        assert bytes(out) == v2.tobytes()


def test_corrupt_xor_planes_payloads_raise_or_leave_output_untouched():
    """Truncation, a wrong version, a wrong plane count or trailing bytes raise
    IntegrityError; random bit flips never crash, and when the decoder raises the output
    buffer is untouched (the chunk hash catches flips that decode)."""
    rng = np.random.default_rng(8)
    a = (rng.standard_normal(100_000) * 0.02).astype(np.float32).tobytes()
    b = (np.frombuffer(a, np.float32) * np.float32(1.0001)).astype(np.float32)
    b[::97] = 0  # some exact changes: the high planes get zero-run coding
    b = b.tobytes()
    enc, payload = codecs.encode_xor(b, a, dtypes.get("F32"))
    methods = {payload[2 + 6 * i] for i in range(4)}
    assert 3 in methods, methods  # the zero-run coder is exercised below
    for bad in (payload[:-5], payload[:10], payload[:1], b"", bytes([9]) + payload[1:],
                payload[:1] + bytes([3]) + payload[2:], payload + b"\0"):
        out = bytearray(a)
        with pytest.raises(IntegrityError):
            codecs.xor_into(enc, bad, len(a), out)
        assert bytes(out) == a
    with pytest.raises(IntegrityError):
        codecs.decode(enc, payload, len(a) - 4, base=a[:-4])  # wrong length for the record
    for _ in range(400):
        bad = bytearray(payload)
        bad[int(rng.integers(len(bad)))] ^= 1 << int(rng.integers(8))
        out = bytearray(a)
        try:
            codecs.xor_into(enc, bytes(bad), len(a), out)
        except IntegrityError:
            assert bytes(out) == a


@pytest.mark.parametrize("dtype", ["F32", "BF16", "F64", "F8_E5M2"])
def test_fused_chain_decode_matches_step_by_step(dtype):
    """A splithuff root plus xor-planes links decodes in one native pass to the same bytes
    as root-then-links; a corrupt root or link raises and leaves the output untouched."""
    dt = dtypes.get(dtype)
    rng = np.random.default_rng(9)
    v = [(rng.standard_normal(40_000) * 0.02).astype(dt.numpy)]
    for _ in range(4):
        v.append((v[-1].astype(np.float32) * (1 + 1e-2 * rng.standard_normal(v[0].size))).astype(dt.numpy))
    enc, root = codecs.encode(v[0].tobytes(), dt)
    assert enc == codecs.SPLITHUFF
    links = [codecs.encode_xor(v[i + 1].tobytes(), v[i].tobytes(), dt) for i in range(4)][::-1]  # top first
    fused = bytearray(v[0].nbytes)
    codecs.decode_chain(enc, root, links, len(fused), fused)
    assert bytes(fused) == v[-1].tobytes()
    stepwise = bytearray(v[0].nbytes)
    codecs.decode(enc, root, len(stepwise), stepwise)
    codecs.apply_deltas(links, len(stepwise), stepwise)
    assert stepwise == fused
    for bad_root, bad_links in ((root[:-3], links), (root, links[:-1] + [(links[-1][0], links[-1][1][:-2])]),
                                (root + b"\0", links)):
        out = bytearray(b"\xab" * v[0].nbytes)
        with pytest.raises(IntegrityError):
            codecs.decode_chain(enc, bad_root, bad_links, len(out), out)
        assert out == bytearray(b"\xab" * v[0].nbytes)


def _plane_bytes(rng, n: int, kind: str) -> bytes:
    """n bytes whose Huffman code is long (dense: about one symbol per table lookup),
    short (skewed: two per lookup) or hits the 12-bit length limit (geometric tail)."""
    if kind == "dense":  # ~7.5 bits a byte
        x = rng.integers(0, 180, n)
    elif kind == "skewed":  # ~2-3 bits a byte, like an exponent plane
        x = np.clip(np.abs(rng.standard_normal(n)) * 2, 0, 255)
    else:  # probabilities 2^-1 .. 2^-40: lengths must be limited to 12
        x = np.minimum(rng.geometric(0.5, n) - 1, 255)
    return x.astype(np.uint8).tobytes()


@pytest.mark.parametrize("kind", ["dense", "skewed", "limited"])
def test_huffman_decoder_paths_round_trip(kind):
    """Both table decoders (one or two symbols a lookup) and the checked tail, at every
    size around the interleaved loop's boundaries, decode bit-exact."""
    rng = np.random.default_rng(11)
    for n in (1, 2, 7, 8, 9, 31, 32, 33, 64, 65, 127, 1000, 4097, 65_536, 65_537, 300_001):
        raw = _plane_bytes(rng, n, kind)
        payload = native.splithuff_encode(raw, 1)
        if n >= 65_536:
            assert payload[2] == 1, (kind, n)  # Huffman-coded
        out = bytearray(n)
        native.splithuff_decode(payload, out)
        assert bytes(out) == raw, (kind, n)


def _incomplete_code_payload(segments: list[list[int]]) -> bytes:
    """A one-plane splithuff payload whose code (symbol 5: 1 bit, symbol 9: 2 bits) leaves
    window pattern 11 unused: no encoder writes one, but a decoder must handle it."""
    lengths = bytearray(128)
    lengths[5 // 2] |= 1 << 4  # symbol 5 (odd: high nibble)
    lengths[9 // 2] |= 2 << 4  # symbol 9
    codes = {5: (0, 1), 9: (1, 2), "bad": (3, 2)}  # canonical codes, bit-reversed (LSB first)
    streams = []
    for syms in segments:
        acc = bits = 0
        for s in syms:
            code, n = codes[s]
            acc |= code << bits
            bits += n
        streams.append(acc.to_bytes((bits + 7) // 8, "little"))
    plane = bytes(lengths) + b"".join(len(s).to_bytes(4, "little") for s in streams[:3]) + b"".join(streams)
    return bytes([1, 1, 1, 0]) + len(plane).to_bytes(4, "little") + plane


def test_incomplete_huffman_code_decodes_checked():
    seq = [5, 9, 9, 5, 5, 5, 9, 5] * 40
    segs = [seq[i * 80:(i + 1) * 80] for i in range(4)]
    out = bytearray(len(seq))
    native.splithuff_decode(_incomplete_code_payload(segs), out)
    assert list(out) == seq
    segs[2] = segs[2][:30] + ["bad"] + segs[2][31:]
    with pytest.raises(ValueError, match="invalid code"):
        native.splithuff_decode(_incomplete_code_payload(segs), bytearray(len(seq)))


@pytest.mark.parametrize("step", [1e-2, 1e-4])
def test_long_chain_with_dense_huffman_links(step):
    """Root plus 6 links whose mantissa planes are Huffman-coded (dense at small steps),
    decoded in one call, equal the last version; so does every prefix of the chain."""
    rng = np.random.default_rng(12)
    dt = dtypes.get("F32")
    v = [(rng.standard_normal(300_000) * 0.02).astype(np.float32)]
    for _ in range(6):
        v.append((v[-1] * (1 + step * rng.standard_normal(v[0].size))).astype(np.float32))
    enc, root = codecs.encode(v[0].tobytes(), dt)
    links = [codecs.encode_xor(v[i + 1].tobytes(), v[i].tobytes(), dt) for i in range(6)]
    assert any(p[2 + 6 * b] in (1, 4) for _, p in links for b in range(4))  # some plane is Huffman-coded
    for m in range(7):
        out = bytearray(v[0].nbytes)
        codecs.decode_chain(enc, root, links[:m][::-1], len(out), out)
        assert bytes(out) == v[m].tobytes(), m


def test_min_gain_trades_huffman_planes_for_raw_ones():
    """encode_xor(min_gain=g) Huffman-codes a plane only if that saves >= g of it: a higher
    bar stores a little more, never less, and decodes to the same bytes."""
    rng = np.random.default_rng(8)
    a = (rng.standard_normal(1 << 18) * 0.02).astype(np.float32)
    b = (a * (1 + 1e-3 * rng.standard_normal(a.size))).astype(np.float32)
    dt = dtypes.get("F32")
    sizes = []
    for gain in (0.0, 0.1, 0.25, 1.0):
        enc, payload = codecs.encode_xor(b.tobytes(), a.tobytes(), dt, gain)
        out = bytearray(a.tobytes())
        codecs.xor_into(enc, payload, a.nbytes, out)
        assert bytes(out) == b.tobytes()
        sizes.append(len(payload))
        methods = [payload[2 + 6 * p] for p in range(4)]
        if gain >= 1.0:
            assert not {1, 4} & set(methods)  # no Huffman plane can save all of itself
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]


def test_sparse_plane_larger_than_the_token_buffer_round_trips():
    """Zero-run planes over 4 Mi elements are tokenized twice instead of buffered (bounded
    memory); both paths write the same format."""
    rng = np.random.default_rng(9)
    a = rng.integers(0, 256, (5 << 20) + 3, dtype=np.uint8)
    b = a.copy()
    b[rng.integers(0, a.size, 40_000)] ^= 0x21
    payload = native.xordelta_encode(b.tobytes(), a.tobytes(), 1)
    assert payload[2] == 3  # zero-run coded
    out = bytearray(a.tobytes())
    native.xordelta_apply([payload], memoryview(out))
    assert bytes(out) == b.tobytes()


def _split_plane(rng, count, kind):
    """A byte plane whose high bits are skewed and low bits are random ("nibble": low 4
    random; "pairs": low 2 random, bits 2-3 always 0) or whose every bit is skewed ("byte")."""
    h = np.minimum(rng.geometric(0.35, count) - 1, 15).astype(np.uint8)
    if kind == "nibble":
        return (h << 4) | rng.integers(0, 16, count, dtype=np.uint8)
    if kind == "pairs":
        return (h << 4) | rng.integers(0, 4, count, dtype=np.uint8)
    return np.minimum(rng.geometric(0.3, count) - 1, 255).astype(np.uint8)


@pytest.mark.parametrize("kind,method,low", [("nibble", 4, 4), ("pairs", 4, 2), ("byte", 1, 0)])
@pytest.mark.parametrize("count", [100_003, 64 * 1024 - 5, 9])
def test_split_huffman_planes_round_trip(kind, method, low, count):
    """A dense plane whose low bits are random codes its high bits alone (method 4, the
    low bits raw); whose low bits carry information, whole bytes (method 1). Any length
    (the packed low bits' tail) round-trips bit-exact."""
    rng = np.random.default_rng(count)
    base = rng.integers(0, 256, count, dtype=np.uint8)
    cur = base ^ _split_plane(rng, count, kind)
    payload = native.xordelta_encode(cur.tobytes(), base.tobytes(), 1)
    if count > 1000:  # tiny planes stay raw: the code table costs more than it saves
        assert (payload[2], payload[3] if method == 4 else 0) == (method, low)
        assert len(payload) < count * 0.9
    out = bytearray(base.tobytes())
    native.xordelta_apply([payload], memoryview(out))
    assert bytes(out) == cur.tobytes()


def test_corrupt_split_huffman_planes_raise():
    """A bad low-bit count, a code for a symbol too wide for the high bits, truncation and
    random flips raise IntegrityError (output untouched) or decode to some bytes the chunk
    hash then rejects; never a crash."""
    rng = np.random.default_rng(13)
    base = rng.integers(0, 256, 50_000, dtype=np.uint8)
    cur = base ^ _split_plane(rng, base.size, "nibble")
    payload = native.xordelta_encode(cur.tobytes(), base.tobytes(), 1)
    assert payload[2:4] == bytes([4, 4])
    a = base.tobytes()
    wide = bytearray(payload)
    wide[8 + 8] |= 1  # a code length for symbol 16: its high bits would not fit in 4
    cases = {"bad low-bit count": payload[:3] + bytes([3]) + payload[4:],
             "bad code length": bytes(wide),
             "overruns|truncated|trailing": payload[:-7]}
    for match, bad in cases.items():
        out = bytearray(a)
        with pytest.raises(IntegrityError, match=match):
            codecs.xor_into(codecs.XOR_PLANES, bad, len(a), out)
        assert bytes(out) == a
    for _ in range(300):
        bad = bytearray(payload)
        bad[int(rng.integers(len(bad)))] ^= 1 << int(rng.integers(8))
        out = bytearray(a)
        try:
            codecs.xor_into(codecs.XOR_PLANES, bytes(bad), len(a), out)
        except IntegrityError:
            assert bytes(out) == a


def test_planes_below_a_value_plane_are_not_read():
    """An incompressible plane is stored as the chunk's own bytes (method 5), so decoding
    takes it from the topmost link that has it and never reads that plane of the records
    below: garbage there changes nothing (a reader that XORed through would decode wrong)."""
    dt = dtypes.get("F32")
    rng = np.random.default_rng(14)
    v = [(rng.standard_normal(50_000) * 0.02).astype(np.float32)]
    for _ in range(2):
        v.append((v[-1] * (1 + 1e-3 * rng.standard_normal(v[0].size))).astype(np.float32))
    enc, root = codecs.encode(v[0].tobytes(), dt)
    links = [codecs.encode_xor(v[i + 1].tobytes(), v[i].tobytes(), dt)[1] for i in range(2)][::-1]  # top first
    assert links[0][2] == 5 and links[1][2] == 5 and root[2] == 0  # plane 0: value, value, raw
    count = v[0].size
    start = 2 + 6 * 4  # plane 0's bytes follow the header in every record

    def garbled(payload):
        b = bytearray(payload)
        b[start:start + count] = rng.integers(0, 256, count, dtype=np.uint8).tobytes()
        return bytes(b)

    for lower in ([links[1]], []):  # the link below the top, and/or the root
        out = bytearray(v[0].nbytes)
        low = [garbled(p) for p in lower] or links[1:]
        chain = [(codecs.XOR_PLANES, p) for p in links[:1] + low]
        codecs.decode_chain(enc, garbled(root) if not lower else root, chain, len(out), out)
        assert bytes(out) == v[-1].tobytes()
    # the top link's own value plane is read: garbling it changes the output
    out = bytearray(v[0].nbytes)
    codecs.decode_chain(enc, root, [(codecs.XOR_PLANES, garbled(links[0])), (codecs.XOR_PLANES, links[1])],
                        len(out), out)
    assert bytes(out) != v[-1].tobytes()
