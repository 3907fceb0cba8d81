"""Model-file readers and writers.

``open_model(obj) -> ModelSource`` reads a model lazily; ``write_model(path, fmt, specs,
read_tensor)`` streams one to disk atomically. See base.py for the TensorSource /
ModelSource interface and each *_io module for the format's decisions.
"""

from __future__ import annotations

import importlib
import os
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from modelstore.errors import InvalidInputError, NotFoundError

from .base import ModelSource, ReadTensor, Spec, TensorSource

__all__ = [
    "ModelSource",
    "TensorSource",
    "Spec",
    "open_model",
    "write_model",
    "format_for_path",
    "detect_format",
    "WRITE_FORMATS",
    "SUPPORTED",
]

SUPPORTED = (
    ".safetensors file, Hugging Face folder (model.safetensors.index.json + shards, or one "
    ".safetensors), .npz, PyTorch state dict (.pt/.pth/.bin), .onnx, .gguf, Keras .keras, "
    "HDF5 weights (.h5), dict of numpy arrays"
)
WRITE_FORMATS = ("safetensors", "npz", "pt", "onnx", "gguf", "h5", "keras")
_SUFFIXES = {".safetensors": "safetensors", ".npz": "npz", ".pt": "torch", ".pth": "torch", ".bin": "torch",
             ".onnx": "onnx", ".gguf": "gguf", ".h5": "h5", ".hdf5": "h5", ".keras": "keras"}
_WRITE_SUFFIXES = {".safetensors": "safetensors", ".npz": "npz", ".pt": "pt", ".pth": "pt", ".bin": "pt",
                   ".onnx": "onnx", ".gguf": "gguf", ".h5": "h5", ".hdf5": "h5", ".keras": "keras"}
# format -> (module, function); imported on first use, so optional dependencies stay optional
_READERS = {"hf-safetensors": (".hf_folder", "read_folder"), "safetensors": (".safetensors_io", "read_safetensors"),
            "npz": (".npz_io", "read_npz"), "torch": (".torch_io", "read_torch"), "onnx": (".onnx_io", "read_onnx"),
            "gguf": (".gguf_io", "read_gguf"), "h5": (".keras_io", "read_h5"), "keras": (".keras_io", "read_h5")}
_WRITERS = {"safetensors": (".safetensors_io", "write_safetensors"), "npz": (".npz_io", "write_npz"),
            "pt": (".torch_io", "write_torch"), "torch": (".torch_io", "write_torch"),
            "onnx": (".onnx_io", "write_onnx"), "gguf": (".gguf_io", "write_gguf"), "h5": (".keras_io", "write_h5"),
            "keras": (".keras_io", "write_keras")}
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_TORCH_LEGACY_MAGIC = (0x1950A86A20F9469CFC6C).to_bytes(10, "little")  # torch's legacy-file magic number


def _sniff(path: str) -> str | None:
    """Guess a file's format from its first bytes; None if unknown."""
    with open(path, "rb") as f:
        head = f.read(64)
        size = os.fstat(f.fileno()).st_size
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except (zipfile.BadZipFile, OSError):
            return None
        if any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
            return "torch"
        if "model.weights.h5" in names:
            return "keras"
        if all(n.endswith(".npy") or n.endswith("/") for n in names):
            return "npz"
        return None
    if len(head) >= 9:
        hlen = int.from_bytes(head[:8], "little")
        if 2 <= hlen <= min(size - 8, 100_000_000) and head[8:9] == b"{":
            return "safetensors"
    if head[:1] == b"\x80" and _TORCH_LEGACY_MAGIC in head:
        return "torch"
    if head.startswith(b"GGUF"):
        return "gguf"
    if head.startswith(_HDF5_MAGIC):
        return "h5"
    return None


def detect_format(path: str | os.PathLike[str]) -> str:
    """'safetensors', 'hf-safetensors', 'npz', 'torch', 'onnx', 'gguf', 'h5' or 'keras' for a
    path; by suffix, then magic bytes (ONNX has none: it needs its .onnx suffix)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise NotFoundError(f"no such file or folder: {path}")
    if os.path.isdir(path):
        return "hf-safetensors"
    fmt = _SUFFIXES.get(os.path.splitext(path)[1].lower())
    if fmt is None:
        try:
            fmt = _sniff(path)
        except OSError as e:
            raise InvalidInputError(f"cannot read {path}: {e.strerror}") from None
    if fmt is None:
        raise InvalidInputError(f"{path}: unknown model file format; supported: {SUPPORTED}")
    return fmt


def open_model(obj: str | os.PathLike[str] | Mapping[str, Any]) -> ModelSource:
    """Open a model lazily: a path (file or folder) or a dict of arrays/tensors.

    Use as a context manager (or call close()) to release mmaps and files.
    """
    if isinstance(obj, Mapping):
        from .arrays import from_arrays

        return from_arrays(obj)
    if isinstance(obj, bytes):
        obj = os.fsdecode(obj)
    if not isinstance(obj, (str, os.PathLike)):
        raise InvalidInputError(
            f"cannot open a {type(obj).__name__} as a model; pass a path or a dict of arrays ({SUPPORTED})"
        )
    path = os.fspath(obj)
    module, reader = _READERS[detect_format(path)]
    return getattr(importlib.import_module(module, __name__), reader)(path)


def format_for_path(path: str | os.PathLike[str]) -> str:
    """The write format for a target path by suffix: 'safetensors', 'npz', 'pt', 'onnx',
    'gguf', 'h5' or 'keras'."""
    suffix = os.path.splitext(os.fspath(path))[1].lower()
    fmt = _WRITE_SUFFIXES.get(suffix)
    if fmt is None:
        raise InvalidInputError(
            f"{os.fspath(path)}: cannot tell the output format from suffix {suffix or '(none)'!r}; "
            "use .safetensors, .npz, .pt/.pth/.bin, .onnx, .gguf, .h5 or .keras"
        )
    return fmt


def write_model(
    path: str | os.PathLike[str],
    fmt: str,
    specs: Iterable[Sequence[Any]],
    read_tensor: ReadTensor,
    metadata: dict[str, str] | None = None,
    graph_proto: bytes | None = None,
) -> None:
    """Stream tensors to ``path`` in format ``fmt`` (one of WRITE_FORMATS), atomically.

    ``specs``: ``(name, dtype_name, shape)`` in output order; ``read_tensor(name)`` yields
    bytes-like chunks of that tensor's raw C-order little-endian bytes (exactly nbytes in
    total, else InternalError and no file is left). ``metadata`` is written by safetensors
    only (``__metadata__``) and ignored by npz and pt; gguf and h5 use it when the tensors
    carry no ``__gguf__`` / ``__hdf5__`` record; onnx as ``metadata_props``.
    ``graph_proto``: the weight-less ONNX ModelProto (``ModelSource.graph_proto``), required
    for onnx and ignored by the others. keras (a Keras 3 .keras zip) needs the ``__hdf5__``
    record of a version read from a .keras file (its config.json).
    """
    if fmt not in _WRITERS:
        raise InvalidInputError(f"unknown output format {fmt!r}; use one of {', '.join(WRITE_FORMATS)}")
    module, writer = _WRITERS[fmt]
    options = {"graph_proto": graph_proto} if fmt == "onnx" else {}
    getattr(importlib.import_module(module, __name__), writer)(path, specs, read_tensor, metadata, **options)
