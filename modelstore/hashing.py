"""Chunk and manifest identity: XXH3-128 of raw bytes, as 16 bytes or 32 lowercase hex."""

from __future__ import annotations

import xxhash

ALGORITHM = "xxh3-128"
DIGEST_SIZE = 16


def digest(data) -> bytes:
    """The 16-byte id of a bytes-like object (canonical big-endian XXH3-128 digest)."""
    return xxhash.xxh3_128_digest(data)


def hexdigest(data) -> str:
    return xxhash.xxh3_128_hexdigest(data)


def to_hex(cid: bytes) -> str:
    return cid.hex()


def from_hex(text: str) -> bytes:
    raw = bytes.fromhex(text)
    if len(raw) != DIGEST_SIZE:
        raise ValueError(f"expected {2 * DIGEST_SIZE} hex digits, got {len(text)}")
    return raw
