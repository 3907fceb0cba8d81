"""Shared types and helpers of the model-file readers and writers.

A reader turns a file (or an in-memory dict) into a :class:`ModelSource`: a list of
:class:`TensorSource` whose raw bytes are produced lazily by :meth:`TensorSource.buffer`.
A writer takes ``specs`` (``(name, dtype_name, shape)`` tuples) and a ``read_tensor(name)``
callable yielding raw byte chunks, and streams them into a file through
:func:`atomic_output` (temp file in the target's folder, fsync, ``os.replace``).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import json
import math
import mmap
import os
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Self

import numpy as np

from modelstore import dtypes
from modelstore.errors import InternalError, InvalidInputError, NotFoundError

Spec = tuple[str, str, tuple[int, ...]]
ReadTensor = Callable[[str], Iterable[Any]]
Checked = list[tuple[str, dtypes.DType, tuple[int, ...]]]  # specs after validate_specs


@dataclass(frozen=True)
class TensorSource:
    """One tensor of a model file; its bytes are read only when :meth:`buffer` is called."""

    name: str
    dtype: str  # our dtype name, e.g. "BF16"
    shape: tuple[int, ...]
    nbytes: int  # prod(shape) * itemsize
    _reader: Callable[[], memoryview] = field(repr=False, compare=False)
    _release: Callable[[int, int], None] | None = field(default=None, repr=False, compare=False)

    def buffer(self) -> memoryview:
        """Raw C-order little-endian bytes: a 1-D, format 'B', read-only memoryview of
        length ``nbytes``. Zero-copy where the format allows (safetensors: an mmap slice).
        May be called more than once; do not use it after the ModelSource is closed."""
        view = self._reader()
        if view.nbytes != self.nbytes:  # a reader bug, never the user's input
            raise InternalError(
                f"tensor {self.name!r}: reader produced {view.nbytes} bytes, expected {self.nbytes}"
            )
        return view

    def release(self, start: int = 0, stop: int | None = None) -> None:
        """Hint that bytes [start, stop) of this tensor are done with: a memory-mapped
        reader drops those pages from the process (they stay in the page cache), so
        reading a model bigger than RAM keeps RSS bounded. A no-op for other readers."""
        if self._release is not None:
            self._release(start, self.nbytes if stop is None else stop)

    def array(self) -> np.ndarray:
        """Convenience: the tensor as a read-only numpy array (ml_dtypes for BF16/F8)."""
        return np.frombuffer(self.buffer(), dtype=dtypes.get(self.dtype).numpy).reshape(self.shape)


class ModelSource:
    """An opened model: ``format``, ``tensors`` (file order, unique names), ``metadata``.

    ``params``: the model's logical parameter count when it differs from the sum of the
    tensors' elements (GGUF quantized blocks, reserved record tensors, optimizer state);
    None means "sum the tensors" (:meth:`params_of` gives either).
    Context manager; :meth:`close` releases mmaps and file handles (idempotent).
    """

    def __init__(
        self,
        format: str,
        tensors: Sequence[TensorSource],
        metadata: dict[str, str] | None = None,
        *,
        path: str | None = None,
        closers: Sequence[Callable[[], None]] = (),
        graph: dict[str, Any] | None = None,
        graph_proto: bytes | None = None,
        params: int | None = None,
    ) -> None:
        self.format = format
        self._params, self._derived = params, params is not None
        self.tensors: list[TensorSource] = list(tensors)
        self.metadata: dict[str, str] = dict(metadata or {})
        self.path = path  # the file or folder opened; None for in-memory dicts
        # the network's structure when the file has one (ONNX): a JSON-able dict, see
        # onnx_io.graph_dict, and the serialized ModelProto without initializer bytes
        # (what write_model(..., graph_proto=) needs to write the .onnx back)
        self.graph = graph
        self.graph_proto = graph_proto
        self._closers = list(closers)
        self.closed = False
        check_unique_names((t.name for t in self.tensors), path or "<arrays>")

    @property
    def params(self) -> int | None:
        """The logical parameter count when it differs from the sum of the tensors' elements:
        set by the reader (GGUF dims, Keras without optimizer state), or derived from a
        ``__gguf__`` / ``__hdf5__`` record carried into another format by a checkout; None:
        the sum is right. Read it before close() (a record is read on first use)."""
        if not self._derived:
            self._derived = True
            names = {t.name for t in self.tensors}
            if "__gguf__" in names:
                from .gguf_io import params_from_record

                self._params = params_from_record(self)
            elif "__hdf5__" in names:
                from .keras_io import params_of

                self._params = params_of(self.tensors)
        return self._params

    def params_of(self) -> int:
        """The logical parameter count: ``params`` when the reader set it, else the sum of
        the tensors' elements (what a version's manifest gives)."""
        return self.params if self.params is not None else sum(numel(t.shape) for t in self.tensors)

    def tensor(self, name: str) -> TensorSource:
        """The tensor called ``name``; NotFoundError if there is none."""
        for t in self.tensors:
            if t.name == name:
                return t
        raise NotFoundError(f"{self.path or '<arrays>'}: no tensor named {name!r}")

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        closers, self._closers = self._closers, []
        for fn in reversed(closers):
            fn()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"ModelSource(format={self.format!r}, path={self.path!r}, "
            f"tensors={len(self.tensors)}, closed={self.closed})"
        )


class MappedFile:
    """A file's read-only mmap: zero-copy slices for TensorSource readers, page release
    hints, and a close that fails later reads loudly instead of touching freed memory."""

    def __init__(self, mm: mmap.mmap, path: str) -> None:
        self.mm, self.path, self.closed = mm, path, False

    def reader(self, start: int, stop: int):
        def read() -> memoryview:
            if self.closed:
                raise InternalError(f"{self.path}: buffer() called after the model source was closed")
            return memoryview(self.mm)[start:stop].toreadonly()

        return read

    def releaser(self, base: int):
        def release(start: int, stop: int) -> None:
            lo = (base + start) // mmap.PAGESIZE * mmap.PAGESIZE
            hi = base + stop
            if self.closed or hi <= lo:
                return
            try:
                self.mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)
            except (OSError, ValueError, AttributeError):
                pass  # only a memory hint

        return release

    def close(self) -> None:
        self.closed = True
        try:
            self.mm.close()
        except BufferError:
            # buffers handed out by buffer() are still alive; the mapping is released
            # when the last of them is garbage-collected.
            pass


class Holder:
    """What a source's readers need (arrays, tensors, an open archive), keyed by name.

    Cleared on close, so a buffer() call after close() fails loudly instead of
    returning stale or freed memory.
    """

    def __init__(self, where: str) -> None:
        self.where = where
        self.items: dict[Any, Any] = {}

    def get(self, key: Any) -> Any:
        try:
            return self.items[key]
        except KeyError:
            raise InternalError(
                f"{self.where}: buffer() called after the model source was closed"
            ) from None

    def close(self) -> None:
        self.items.clear()


def require(module: str, extra: str, what: str) -> Any:
    """Import an optional dependency, or one clear InvalidInputError naming the extra."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise InvalidInputError(
            f"{what} needs the {extra!r} extra: pip install 'modelstore[{extra}]'"
        ) from None


def open_file(where: str, expected: str) -> BinaryIO:
    """``open(where, "rb")`` with its failures as one clear modelstore error (``expected``
    names the kind of file, e.g. "a .gguf file", for the is-a-folder case)."""
    try:
        return open(where, "rb")  # noqa: SIM115 - the caller closes it
    except FileNotFoundError:
        raise NotFoundError(f"no such file: {where}") from None
    except IsADirectoryError:
        raise InvalidInputError(f"{where}: is a folder, expected {expected}") from None
    except OSError as e:
        raise InvalidInputError(f"cannot read {where}: {e.strerror}") from None


def load_record(raw: bytes | bytearray, where: str, name: str, fmt: str, fields: dict[str, type]) -> dict[str, Any]:
    """A reserved record tensor (``__gguf__``, ``__hdf5__``): UTF-8 JSON whose ``format`` is
    ``fmt`` and whose ``fields`` have those types; else one InvalidInputError."""
    try:
        rec = json.loads(bytes(raw).decode("utf-8"))
        ok = isinstance(rec, dict) and rec.get("format") == fmt and all(isinstance(rec.get(k), t) for k, t in fields.items())
    except (UnicodeDecodeError, ValueError, RecursionError):
        ok = False
    if not ok:
        raise InvalidInputError(f"{where}: the {name!r} tensor is not a record modelstore wrote ({fmt})")
    return rec


# ----------------------------------------------------------------------------- names


def check_name(name: object, where: str) -> str:
    """A tensor name: a non-empty str (any unicode otherwise; names are never used as paths)."""
    if not isinstance(name, str):
        raise InvalidInputError(
            f"{where}: tensor name {name!r} is a {type(name).__name__}; names must be strings"
        )
    if not name:
        raise InvalidInputError(f"{where}: empty tensor name; every tensor needs a non-empty name")
    return name


def check_unique_names(names: Iterable[object], where: str) -> None:
    seen: set[str] = set()
    for n in names:
        check_name(n, where)
        if n in seen:
            raise InvalidInputError(f"{where}: duplicate tensor name {n!r}; names must be unique")
        seen.add(n)  # type: ignore[arg-type]


def check_shape(shape: object, where: str) -> tuple[int, ...]:
    if not isinstance(shape, (list, tuple)) or not all(
        isinstance(d, (int, np.integer)) and not isinstance(d, (bool, np.bool_)) and d >= 0
        for d in shape
    ):
        raise InvalidInputError(f"{where}: shape {shape!r} is not a list of non-negative integers")
    return tuple(int(d) for d in shape)


def numel(shape: Sequence[int]) -> int:
    return math.prod(shape)


def validate_specs(specs: Iterable[Sequence[Any]], where: str) -> Checked:
    """Check writer specs: unique non-empty names, our dtypes, non-negative int shapes."""
    out = []
    for spec in specs:
        try:
            name, dtype_name, shape = spec
        except (TypeError, ValueError):
            raise InvalidInputError(
                f"{where}: spec {spec!r} is not a (name, dtype, shape) tuple"
            ) from None
        check_name(name, where)
        try:
            dt = dtypes.get(dtype_name)
        except InvalidInputError as e:
            raise InvalidInputError(f"{where}: tensor {name!r}: {e}") from None
        out.append((name, dt, check_shape(shape, f"{where}: tensor {name!r}")))
    check_unique_names((n for n, _, _ in out), where)
    return out


# ----------------------------------------------------------------------------- buffers


def bytes_view(obj: Any) -> memoryview:
    """A 1-D format 'B' read-only memoryview over a C-contiguous bytes-like object."""
    if isinstance(obj, np.ndarray):
        if not obj.flags.c_contiguous:
            obj = np.ascontiguousarray(obj)
        obj = obj.reshape(-1).view(np.uint8)
    mv = obj if isinstance(obj, memoryview) else memoryview(obj)
    if mv.format != "B" or mv.ndim != 1:
        mv = mv.cast("B")
    return mv.toreadonly()


def array_bytes(arr: np.ndarray) -> memoryview:
    """Raw C-order little-endian bytes of a numpy array (copies only if it must)."""
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    if not arr.flags.c_contiguous:
        arr = arr.copy(order="C")  # (np.ascontiguousarray would turn 0-d into 1-d)
    return memoryview(arr.reshape(-1).view(np.uint8)).toreadonly()


def iter_exact(read_tensor: ReadTensor, name: str, nbytes: int) -> Iterator[memoryview]:
    """The chunks of ``read_tensor(name)`` as byte views; checks they add up to ``nbytes``."""
    total = 0
    for chunk in read_tensor(name):
        mv = bytes_view(chunk)
        total += mv.nbytes
        if total > nbytes:
            break
        if mv.nbytes:
            yield mv
    if total != nbytes:
        raise InternalError(
            f"read_tensor({name!r}) yielded {'more than ' if total > nbytes else ''}{total} bytes, "
            f"expected {nbytes}"
        )


def copy_tensor(out: BinaryIO, read_tensor: ReadTensor, name: str, nbytes: int) -> None:
    """Stream the bytes of tensor ``name`` into ``out`` (checked to add up to ``nbytes``)."""
    out.writelines(iter_exact(read_tensor, name, nbytes))


def read_into(dst: Any, read_tensor: ReadTensor, name: str) -> None:
    """Fill the writable buffer ``dst`` (e.g. a preallocated array) with tensor ``name``'s
    bytes; they must add up to exactly its size."""
    view = memoryview(dst).cast("B")
    pos = 0
    for chunk in iter_exact(read_tensor, name, view.nbytes):
        view[pos:pos + chunk.nbytes] = chunk
        pos += chunk.nbytes


def read_whole(read_tensor: ReadTensor, name: str, nbytes: int) -> bytearray:
    """The bytes of tensor ``name`` in one buffer, for writers that need the whole array."""
    buf = bytearray(nbytes)
    read_into(buf, read_tensor, name)
    return buf


# ----------------------------------------------------------------------------- output


WriteBody = Callable[..., None]
Writer = Callable[..., None]


def format_writer(body: WriteBody) -> Writer:
    """The public writer ``(path, specs, read_tensor, metadata=None, **options)`` of a format
    whose ``body(where, checked, read_tensor, metadata, **options)`` does the writing: every
    format takes the same arguments, names the path in its errors and validates the specs
    the same way; ``options`` are the format's own keywords (ONNX: ``graph_proto``)."""

    def write(
        path: str | os.PathLike[str],
        specs: Iterable[Sequence[Any]],
        read_tensor: ReadTensor,
        metadata: dict[str, str] | None = None,
        **options: Any,
    ) -> None:
        where = os.fspath(path)
        body(where, validate_specs(specs, where), read_tensor, metadata, **options)

    write.__name__ = write.__qualname__ = body.__name__
    write.__module__, write.__doc__ = body.__module__, body.__doc__
    return write


def preallocate(fd: int, size: int) -> None:
    """Reserve the file's blocks up to `size` (fallocate(2), Linux): writes into reserved
    blocks skip the filesystem's delayed allocation, which halves a new file's pwrite cost
    on ext4 (8 MB: 1.4 -> 0.8 ms), and a full disk fails here, before any decoding. Size
    is set either way; where the call is missing or unsupported only ftruncate happens
    (never glibc's posix_fallocate, which emulates by writing every block)."""
    fallocate = _libc_fallocate()
    if fallocate is not None and size > 0 and fallocate(fd, 0, 0, size) != 0:
        err = ctypes.get_errno()
        if err == errno.ENOSPC:
            raise OSError(err, os.strerror(err))
    os.ftruncate(fd, size)


@functools.cache
def _libc_fallocate():
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).fallocate
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    fn.restype = ctypes.c_int
    return fn


def _umask() -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str], durable: bool = True) -> Iterator[BinaryIO]:
    """Yield a binary file that replaces ``path`` only if the block finishes.

    The data goes to a hidden temp file in the target's folder; on success it is
    flushed, fsynced (unless ``durable`` is false: a checkout, like git's, need not
    survive a power cut, only never be seen half-written), given normal permissions and
    ``os.replace``d onto ``path`` (and the folder fsynced); on any error the temp file is
    removed.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise NotFoundError(f"cannot write {path}: folder {folder} does not exist")
    if os.path.isdir(path):
        raise InvalidInputError(f"cannot write {path}: it is a folder; give a file path")
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w+b") as f:
            yield f
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if not durable:
        return
    with contextlib.suppress(OSError):  # make the rename durable; not possible everywhere
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
