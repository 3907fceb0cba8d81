"""The dtype vocabulary of modelstore (safetensors' names) and its mapping to numpy.

Each dtype has a stable small integer code shared with the C++ kernels
(csrc/modelstore/dtype.hpp) and stored in on-disk records; codes are append-only.
"""

from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np


@dataclass(frozen=True, slots=True)
class DType:
    name: str  # safetensors spelling, e.g. "BF16"
    code: int  # stable code used on disk and by the kernels
    itemsize: int
    kind: str  # "f" float, "i" signed int, "u" unsigned int, "b" bool
    numpy: np.dtype  # logical numpy dtype (ml_dtypes for bf16/fp8)

    @property
    def is_float(self) -> bool:
        return self.kind == "f"

    @property
    def raw_numpy(self) -> np.dtype:
        """A plain numpy dtype of the same width (for tools that lack bf16/fp8)."""
        if self.kind == "f" and self.name in ("BF16", "F8_E4M3", "F8_E5M2"):
            return np.dtype(f"<u{self.itemsize}")
        return self.numpy


def _d(name: str, code: int, np_dtype, kind: str) -> DType:
    dt = np.dtype(np_dtype)
    if dt.byteorder == ">":
        dt = dt.newbyteorder("<")
    return DType(name, code, dt.itemsize, kind, dt)


_ALL = [
    _d("F64", 0, "<f8", "f"),
    _d("F32", 1, "<f4", "f"),
    _d("F16", 2, "<f2", "f"),
    _d("BF16", 3, ml_dtypes.bfloat16, "f"),
    _d("F8_E4M3", 4, ml_dtypes.float8_e4m3fn, "f"),
    _d("F8_E5M2", 5, ml_dtypes.float8_e5m2, "f"),
    _d("I64", 6, "<i8", "i"),
    _d("I32", 7, "<i4", "i"),
    _d("I16", 8, "<i2", "i"),
    _d("I8", 9, "i1", "i"),
    _d("U8", 10, "u1", "u"),
    _d("BOOL", 11, np.bool_, "b"),
    _d("U16", 12, "<u2", "u"),
    _d("U32", 13, "<u4", "u"),
    _d("U64", 14, "<u8", "u"),
]

BY_NAME: dict[str, DType] = {d.name: d for d in _ALL}
BY_CODE: dict[int, DType] = {d.code: d for d in _ALL}
_BY_NUMPY: dict[np.dtype, DType] = {d.numpy: d for d in _ALL}


def get(name: str) -> DType:
    """Look up a dtype by its safetensors name; raises InvalidInputError if unsupported."""
    try:
        return BY_NAME[name]
    except KeyError:
        from modelstore.errors import InvalidInputError

        raise InvalidInputError(
            f"unsupported dtype {name!r} (supported: {', '.join(BY_NAME)})"
        ) from None


def from_numpy(dt: np.dtype) -> DType:
    """Map a numpy dtype (any byte order) to ours; raises InvalidInputError if unsupported."""
    dt = np.dtype(dt)
    key = dt.newbyteorder("<") if dt.byteorder == ">" else dt
    try:
        return _BY_NUMPY[key]
    except KeyError:
        from modelstore.errors import InvalidInputError

        raise InvalidInputError(f"unsupported numpy dtype {dt} ") from None
