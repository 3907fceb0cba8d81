"""PyTorch state-dict files (.pt/.pth/.bin) and torch tensors; torch is imported lazily.

Reader:
- ``torch.load(path, map_location="cpu", weights_only=True, mmap=True)`` for zip-format
  files (tensor data stays on disk, mmapped); legacy (non-zip) files are loaded with
  ``mmap=False`` (wholly into memory). ``weights_only=False`` is never used: a pickle that
  references anything but tensors/containers/primitives (e.g. ``os.system``) is refused
  with InvalidInputError("refusing to unpickle ...") and nothing in it is executed.
- accepted layouts: a flat dict name -> tensor, or a dict holding a dict under
  ``state_dict`` / ``model_state_dict`` (then only that dict is read; sibling keys such
  as ``epoch`` or ``optimizer_state_dict`` are ignored).
- inside the state dict, scalar values (int, float, bool, str, None) are skipped (not
  tensors; e.g. ``num_batches_tracked`` saved as an int); any other value (nested dict,
  list, ...) is an InvalidInputError naming the key. Sparse, quantized and complex tensors
  are refused.
- tensor bytes: ``t.contiguous()`` (a copy only for non-contiguous views), then viewed as
  an integer type of the same width (bf16/fp8 included) and exposed through numpy with no
  further copy.

Writer: the whole state dict is materialised in memory (``torch.save`` needs every tensor),
filled chunk by chunk into preallocated tensors, then saved through the atomic temp file.
``metadata`` is ignored (a state dict has no place for it).
"""

from __future__ import annotations

import os
import pickle
import warnings
import zipfile
from typing import Any

import numpy as np

from modelstore import dtypes
from modelstore.errors import InvalidInputError, NotFoundError

from .base import Checked, Holder, ModelSource, ReadTensor, TensorSource, atomic_output, format_writer, numel, read_into

NEEDS_TORCH = "pip install torch (CPU build), or convert to .safetensors"
STATE_DICT_KEYS = ("state_dict", "model_state_dict")
SCALARS = (int, float, bool, str, type(None))

# our name -> torch dtype attribute name
_TORCH_NAMES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
    "U16": "uint16",
    "U32": "uint32",
    "U64": "uint64",
}
# a plain integer torch dtype of the same width, which .numpy() always supports
_RAW = {1: "uint8", 2: "int16", 4: "int32", 8: "int64"}


def import_torch(why: str = "reading .pt files"):
    try:
        import torch
    except ImportError:
        raise InvalidInputError(f"{why} needs PyTorch: {NEEDS_TORCH}") from None
    return torch


def is_torch_tensor(obj: object) -> bool:
    """True for a torch.Tensor, without importing torch if it is not loaded already."""
    import sys

    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.Tensor)


def our_dtype(torch, tdtype) -> str | None:
    for ours, tname in _TORCH_NAMES.items():
        if getattr(torch, tname, None) == tdtype:
            return ours
    return None


def torch_dtype(torch, ours: str):
    t = getattr(torch, _TORCH_NAMES[ours], None)
    if t is None:
        raise InvalidInputError(f"this PyTorch ({torch.__version__}) has no {_TORCH_NAMES[ours]}; upgrade torch")
    return t


def tensor_source(name: str, t: Any, where: str, holder: Holder) -> TensorSource:
    """A TensorSource over a torch tensor (read lazily, zero-copy when contiguous on CPU).

    The tensor is kept in ``holder`` under ``name``; closing the holder releases it.
    """
    import torch

    if t.layout != torch.strided or t.is_quantized:
        raise InvalidInputError(f"{where}: tensor {name!r} is {t.layout}{' quantized' if t.is_quantized else ''}; only dense tensors are supported")
    if t.device.type != "cpu":
        if t.device.type == "meta":
            raise InvalidInputError(f"{where}: tensor {name!r} is on the meta device (it has no data)")
        t = t.detach().cpu()
    ours = our_dtype(torch, t.dtype)
    if ours is None:
        raise InvalidInputError(
            f"{where}: tensor {name!r} has unsupported dtype {t.dtype} (supported: {', '.join(dtypes.BY_NAME)})"
        )
    dt = dtypes.get(ours)
    shape = tuple(int(d) for d in t.shape)
    holder.items[name] = t

    def read() -> memoryview:
        c = holder.get(name).detach().contiguous().reshape(-1)  # reshape(-1): 0-d -> (1,), a view when contiguous
        raw = c.view(getattr(torch, _RAW[dt.itemsize])) if c.dtype != torch.bool else c
        arr = raw.numpy()
        if arr.dtype.byteorder == ">":  # never on little-endian hosts
            arr = arr.astype(arr.dtype.newbyteorder("<"))
        return memoryview(arr.view(np.uint8)).toreadonly()

    return TensorSource(name, ours, shape, numel(shape) * dt.itemsize, read)


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    for ln in lines:  # torch's weights_only message names the offending global on one line
        if "unsupported global" in ln.lower() or "unsupported operand" in ln.lower():
            return ln[:300]
    return (lines[0] if lines else type(e).__name__)[:300]


def read_torch(path: str | os.PathLike[str]) -> ModelSource:
    where = os.fspath(path)
    if not os.path.exists(where):
        raise NotFoundError(f"no such file: {where}")
    if os.path.isdir(where):
        raise InvalidInputError(f"{where}: is a folder, expected a PyTorch .pt/.pth/.bin file")
    torch = import_torch()
    use_mmap = zipfile.is_zipfile(where)
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": we report failures ourselves
            warnings.simplefilter("ignore")
            obj = torch.load(where, map_location="cpu", weights_only=True, mmap=use_mmap)
    except pickle.UnpicklingError as e:
        raise InvalidInputError(
            f"refusing to unpickle {where}: it holds objects other than tensors ({_first_line(e)}); "
            "if you trust it, load it yourself and save model.state_dict() or .safetensors"
        ) from None
    except Exception as e:  # corrupt or not a torch file: torch raises many types
        raise InvalidInputError(f"{where}: not a readable PyTorch file ({type(e).__name__}: {_first_line(e)})") from None
    state = obj
    if isinstance(obj, dict):
        for key in STATE_DICT_KEYS:
            if isinstance(obj.get(key), dict):
                state = obj[key]
                break
    if not isinstance(state, dict):
        raise InvalidInputError(
            f"{where}: holds a {type(state).__name__}, expected a state dict (name -> tensor); "
            "save model.state_dict() instead of the model"
        )
    tensors = []
    holder = Holder(where)
    for name, value in state.items():
        if isinstance(value, torch.Tensor):
            if not isinstance(name, str):
                raise InvalidInputError(f"{where}: tensor key {name!r} is not a string")
            tensors.append(tensor_source(name, value, where, holder))
        elif isinstance(value, SCALARS):
            continue  # documented: scalars in a state dict are skipped
        else:
            raise InvalidInputError(
                f"{where}: key {name!r} holds a {type(value).__name__}, not a tensor; "
                "only flat state dicts (name -> tensor) are supported"
            )
    # closing drops the tensors; their mmapped storage is freed with the last reference
    return ModelSource("torch", tensors, {}, path=where, closers=[holder.close])


@format_writer
def write_torch(where: str, checked: Checked, read_tensor: ReadTensor, metadata: dict[str, str] | None) -> None:
    """Write a state dict with ``torch.save``: every tensor preallocated and filled in place
    (``metadata`` ignored: a state dict has no place for it)."""
    torch = import_torch("writing .pt files")
    state: dict[str, Any] = {}
    for name, dt, shape in checked:
        t = torch.empty(shape, dtype=torch_dtype(torch, dt.name))
        flat = t.reshape(-1)
        read_into((flat.view(getattr(torch, _RAW[dt.itemsize])) if flat.dtype != torch.bool else flat).numpy(),
                  read_tensor, name)
        state[name] = t
    with atomic_output(where) as f:
        torch.save(state, f)
