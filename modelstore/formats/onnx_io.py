"""ONNX (.onnx) reader and writer: initializers as tensors, the graph kept beside them.

Reader (needs the 'onnx' extra): ``onnx.load_model(path, load_external_data=False)``, then
every initializer of the main graph becomes a tensor, bit-exact, from ``raw_data``, from the
typed fields (``float_data``, ``int32_data`` holding 16/8-bit bit patterns, ...), or from an
external data file. External locations must be relative paths that resolve (symlinks
included) inside the model's folder, with offset + length inside that file; anything else is
an InvalidInputError and nothing outside the folder is opened. External files are mmapped and
read lazily. Sparse initializers, string/complex/4-bit tensors are refused.

The graph is exposed two ways on the ModelSource:
- ``graph_proto``: the serialized ModelProto with every initializer's data removed (names,
  dtypes and dims kept) — what the writer needs to rebuild the file;
- ``graph``: a JSON-able dict (:func:`graph_dict`) for diffs and figures:
  ``{"format": "onnx", "ir_version", "opset": {domain: version}, "producer", "name",
  "nodes": [{"name", "op_type", "domain", "inputs", "outputs", "attributes": {name: value}}],
  "inputs"/"outputs"/"value_info": [{"name", "dtype", "shape"}],
  "initializers": {name: shape}, "initializer_dtypes": {name: dtype}}``. Graph inputs that
  are initializers are left out of "inputs". Shapes list ints, dim_param strings, or null
  (unknown); dtype is our name (F32, ...) or ONNX's (e.g. "STRING"). Tensor-valued attributes
  (Constant) become ``{"dtype", "shape", "xxh3", "values" (≤ 16 items)}``; subgraphs
  ``{"graph": name, "nodes": count}``.
``metadata`` is the model's ``metadata_props``.

Writer: only from a graph (``graph_proto``); each spec fills the initializer of that name
(dims and data type updated), tensors the graph lacks are added as extra initializers, and an
initializer the specs lack is an error. Above ``external_threshold`` bytes (protobuf's 2 GiB
limit) the data goes to ``<file>.data`` next to the model, 4 KiB-aligned, written first.
"""

from __future__ import annotations

import mmap
import os
from typing import Any

import numpy as np
import xxhash

from modelstore import dtypes
from modelstore.errors import InternalError, InvalidInputError, NotFoundError

from .base import (
    Checked,
    Holder,
    ModelSource,
    ReadTensor,
    TensorSource,
    atomic_output,
    bytes_view,
    copy_tensor,
    format_writer,
    numel,
    read_whole,
    require,
)

EXTERNAL_THRESHOLD = 1_800_000_000  # bytes of initializers above which the writer uses external data
EXTERNAL_ALIGN = 4096
SHORT_VALUES = 16

# ONNX TensorProto.DataType -> our dtype
ONNX_TO_OURS = {1: "F32", 2: "U8", 3: "I8", 4: "U16", 5: "I16", 6: "I32", 7: "I64", 9: "BOOL", 10: "F16",
                11: "F64", 12: "U32", 13: "U64", 16: "BF16", 17: "F8_E4M3", 19: "F8_E5M2"}
OURS_TO_ONNX = {v: k for k, v in ONNX_TO_OURS.items()}
# which typed field holds each type when raw_data is absent, and the integer view to cast to
_INT32_FIELD = {"I32": "<i4", "I16": "<i2", "I8": "i1", "U16": "<u2", "U8": "u1", "BOOL": "u1",
                "F16": "<u2", "BF16": "<u2", "F8_E4M3": "u1", "F8_E5M2": "u1"}


def _onnx(what: str):
    return require("onnx", "onnx", what)


def _dtype_name(onnx, code: int) -> str:
    if code in ONNX_TO_OURS:
        return ONNX_TO_OURS[code]
    try:
        return onnx.TensorProto.DataType.Name(code)
    except ValueError:
        return f"onnx type {code}"


# ----------------------------------------------------------------------------- reader


class _External:
    """External data files of one model: confined to its folder, mmapped once each."""

    def __init__(self, folder: str, where: str) -> None:
        self.folder = os.path.realpath(folder)
        self.where = where
        self.maps: dict[str, mmap.mmap | None] = {}

    def resolve(self, location: str, name: str) -> str:
        bad = (not location or "\x00" in location or os.path.isabs(location) or location.startswith(("/", "\\"))
               or any(part == ".." for part in location.replace("\\", "/").split("/")))
        target = os.path.realpath(os.path.join(self.folder, location))
        if bad or os.path.commonpath([self.folder, target]) != self.folder or target == self.folder:
            raise InvalidInputError(
                f"{self.where}: initializer {name!r} points at external data {location!r}, outside the model's folder; refusing it"
            )
        if not os.path.isfile(target):
            raise InvalidInputError(f"{self.where}: initializer {name!r}: external data file {location!r} is missing")
        return target

    def reader(self, location: str, name: str, offset: int, nbytes: int):
        target = self.resolve(location, name)
        if target not in self.maps:
            try:
                with open(target, "rb") as f:
                    size = os.fstat(f.fileno()).st_size
                    self.maps[target] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else None
            except OSError as e:
                raise InvalidInputError(f"{self.where}: cannot read external data {location!r}: {e.strerror}") from None
        mm = self.maps[target]
        size = len(mm) if mm is not None else 0
        if offset + nbytes > size:
            raise InvalidInputError(
                f"{self.where}: initializer {name!r} needs bytes {offset}..{offset + nbytes} of {location!r}, "
                f"which has {size} (truncated?)"
            )

        def read() -> memoryview:
            if target not in self.maps:
                raise InternalError(f"{self.where}: buffer() called after the model source was closed")
            return memoryview(mm)[offset:offset + nbytes].toreadonly() if mm is not None else memoryview(b"")

        return read

    def close(self) -> None:
        maps, self.maps = self.maps, {}
        for mm in maps.values():
            try:
                if mm is not None:
                    mm.close()
            except BufferError:
                pass  # views still alive; released when collected


def _typed_bytes(init, dt: str, count: int, where: str) -> bytes:
    """An initializer's bytes from its typed repeated field (bit patterns kept)."""
    if dt == "F32":
        arr = np.asarray(init.float_data, dtype="<f4")
    elif dt == "F64":
        arr = np.asarray(init.double_data, dtype="<f8")
    elif dt == "I64":
        arr = np.asarray(init.int64_data, dtype="<i8")
    elif dt in ("U32", "U64"):
        arr = np.asarray(init.uint64_data, dtype="<u8").astype("<u4" if dt == "U32" else "<u8")
    else:
        arr = np.asarray(init.int32_data, dtype="<i4").astype(_INT32_FIELD[dt])
    if arr.size != count:
        raise InvalidInputError(f"{where}: initializer {init.name!r} holds {arr.size} values, its dims need {count}")
    return arr.tobytes()


def read_onnx(path: str | os.PathLike[str]) -> ModelSource:
    where = os.fspath(path)
    onnx = _onnx("reading .onnx")
    from google.protobuf.message import DecodeError

    if not os.path.exists(where):
        raise NotFoundError(f"no such file: {where}")
    try:
        model = onnx.load_model(where, load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, TypeError, OSError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise InvalidInputError(f"{where}: not a readable ONNX model ({msg[:200]})") from None
    if model.ir_version <= 0:
        raise InvalidInputError(f"{where}: not an ONNX model (no ir_version)")
    g = model.graph
    if len(g.sparse_initializer):
        raise InvalidInputError(f"{where}: sparse initializers are not supported ({g.sparse_initializer[0].values.name!r})")
    ext = _External(os.path.dirname(os.path.abspath(where)), where)
    holder = Holder(where)
    tensors: list[TensorSource] = []
    try:
        for i, init in enumerate(g.initializer):
            tensors.append(_initializer(onnx, init, i, ext, holder, where))
            _strip(init)
        graph = graph_dict(model)
        graph_proto = model.SerializeToString()
    except BaseException:
        ext.close()
        raise
    metadata = {p.key: p.value for p in model.metadata_props}
    return ModelSource("onnx", tensors, metadata, path=where, closers=[holder.close, ext.close],
                       graph=graph, graph_proto=graph_proto)


def _initializer(onnx, init, i: int, ext: _External, holder: Holder, where: str) -> TensorSource:
    name = init.name
    if init.data_type not in ONNX_TO_OURS:
        raise InvalidInputError(
            f"{where}: initializer {name!r} has type {_dtype_name(onnx, init.data_type)}, which modelstore cannot store "
            f"(supported: {', '.join(OURS_TO_ONNX)})"
        )
    dt = ONNX_TO_OURS[init.data_type]
    shape = tuple(int(d) for d in init.dims)
    if any(d < 0 for d in shape):
        raise InvalidInputError(f"{where}: initializer {name!r} has negative dims {list(shape)}")
    count = numel(shape)
    nbytes = count * dtypes.get(dt).itemsize
    if init.data_location == onnx.TensorProto.EXTERNAL:
        info = {e.key: e.value for e in init.external_data}
        try:
            offset, length = int(info.get("offset", "0")), int(info.get("length", str(nbytes)))
        except ValueError:
            raise InvalidInputError(f"{where}: initializer {name!r} has a non-integer external offset/length") from None
        if offset < 0 or length != nbytes:
            raise InvalidInputError(
                f"{where}: initializer {name!r} external length {length} at offset {offset}; its dims need {nbytes} bytes"
            )
        return TensorSource(name, dt, shape, nbytes, ext.reader(info.get("location", ""), name, offset, nbytes))
    if init.HasField("raw_data"):
        raw = init.raw_data
        if len(raw) != nbytes:
            raise InvalidInputError(f"{where}: initializer {name!r} has {len(raw)} bytes of raw_data, its dims need {nbytes}")
    else:
        raw = _typed_bytes(init, dt, count, where)
    holder.items[i] = raw
    return TensorSource(name, dt, shape, nbytes, lambda: bytes_view(holder.get(i)))


def _strip(init) -> None:
    for fld in ("raw_data", "float_data", "int32_data", "string_data", "int64_data", "double_data",
                "uint64_data", "external_data"):
        init.ClearField(fld)
    init.ClearField("data_location")


# ----------------------------------------------------------------------------- graph dict


def _value_info(onnx, vi) -> dict[str, Any]:
    out: dict[str, Any] = {"name": vi.name, "dtype": None, "shape": None}
    if vi.type.HasField("tensor_type"):
        tt = vi.type.tensor_type
        out["dtype"] = _dtype_name(onnx, tt.elem_type) if tt.elem_type else None
        if tt.HasField("shape"):
            out["shape"] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim]
    return out


def _tensor_summary(onnx, t) -> dict[str, Any]:
    out: dict[str, Any] = {"dtype": _dtype_name(onnx, t.data_type), "shape": [int(d) for d in t.dims]}
    try:
        arr = onnx.numpy_helper.to_array(t)
        out["xxh3"] = xxhash.xxh3_64_hexdigest(np.ascontiguousarray(arr).tobytes() if arr.dtype != object else repr(arr.tolist()))
        if arr.size <= SHORT_VALUES and arr.dtype.kind in "biuf":
            out["values"] = arr.reshape(-1).astype(float if arr.dtype.kind == "f" else int).tolist()
    except Exception:  # noqa: BLE001 - a summary only; external/odd tensors just lack the hash
        out["xxh3"] = None
    return out


def _attr(onnx, a) -> Any:
    A = onnx.AttributeProto
    t = a.type
    if t == A.FLOAT:
        return a.f
    if t == A.INT:
        return a.i
    if t == A.STRING:
        return a.s.decode("utf-8", "backslashreplace")
    if t == A.FLOATS:
        return list(a.floats)
    if t == A.INTS:
        return list(a.ints)
    if t == A.STRINGS:
        return [s.decode("utf-8", "backslashreplace") for s in a.strings]
    if t == A.TENSOR:
        return _tensor_summary(onnx, a.t)
    if t == A.TENSORS:
        return [_tensor_summary(onnx, x) for x in a.tensors]
    if t == A.GRAPH:
        return {"graph": a.g.name, "nodes": len(a.g.node)}
    if t == A.GRAPHS:
        return [{"graph": x.name, "nodes": len(x.node)} for x in a.graphs]
    return str(onnx.helper.get_attribute_value(a))[:1000]


def graph_dict(model) -> dict[str, Any]:
    """The light, JSON-able view of an ONNX model's structure (see the module docstring)."""
    onnx = _onnx("reading .onnx")
    g = model.graph
    init_names = {i.name for i in g.initializer}
    return {
        "format": "onnx",
        "ir_version": model.ir_version,
        "opset": {(o.domain or "ai.onnx"): o.version for o in model.opset_import},
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "name": g.name,
        "nodes": [
            {"name": n.name, "op_type": n.op_type, "domain": n.domain, "inputs": list(n.input),
             "outputs": list(n.output), "attributes": {a.name: _attr(onnx, a) for a in n.attribute}}
            for n in g.node
        ],
        "inputs": [_value_info(onnx, v) for v in g.input if v.name not in init_names],
        "outputs": [_value_info(onnx, v) for v in g.output],
        "value_info": [_value_info(onnx, v) for v in g.value_info],
        "initializers": {i.name: [int(d) for d in i.dims] for i in g.initializer},
        "initializer_dtypes": {i.name: _dtype_name(onnx, i.data_type) for i in g.initializer},
    }


# ----------------------------------------------------------------------------- writer


@format_writer
def write_onnx(where: str, checked: Checked, read_tensor: ReadTensor, metadata: dict[str, str] | None,
               graph_proto: bytes | None = None, external_threshold: int = EXTERNAL_THRESHOLD) -> None:
    """Write the stored graph (``graph_proto``) with each spec's bytes in its initializer,
    ``metadata`` as ``metadata_props``; above ``external_threshold`` bytes into ``<file>.data``."""
    if graph_proto is None:
        raise InvalidInputError(
            f"{where}: writing .onnx needs the version's graph (its weight-less ONNX model) and there is "
            "none: only versions committed from an .onnx file carry one; write .safetensors, .npz or .pt instead"
        )
    onnx = _onnx("writing .onnx")
    from google.protobuf.message import DecodeError

    model = onnx.ModelProto()
    try:
        model.ParseFromString(bytes(graph_proto))
    except DecodeError:
        raise InvalidInputError(f"{where}: the stored graph is not a serialized ONNX model") from None
    inits = {i.name: i for i in model.graph.initializer}
    names = {n for n, _, _ in checked}
    missing = [n for n in inits if n not in names]
    if missing:
        raise InvalidInputError(f"{where}: the graph needs initializer {missing[0]!r}, which the tensors lack")
    total = sum(numel(s) * dt.itemsize for _, dt, s in checked)
    external = total > external_threshold
    data_path = where + ".data"
    for name, dt, _ in checked:
        if dt.name not in OURS_TO_ONNX:
            raise InvalidInputError(f"{where}: tensor {name!r} is {dt.name}, which ONNX cannot hold")
        if name not in inits:
            inits[name] = model.graph.initializer.add()
            inits[name].name = name
    if external:
        with atomic_output(data_path) as f:
            offset = 0
            for name, dt, shape in checked:
                n = numel(shape) * dt.itemsize
                pad = -offset % EXTERNAL_ALIGN
                f.write(b"\0" * pad)
                offset += pad
                _fill(inits[name], dt.name, shape)
                inits[name].data_location = onnx.TensorProto.EXTERNAL
                for k, v in (("location", os.path.basename(data_path)), ("offset", str(offset)), ("length", str(n))):
                    e = inits[name].external_data.add()
                    e.key, e.value = k, v
                copy_tensor(f, read_tensor, name, n)
                offset += n
    else:
        for name, dt, shape in checked:
            _fill(inits[name], dt.name, shape)
            inits[name].raw_data = bytes(read_whole(read_tensor, name, numel(shape) * dt.itemsize))
    if metadata:
        del model.metadata_props[:]
        for k, v in metadata.items():
            p = model.metadata_props.add()
            p.key, p.value = str(k), str(v)
    try:
        raw = model.SerializeToString()
    except ValueError as e:  # protobuf's 2 GiB message limit
        raise InvalidInputError(f"{where}: the ONNX model is too large to serialize ({e})") from None
    with atomic_output(where) as f:
        f.write(raw)


def _fill(init, dt: str, shape: tuple[int, ...]) -> None:
    _strip(init)
    init.data_type = OURS_TO_ONNX[dt]
    del init.dims[:]
    init.dims.extend(shape)
