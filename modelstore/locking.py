"""The store-wide writer lock: commits share it, gc takes it exclusively.

Commits may run concurrently (LMDB and SQLite serialise their own transactions, and each
commit appends to its own pack), but gc must never sweep a chunk that an in-flight commit
has just decided to reuse.
"""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path

from modelstore.errors import LockedError


@contextmanager
def store_lock(path: Path, exclusive: bool, wait: bool = True):
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        flags = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        if not wait:
            flags |= fcntl.LOCK_NB
        try:
            fcntl.flock(fd, flags)
        except BlockingIOError:
            raise LockedError("the store is busy (another modelstore process holds its lock); try again") from None
        yield
    finally:
        os.close(fd)
