"""In-memory models: a dict of name -> numpy array (or torch tensor, if torch is loaded).

Names must be non-empty strings. Arrays keep the dict's order. Dtypes must be ours
(bool, ints, uints, f16/f32/f64, ml_dtypes bfloat16/float8_e4m3fn/float8_e5m2); object,
string, complex, datetime and void/structured arrays are refused. numpy scalars are taken
as 0-d arrays. Bytes are produced lazily in buffer(): zero-copy for C-contiguous
little-endian arrays, otherwise a C-order little-endian copy of that one array.
Torch tensors are handled as in torch_io (bf16/fp8 viewed as same-width ints, no copy).
The caller must not mutate the arrays while the source is in use.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from modelstore import dtypes
from modelstore.errors import InvalidInputError

from .base import Holder, ModelSource, TensorSource, array_bytes, check_name, numel

WHERE = "<arrays>"


def _array_reader(holder: Holder, name: str):
    def read() -> memoryview:
        return array_bytes(holder.get(name))

    return read


def from_arrays(arrays: Mapping[Any, Any]) -> ModelSource:
    from .torch_io import is_torch_tensor, tensor_source

    holder = Holder(WHERE)
    tensors = []
    for name, value in arrays.items():
        check_name(name, WHERE)
        if is_torch_tensor(value):
            tensors.append(tensor_source(name, value, WHERE, holder))
            continue
        if isinstance(value, np.generic):
            value = np.asarray(value)
        if not isinstance(value, np.ndarray):
            raise InvalidInputError(
                f"{WHERE}: value for {name!r} is a {type(value).__name__}; expected a numpy array or torch tensor"
            )
        try:
            dt = dtypes.from_numpy(value.dtype)
        except InvalidInputError:
            raise InvalidInputError(
                f"{WHERE}: array {name!r} has unsupported dtype {value.dtype} "
                f"(supported: {', '.join(dtypes.BY_NAME)})"
            ) from None
        holder.items[name] = value
        shape = tuple(int(d) for d in value.shape)
        tensors.append(TensorSource(name, dt.name, shape, numel(shape) * dt.itemsize, _array_reader(holder, name)))
    return ModelSource("arrays", tensors, {}, path=None, closers=[holder.close])
