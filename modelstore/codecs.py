"""Chunk record encodings: raw bytes -> stored payload and back.

Every record says its own encoding (one byte, docs/FORMAT.md §5), so a later encoding
(e.g. XOR delta against a parent chunk) needs no format bump. Identity never depends on
the encoding: the chunk id is the hash of the raw bytes.
"""

from __future__ import annotations

import os

import threading

import numpy as np

from modelstore.dtypes import DType
from modelstore.errors import FormatError, IntegrityError

RAW = 0  # payload is the raw bytes
BLOSC2 = 1  # payload is one blosc2 chunk (self-describing: filters, codec, typesize)
SPLITHUFF = 2  # byte planes, Huffman-coded where it pays (csrc/modelstore/splithuff.hpp)
XOR_BLOSC2 = 3  # blosc2 chunk of (these bytes XOR the base chunk's bytes); base in the record
XOR_PLANES = 4  # (these bytes XOR the base chunk's) as byte planes, each coded on its own (xordelta.hpp)
NAMES = {RAW: "raw", BLOSC2: "blosc2", SPLITHUFF: "splithuff", XOR_BLOSC2: "xor-blosc2", XOR_PLANES: "xor-planes"}
DELTA_ENCODINGS = frozenset({XOR_BLOSC2, XOR_PLANES})

class _LazyBlosc2:
    """`import blosc2` costs ~0.25 s (it pulls in an HTTP client); pay it only when a
    blosc2 record is actually encoded or decoded, so short CLI commands stay fast."""

    def __getattr__(self, name):
        import blosc2 as module

        globals()["blosc2"] = module
        return getattr(module, name)


blosc2 = _LazyBlosc2()

try:
    from modelstore import _native
except ImportError:  # a build without the extension still reads and writes blosc2 records
    _native = None

# Below this, compression headers cost more than they save.
_MIN_COMPRESS = 256
# Keep the raw bytes unless compression saves at least 2%: raw decodes at memory speed.
_KEEP_RATIO = 0.98

THREADS = max(1, min(int(os.environ.get("MODELSTORE_THREADS", "0") or 0) or (os.cpu_count() or 1), 8))


def _cparams(dtype: DType) -> dict:
    """Compression parameters by dtype; chosen by measurement (benchmarks/bench_codecs.py).

    Floats of 2+ bytes: byte shuffle groups the exponent bytes, zstd level 1 codes them
    (~1.18x fp32, ~1.45x bf16 on trained weights). 1-byte types gain nothing from shuffle.
    """
    if dtype.itemsize > 1:
        filters = [blosc2.Filter.SHUFFLE]
    elif dtype.kind == "b":
        filters = [blosc2.Filter.BITSHUFFLE]
    else:
        filters = [blosc2.Filter.NOFILTER]
    return dict(
        codec=blosc2.Codec.ZSTD,
        clevel=1,
        filters=filters,
        typesize=dtype.itemsize,
        nthreads=THREADS,
    )


def encode(raw, dtype: DType) -> tuple[int, bytes | memoryview]:
    """Encode one chunk; returns (encoding, payload). `raw` is any bytes-like object.

    Floats go through splithuff: their sign/exponent plane Huffman-codes to ~3 bits a byte
    while the mantissa planes are stored as is, which beats shuffle+zstd on ratio and
    runs GIL-free at several times its speed (benchmarks/bench_codecs.py). Integer and
    bool chunks have runs and zeros that zstd's matcher exploits, so they use blosc2.
    """
    mv = memoryview(raw).cast("B")
    n = mv.nbytes
    if n < _MIN_COMPRESS:
        return RAW, mv
    if dtype.kind == "f" and _native is not None and n // dtype.itemsize < 0xFFFFFFF0:
        packed = _native.splithuff_encode(mv, dtype.itemsize)
        if len(packed) > n * _KEEP_RATIO:
            return RAW, mv
        return SPLITHUFF, packed
    if n > blosc2.MAX_BUFFERSIZE:
        return RAW, mv
    packed = blosc2.compress2(mv, **_cparams(dtype))
    if len(packed) > n * _KEEP_RATIO:
        return RAW, mv
    return BLOSC2, packed


def xor(a, b) -> np.ndarray:
    """a XOR b as a new uint8 array (equal lengths); numpy releases the GIL."""
    x = np.frombuffer(a, dtype=np.uint8)
    y = np.frombuffer(b, dtype=np.uint8)
    if x.size % 8 == 0:
        return np.bitwise_xor(x.view(np.uint64), y.view(np.uint64)).view(np.uint8)
    return np.bitwise_xor(x, y)


def encode_delta(raw, base, dtype: DType) -> bytes:
    """XOR against the base chunk, then byte shuffle + zstd: a trained weight keeps its
    sign, exponent and top mantissa bits from one checkpoint to the next, so the high
    byte planes of the XOR are mostly zero."""
    x = xor(raw, base)
    return blosc2.compress2(x, **{**_cparams(dtype), "filters": [blosc2.Filter.SHUFFLE] if dtype.itemsize > 1
                                  else [blosc2.Filter.NOFILTER]})


def encode_xor(raw, base, dtype: DType, min_gain: float = 0.0) -> tuple[int, bytes]:
    """The delta record of `raw` against `base`: (encoding, payload).

    xor-planes (native) codes each byte plane of the XOR with the cheapest of raw,
    constant, Huffman and zero-run Huffman, and decodes several times faster than the
    blosc2 fallback used when the extension is missing. A plane is Huffman-coded only if
    that saves `min_gain` of it: a record many versions decode through must pay for the
    ~10x slower decode of a Huffman plane with a larger saving.
    """
    mv = memoryview(raw).cast("B")
    k = dtype.itemsize if dtype.itemsize <= 8 else 1
    if _native is not None and mv.nbytes % k == 0 and mv.nbytes // k < 0xFFFFFFF0:
        return XOR_PLANES, _native.xordelta_encode(mv, memoryview(base).cast("B"), k, min_gain)
    return XOR_BLOSC2, encode_delta(raw, base, dtype)


def apply_deltas(links, raw_len: int, data) -> None:
    """Apply a chain's delta records, [(encoding, payload)] top first, to `data` (its
    decoded root) in place. Consecutive xor-planes links decode in one native call that
    accumulates them in the plane domain and merges once. A link may store a plane as the
    chunk's own bytes, which hides that plane of every record below it, so records apply
    bottom-up. A corrupt link raises IntegrityError (before `data` changes when every link
    is xor-planes)."""
    group: list = []  # consecutive xor-planes payloads, bottom first
    for enc, payload in reversed(links):
        if enc == XOR_PLANES:
            group.append(payload)
            continue
        if group:
            _apply_planes(group[::-1], raw_len, data)
            group = []
        xor_into(enc, payload, raw_len, data)
    if group:
        _apply_planes(group[::-1], raw_len, data)


def decode_chain(root_encoding: int, root_payload, links, raw_len: int, out) -> None:
    """Decode a delta chain into `out`: its plain root record, then every delta link
    [(encoding, payload)], top first. A splithuff root under xor-planes links decodes in
    one native pass in the plane domain (one interleave for the whole chain)."""
    if (root_encoding == SPLITHUFF and _native is not None and links
            and all(e == XOR_PLANES for e, _ in links)):
        return _apply_planes([p for _, p in links], raw_len, out, root=root_payload)
    decode(root_encoding, root_payload, raw_len, out)
    apply_deltas(links, raw_len, out)


def _apply_planes(payloads: list, raw_len: int, data, root=None) -> None:
    if _native is None:
        raise FormatError("this record needs modelstore's native extension (reinstall with a C++ compiler)")
    view = memoryview(data).cast("B")
    if view.nbytes < raw_len:
        raise IntegrityError(f"output buffer holds {view.nbytes} bytes, record needs {raw_len}")
    try:
        _native.xordelta_apply(payloads, view[:raw_len], root)
    except ValueError as exc:
        raise IntegrityError(f"corrupt delta chain: {exc}") from None


_scratch = threading.local()


def xor_into(encoding: int, payload, raw_len: int, data) -> None:
    """Apply one delta record to `data` (the decoded base) in place.

    The XOR payload decodes into a per-thread scratch buffer: a fresh allocation per link
    costs page faults that halved chain decoding speed.
    """
    if encoding == XOR_PLANES:
        return _apply_planes([payload], raw_len, data)
    if encoding != XOR_BLOSC2:
        raise FormatError(f"record encoding {encoding} is not a delta")
    buf = getattr(_scratch, "buf", None)
    if buf is None or buf.size < raw_len:
        buf = _scratch.buf = np.empty(max(raw_len, 1 << 22), dtype=np.uint8)
    x = buf[:raw_len]
    decode(BLOSC2, payload, raw_len, x)
    view = np.frombuffer(memoryview(data).cast("B")[:raw_len], dtype=np.uint8)
    if raw_len % 8 == 0 and view.ctypes.data % 8 == 0:
        np.bitwise_xor(view.view(np.uint64), x.view(np.uint64), out=view.view(np.uint64))
    else:
        np.bitwise_xor(view, x, out=view)


def decode(encoding: int, payload, raw_len: int, out=None, base=None):
    """Decode a payload to exactly `raw_len` bytes (into `out` when given).

    Delta encodings need `base`: the decoded bytes of the record's base chunk.
    """
    if encoding == RAW:
        if len(payload) != raw_len:
            raise IntegrityError(f"raw record is {len(payload)} bytes, expected {raw_len}")
        if out is not None:
            memoryview(out).cast("B")[:raw_len] = payload
            return out
        return payload
    if encoding == BLOSC2:
        try:
            nbytes = blosc2.get_cbuffer_sizes(payload)[0]
        except Exception as exc:  # blosc2 raises bare RuntimeError/ValueError
            raise IntegrityError(f"corrupt blosc2 record: {exc}") from None
        if nbytes != raw_len:
            raise IntegrityError(f"record decodes to {nbytes} bytes, expected {raw_len}")
        try:
            if out is not None:
                blosc2.decompress2(payload, dst=out, nthreads=THREADS)
                return out
            return blosc2.decompress2(payload, nthreads=THREADS)
        except Exception as exc:
            raise IntegrityError(f"corrupt blosc2 record: {exc}") from None
    if encoding in DELTA_ENCODINGS:
        if base is None or len(base) != raw_len:
            raise IntegrityError("delta record without its base chunk")
        dst = out if out is not None else bytearray(raw_len)
        memoryview(dst).cast("B")[:raw_len] = base
        xor_into(encoding, payload, raw_len, dst)
        return dst
    if encoding == SPLITHUFF:
        if _native is None:
            raise FormatError("this record needs modelstore's native extension (reinstall with a C++ compiler)")
        dst = out if out is not None else bytearray(raw_len)
        view = memoryview(dst).cast("B")
        if view.nbytes < raw_len:
            raise IntegrityError(f"output buffer holds {view.nbytes} bytes, record needs {raw_len}")
        try:  # planes decode into a reused per-thread buffer, then interleave once
            _native.splithuff_decode(payload, view[:raw_len])
        except ValueError as exc:
            raise IntegrityError(f"corrupt splithuff record: {exc}") from None
        return dst
    raise FormatError(f"unknown record encoding {encoding}: upgrade modelstore to read this store")
