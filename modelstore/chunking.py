"""Cut tensors into row blocks along axis 0 (the unit of dedup, compression and diff).

A chunk is rows [i*c0, i*c0 + c0) of the tensor in C order; the last chunk may be short
(it is NOT padded: its id is the hash of exactly its bytes). A 0-d tensor is one chunk;
a tensor with a zero-length dimension has none. See docs/FORMAT.md §4.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

DEFAULT_TARGET = 4 << 20  # 4 MiB raw per chunk


def row_bytes(shape: tuple[int, ...], itemsize: int) -> int:
    """Bytes per row along axis 0 (the whole tensor for a 0-d tensor)."""
    return itemsize * math.prod(shape[1:]) if shape else itemsize


def chunk_rows(shape: tuple[int, ...], itemsize: int, target: int = DEFAULT_TARGET) -> int:
    """Rows per chunk: as many whole rows as fit in `target` bytes, at least one."""
    if not shape:
        return 1
    rb = row_bytes(shape, itemsize)
    if rb == 0 or shape[0] == 0:
        return 1
    return max(1, min(shape[0], target // rb))


def n_chunks(shape: tuple[int, ...], rows: int) -> int:
    if not shape:
        return 1
    if math.prod(shape) == 0:
        return 0
    return -(-shape[0] // rows)


def chunk_spans(shape: tuple[int, ...], itemsize: int, rows: int) -> Iterator[tuple[int, int]]:
    """(byte offset, byte length) of each chunk within the tensor's raw bytes."""
    count = n_chunks(shape, rows)
    if not shape:
        yield 0, itemsize
        return
    rb = row_bytes(shape, itemsize)
    total = rb * shape[0]
    step = rb * rows
    for i in range(count):
        start = i * step
        yield start, min(step, total - start)
