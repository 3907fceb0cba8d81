"""Binary framing of the sync protocol (docs/FORMAT.md "Sync protocol"), shared by both ends.

Chunk records travel exactly as they sit in packs: the 56-byte record header (magic, id,
encoding, raw_len, stored_len, base) then the payload. Lists of chunk ids are their 16-byte
ids back to back. A record is sent as stored (compressed, or an XOR delta) when the receiver
holds the delta's base; otherwise the sender decodes it and sends it plain-encoded, so a
receiver never needs a base it lacks.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

from modelstore import codecs, dtypes
from modelstore.errors import InvalidInputError
from modelstore.packs import NO_BASE, REC_HEADER, REC_MAGIC, pack_path

ID = 16
# What /api/sync/bases answers per chunk: id, base id (zeros if plain), stored_len, raw_len.
BASE_INFO = struct.Struct("<16s16sQQ")
# The body of /api/sync/records: u32 number of wanted ids, the wanted ids, then the ids of
# delta bases the asking store already holds.
COUNT = struct.Struct("<I")
MAX_BATCH_BYTES = 512 << 20  # refuse batches larger than this (a receiver holds one in memory)
MAX_RECORD = 1 << 31


def pack_ids(ids: Iterable[bytes]) -> bytes:
    return b"".join(ids)


def unpack_ids(body: bytes) -> list[bytes]:
    if len(body) % ID:
        raise InvalidInputError(f"a list of chunk ids is a multiple of {ID} bytes, got {len(body)}")
    return [bytes(body[i:i + ID]) for i in range(0, len(body), ID)]


def record_header(cid: bytes, encoding: int, raw_len: int, stored_len: int, base: bytes = NO_BASE) -> bytes:
    return REC_HEADER.pack(REC_MAGIC, cid, encoding, raw_len, stored_len, base)


def read_record(store, cid: bytes, receiver_has, dtype_of: dict[bytes, str]) -> tuple[list, int]:
    """The wire form of one stored chunk: ([header, payload], payload length).

    `receiver_has(base_id) -> bool` says whether the receiver holds a delta's base; when it
    does not, the chunk is decoded and re-encoded plain (with the dtype the manifest gives).
    """
    from modelstore.checkout import read_chunk
    from modelstore.chunkindex import check_entry

    e = check_entry(cid, store.index.get(cid))
    enc, raw_len, base, payload = store.packs.read(cid, e.location, e.stored_len)
    if enc in codecs.DELTA_ENCODINGS and not receiver_has(base):
        data = read_chunk(store, cid)
        enc, payload = codecs.encode(data, dtypes.get(dtype_of.get(cid, "U8")))
        base = NO_BASE
    elif enc not in codecs.DELTA_ENCODINGS:
        base = NO_BASE
    return [record_header(cid, enc, raw_len, len(payload), base), payload], len(payload)


def read_records(store, ids: Iterable[bytes], receiver_has, dtype_of: dict[bytes, str]) -> tuple[list, int]:
    """Wire form of many chunks: (list of buffers to send back to back, payload bytes)."""
    parts: list = []
    total = 0
    for cid in ids:
        bufs, n = read_record(store, cid, receiver_has, dtype_of)
        parts.extend(bufs)
        total += n
    return parts, total


class FileRange(NamedTuple):
    """Bytes [offset, offset + count) of a pack file, sent as they are (os.sendfile)."""

    path: Path
    offset: int
    count: int


def record_segments(store, ids: Iterable[bytes], receiver_has, dtype_of: dict[bytes, str]) -> tuple[list, int]:
    """Wire form of many chunks, in pack order, as segments to send back to back:
    (segments, total bytes).

    A record that travels as stored is its pack bytes (header and payload) unchanged, so a
    run of them adjacent in a pack is one FileRange the socket sends without the bytes
    passing through Python; the stored header is checked against the index first. Other
    records (a delta whose base the receiver lacks) are re-encoded as in read_record."""
    from modelstore.chunkindex import check_entry

    ids = list(ids)
    entries = store.index.get_many(ids)
    ids = sorted(ids, key=lambda c: (entries[c].pack, entries[c].offset) if c in entries else (-1, 0))
    segments: list = []
    total = 0
    fds: dict[int, int] = {}
    try:
        for cid in ids:
            e = check_entry(cid, entries.get(cid))
            delta = e.encoding in codecs.DELTA_ENCODINGS
            size = REC_HEADER.size + e.stored_len
            if not delta or receiver_has(e.base):
                fd = fds.get(e.pack)
                if fd is None:
                    fd = fds[e.pack] = os.open(pack_path(store.layout.packs, e.pack), os.O_RDONLY)
                want = record_header(cid, e.encoding, e.raw_len, e.stored_len, e.base if delta else NO_BASE)
                if os.pread(fd, REC_HEADER.size, e.offset) == want:
                    last = segments[-1] if segments else None
                    if isinstance(last, FileRange) and last.path == pack_path(store.layout.packs, e.pack) \
                            and last.offset + last.count == e.offset:
                        segments[-1] = last._replace(count=last.count + size)
                    else:
                        segments.append(FileRange(pack_path(store.layout.packs, e.pack), e.offset, size))
                    total += size
                    continue
            bufs, n = read_record(store, cid, receiver_has, dtype_of)  # re-encoded (or checked and refused)
            segments.extend(bufs)
            total += REC_HEADER.size + n
    finally:
        for fd in fds.values():
            os.close(fd)
    return segments, total


def iter_wire_records(body):
    """Yield (id, encoding, raw_len, base, payload view) from a batch of records.

    Raises InvalidInputError on framing damage (a truncated or foreign body)."""
    mv = memoryview(body).cast("B")
    pos = 0
    n = len(mv)
    while pos < n:
        if n - pos < REC_HEADER.size:
            raise InvalidInputError("truncated record header in the chunk batch")
        magic, cid, enc, raw_len, slen, base = REC_HEADER.unpack_from(mv, pos)
        if magic != REC_MAGIC:
            raise InvalidInputError(f"bad record magic at byte {pos} of the chunk batch")
        if slen > MAX_RECORD or raw_len > MAX_RECORD:
            raise InvalidInputError(f"record {cid.hex()} claims {max(slen, raw_len)} bytes (limit {MAX_RECORD})")
        pos += REC_HEADER.size
        if n - pos < slen:
            raise InvalidInputError(f"record {cid.hex()} is truncated")
        yield bytes(cid), enc, raw_len, bytes(base), mv[pos:pos + slen]
        pos += slen
