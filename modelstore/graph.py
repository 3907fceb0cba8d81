"""The normalized model graph: what a version's structure is, without its weights.

One JSON-able dict (format 1), built from an ONNX ModelProto (or .onnx file) or from the
ONNX reader's ``ModelSource.graph`` dict, with tensor shapes filled in by
``onnx.shape_inference`` when onnx is installed, so hardware figures (hwfigures) and the
graph diff (graph_diff) need no onnx at all::

    {"format": 1, "opset": {"": 17},
     "nodes": [{"name", "op_type", "domain", "inputs", "outputs", "attributes": {k: value}}],
     "inputs": [{"name", "shape", "dtype"}], "outputs": [...],     # graph inputs/outputs
     "initializers": {name: shape},                                  # weights (no bytes)
     "constants": {name: [ints]},     # small integer initializers (shape operands), by value
     "value_info": {name: {"shape", "dtype"}}}    # every known tensor type, for ONE sample

A shape is a list of dims: an int, a string (a symbolic dim such as "batch"), or null
(unknown); a shape itself may be null (unknown rank). dtypes use modelstore's names (F32,
I64 ...) where one exists, else ONNX's (STRING, COMPLEX64 ...). Attribute values are
ints, floats, strings, lists of those, or for tensors/graphs a small summary dict
(``{"tensor": {dtype, shape, values?}}``, ``{"graph": {name, nodes, id}}``).
``canonical_bytes`` (sorted keys, no whitespace) names a graph: ``graph_id`` = XXH3-128.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Any

from modelstore import hashing
from modelstore.errors import InvalidInputError

GRAPH_FORMAT = 1
MAX_CONST_ELEMS = 64  # integer initializers up to this size are kept by value (Reshape targets ...)

# ONNX TensorProto.DataType -> modelstore dtype name (others keep ONNX's name).
_ONNX_DTYPES = {1: "F32", 2: "U8", 3: "I8", 4: "U16", 5: "I16", 6: "I32", 7: "I64", 9: "BOOL", 10: "F16",
                11: "F64", 12: "U32", 13: "U64", 16: "BF16", 17: "F8_E4M3", 19: "F8_E5M2"}
# bytes per element for activation sizes (hwfigures); unknown dtypes count 4.
ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I64": 8, "I32": 4,
            "I16": 2, "I8": 1, "U8": 1, "BOOL": 1, "U16": 2, "U32": 4, "U64": 8, "COMPLEX64": 8,
            "COMPLEX128": 16, "DOUBLE": 8, "FLOAT": 4, "FLOAT16": 2, "BFLOAT16": 2, "INT64": 8, "INT32": 4}


def _onnx():
    try:
        import onnx
    except ImportError:
        raise InvalidInputError("reading ONNX graphs needs the 'onnx' extra: pip install 'modelstore[onnx]'") from None
    return onnx


def dtype_name(elem_type: int) -> str:
    if elem_type in _ONNX_DTYPES:
        return _ONNX_DTYPES[elem_type]
    try:
        return _onnx().TensorProto.DataType.Name(elem_type)
    except (ValueError, InvalidInputError):
        return f"ONNX_{elem_type}"


# --------------------------------------------------------------------------- from ONNX


def _type_of(type_proto) -> tuple[list | None, str | None]:
    """(shape, dtype) of a TypeProto; (None, None) for non-tensor types (sequences, maps)."""
    if not type_proto.HasField("tensor_type"):
        return None, None
    tt = type_proto.tensor_type
    dtype = dtype_name(tt.elem_type) if tt.elem_type else None
    if not tt.HasField("shape"):
        return None, dtype
    dims = []
    for d in tt.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            dims.append(str(d.dim_param))
        else:
            dims.append(None)
    return dims, dtype


def _attr_value(attr) -> Any:
    onnx = _onnx()
    A = onnx.AttributeProto
    t = attr.type
    if t == A.INT:
        return int(attr.i)
    if t == A.FLOAT:
        return _float(attr.f)
    if t == A.STRING:
        return attr.s.decode("utf-8", "replace")
    if t == A.INTS:
        return [int(x) for x in attr.ints]
    if t == A.FLOATS:
        return [_float(x) for x in attr.floats]
    if t == A.STRINGS:
        return [s.decode("utf-8", "replace") for s in attr.strings]
    if t == A.TENSOR:
        return {"tensor": _tensor_summary(attr.t)}
    if t == A.GRAPH:
        return {"graph": _subgraph_summary(attr.g)}
    if t == A.GRAPHS:
        return [{"graph": _subgraph_summary(g)} for g in attr.graphs]
    if t == A.TENSORS:
        return [{"tensor": _tensor_summary(x)} for x in attr.tensors]
    return {"unsupported_attribute_type": int(t)}


def _float(x: float):
    x = float(x)
    return x if math.isfinite(x) else str(x)  # canonical JSON has no NaN/Inf


def _tensor_summary(tp) -> dict:
    """dtype, shape and (for small tensors) the values: a Constant's value matters to a diff."""
    out = {"dtype": dtype_name(tp.data_type), "shape": [int(d) for d in tp.dims]}
    n = math.prod(out["shape"])
    if n <= MAX_CONST_ELEMS and not tp.external_data:
        try:
            from onnx import numpy_helper

            arr = numpy_helper.to_array(tp)
            out["values"] = [_float(v) if isinstance(v, float) else v for v in arr.reshape(-1).tolist()]
        except Exception:  # noqa: BLE001, S110 - an odd dtype (string, fp8): the summary without values is still right
            pass
    if "values" not in out:  # a larger tensor is named by its bytes (any storage field)
        out["sha"] = hashing.hexdigest(tp.SerializeToString(deterministic=True))[:16]
    return out


def _subgraph_summary(g) -> dict:
    sub = _from_graph_proto(g, {}, infer_consts=False)
    return {"name": g.name, "nodes": len(sub["nodes"]), "id": graph_id(sub)}


def _from_graph_proto(g, opset: dict, infer_consts: bool = True) -> dict:
    nodes = [{"name": n.name, "op_type": n.op_type, "domain": n.domain or "",
              "inputs": list(n.input), "outputs": list(n.output),
              "attributes": {a.name: _attr_value(a) for a in n.attribute}} for n in g.node]
    inits = {t.name: [int(d) for d in t.dims] for t in g.initializer}
    consts = {}
    value_info: dict[str, dict] = {}
    for t in g.initializer:
        value_info[t.name] = {"shape": inits[t.name], "dtype": dtype_name(t.data_type)}
        if infer_consts and t.data_type in (6, 7) and math.prod(inits[t.name]) <= MAX_CONST_ELEMS \
                and not t.external_data:
            from onnx import numpy_helper

            consts[t.name] = [int(v) for v in numpy_helper.to_array(t).reshape(-1).tolist()]

    def io(vals):
        out = []
        for v in vals:
            shape, dtype = _type_of(v.type)
            out.append({"name": v.name, "shape": shape, "dtype": dtype})
            if shape is not None or dtype is not None:
                value_info.setdefault(v.name, {"shape": shape, "dtype": dtype})
        return out

    inputs = [x for x in io(g.input) if x["name"] not in inits]  # IR<4 lists initializers as inputs too
    outputs = io(g.output)
    for v in g.value_info:
        shape, dtype = _type_of(v.type)
        value_info[v.name] = {"shape": shape, "dtype": dtype}
    return {"format": GRAPH_FORMAT, "opset": dict(opset), "nodes": nodes, "inputs": inputs, "outputs": outputs,
            "initializers": inits, "constants": consts, "value_info": value_info}


def from_onnx(model, infer: bool = True) -> dict:
    """The normalized graph of an ONNX ModelProto (shapes inferred unless ``infer=False``)."""
    onnx = _onnx()
    if not isinstance(model, onnx.ModelProto):
        raise InvalidInputError(f"expected an onnx.ModelProto, got a {type(model).__name__}")
    opset = {o.domain or "": int(o.version) for o in model.opset_import}
    g = _from_graph_proto(model.graph, opset)
    if infer:
        inferred = _from_graph_proto(_infer(model).graph, opset)
        g["value_info"] = {**g["value_info"], **inferred["value_info"]}
    return g


def _infer(model):
    """A copy of the model with value_info filled by onnx shape inference for ONE sample:
    symbolic dims of the graph inputs (batch, sequence ...) are set to 1 first, so shape
    arithmetic (Shape -> Gather -> Concat -> Reshape) resolves to numbers. The declared
    inputs/outputs stay symbolic in the normalized graph; value_info is per inference."""
    from onnx import shape_inference

    onnx = _onnx()
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for v in copy.graph.input:
        if v.type.HasField("tensor_type") and v.type.tensor_type.HasField("shape"):
            for d in v.type.tensor_type.shape.dim:
                if not d.HasField("dim_value"):
                    d.dim_value = 1
    for v in copy.graph.output:  # declared symbolic outputs would clash with the numbers inferred
        if v.type.HasField("tensor_type") and v.type.tensor_type.HasField("shape"):
            for d in v.type.tensor_type.shape.dim:
                if not d.HasField("dim_value"):
                    d.Clear()
    try:
        return shape_inference.infer_shapes(copy, data_prop=True)
    except Exception:  # noqa: BLE001 - inference is an enrichment: an exotic op must not make a graph unreadable
        try:
            return shape_inference.infer_shapes(copy)
        except Exception:  # noqa: BLE001 - onnx/protobuf raise many unrelated types
            return model


def load_onnx_graph(path: str | os.PathLike) -> dict:
    """The normalized graph of an .onnx file (external weight files are not read)."""
    onnx = _onnx()
    path = os.fspath(path)
    try:
        model = onnx.load(path, load_external_data=False)
    except FileNotFoundError:
        from modelstore.errors import NotFoundError

        raise NotFoundError(f"{path}: no such file") from None
    except Exception as exc:  # noqa: BLE001 - onnx/protobuf raise many unrelated types
        raise InvalidInputError(f"{path}: not a readable ONNX model ({type(exc).__name__}: {str(exc)[:200]})") from None
    for init in model.graph.initializer:  # drop weight bytes before inference copies the model
        if not (init.data_type in (6, 7) and math.prod(init.dims) <= MAX_CONST_ELEMS):
            for fld in ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data",
                        "string_data", "external_data"):
                init.ClearField(fld)
            init.ClearField("data_location")
    return from_onnx(model)


# --------------------------------------------------------------------------- from the reader's dict


def from_dict(doc: Mapping, infer: bool = True) -> dict:
    """Normalize a graph dict (the ONNX reader's ``ModelSource.graph``, or a stored graph).

    Missing keys default to empty; shapes are filled by onnx shape inference over a
    weight-less ModelProto rebuilt from the dict when some node output has no known type
    and onnx is installed.
    """
    if not isinstance(doc, Mapping):
        raise InvalidInputError(f"a graph must be a dict, got a {type(doc).__name__}")
    if doc.get("format", GRAPH_FORMAT) not in (GRAPH_FORMAT, "onnx"):  # ours, or onnx_io.graph_dict
        raise InvalidInputError(f"graph format {doc.get('format')!r} is not supported; upgrade modelstore")
    try:
        nodes = []
        for i, n in enumerate(doc.get("nodes") or []):
            attrs = n.get("attributes") or {}
            if not isinstance(attrs, Mapping):  # a list of {name, value} is accepted too
                attrs = {a["name"]: a.get("value") for a in attrs}
            nodes.append({"name": str(n.get("name") or ""), "op_type": str(n["op_type"]),
                          "domain": "" if n.get("domain") in (None, "ai.onnx") else str(n["domain"]),
                          "inputs": [str(x) for x in n.get("inputs") or []],
                          "outputs": [str(x) for x in n.get("outputs") or []],
                          "attributes": {str(k): _jsonable(v) for k, v in attrs.items()}})
        inits = {str(k): _shape(v.get("shape") if isinstance(v, Mapping) else v)
                 for k, v in (doc.get("initializers") or {}).items()}
        vi_in = doc.get("value_info") or {}
        if not isinstance(vi_in, Mapping):  # onnx_io: a list of {name, shape, dtype}
            vi_in = {v["name"]: v for v in vi_in}
        value_info = {str(k): {"shape": _shape(v.get("shape")), "dtype": v.get("dtype")} for k, v in vi_in.items()}
        io = {}
        for key in ("inputs", "outputs"):
            io[key] = [{"name": str(x["name"]), "shape": _shape(x.get("shape")), "dtype": x.get("dtype")}
                       for x in doc.get(key) or []]
            for x in io[key]:
                value_info.setdefault(x["name"], {"shape": x["shape"], "dtype": x["dtype"]})
        init_dtypes = doc.get("initializer_dtypes") or {}
        for k, shape in inits.items():
            value_info.setdefault(k, {"shape": shape, "dtype": init_dtypes.get(k)})
        consts = {str(k): [int(x) for x in v] for k, v in (doc.get("constants") or {}).items()}
        opset = {("" if k == "ai.onnx" else str(k)): int(v) for k, v in (doc.get("opset") or {}).items()}
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise InvalidInputError(f"malformed graph dict: {type(exc).__name__}: {exc}") from None
    g = {"format": GRAPH_FORMAT, "opset": opset, "nodes": nodes, "inputs": io["inputs"], "outputs": io["outputs"],
         "initializers": inits, "constants": consts, "value_info": value_info}
    if infer and _needs_inference(g):
        g = _infer_dict(g)
    return g


def _shape(s):
    if s is None:
        return None
    return [d if (d is None or isinstance(d, str)) else int(d) for d in s]


def _jsonable(v):
    if isinstance(v, float):
        return _float(v)
    if isinstance(v, (bytes, bytearray)):
        return bytes(v).decode("utf-8", "replace")
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if hasattr(v, "tolist"):  # numpy scalars and arrays
        return _jsonable(v.tolist())
    return str(v)


def _needs_inference(g: dict) -> bool:
    vi = g["value_info"]
    return any(vi.get(o, {}).get("shape") is None for n in g["nodes"] for o in n["outputs"] if o)


def _infer_dict(g: dict) -> dict:
    """Fill value_info by running onnx shape inference on a weight-less proto built from g."""
    try:
        import onnx
        from onnx import helper
    except ImportError:
        return g
    rev = {v: k for k, v in _ONNX_DTYPES.items()}

    def vinfo(name, shape, dtype):
        et = rev.get(dtype, 0) if dtype else 0
        return helper.make_tensor_value_info(name, et or onnx.TensorProto.FLOAT, shape)

    try:
        inits = []
        for name, shape in g["initializers"].items():
            t = onnx.TensorProto()
            t.name = name
            t.data_type = rev.get(g["value_info"].get(name, {}).get("dtype") or "F32", 1)
            if name in g["constants"]:
                t.data_type = onnx.TensorProto.INT64
                t.int64_data.extend(g["constants"][name])
            t.dims.extend(shape or [])
            inits.append(t)
        nodes = []
        for n in g["nodes"]:
            attrs = {k: v for k, v in n["attributes"].items() if not isinstance(v, (dict, type(None)))
                     and not (isinstance(v, list) and any(isinstance(x, dict) for x in v)) and v != []}
            nodes.append(helper.make_node(n["op_type"], n["inputs"], n["outputs"], name=n["name"] or None,
                                          domain=n["domain"] or None, **attrs))
        graph = helper.make_graph(nodes, "g", [vinfo(x["name"], x["shape"], x["dtype"]) for x in g["inputs"]],
                                  [vinfo(x["name"], x["shape"], x["dtype"]) for x in g["outputs"]], inits)
        opsets = [helper.make_opsetid(d, v) for d, v in g["opset"].items()] or [helper.make_opsetid("", 17)]
        model = helper.make_model(graph, opset_imports=opsets)
        inferred = from_onnx(model, infer=True)
    except Exception:  # noqa: BLE001 - enrichment only
        return g
    vi = dict(inferred["value_info"])
    vi.update({k: v for k, v in g["value_info"].items() if v.get("shape") is not None})
    return {**g, "value_info": vi}


# --------------------------------------------------------------------------- dispatch and identity


def normalize(obj, infer: bool = True) -> dict:
    """A normalized graph from a ModelProto, a graph dict, serialized ModelProto bytes, or an .onnx path."""
    if isinstance(obj, Mapping):
        return from_dict(obj, infer=infer)
    if isinstance(obj, (str, os.PathLike)):
        return load_onnx_graph(obj)
    if isinstance(obj, (bytes, bytearray, memoryview)):
        onnx = _onnx()
        try:
            model = onnx.load_model_from_string(bytes(obj))
        except Exception as exc:  # noqa: BLE001 - onnx/protobuf raise many unrelated types
            raise InvalidInputError(f"not a serialized ONNX model: {type(exc).__name__}") from None
        return from_onnx(model, infer=infer)
    return from_onnx(obj, infer=infer)


def of_source(src) -> dict | None:
    """The graph a ModelSource carries, else one read from its path when that is an .onnx file; None otherwise.

    The reader's serialized ``graph_proto`` (initializer data stripped) is preferred to its
    ``graph`` dict: small integer initializers (Reshape targets ...) are refilled from the
    source's tensors so shape inference sees them, as if the whole file had been loaded.
    """
    raw = getattr(src, "graph_proto", None)
    if raw:
        onnx = _onnx()
        try:
            model = onnx.load_model_from_string(bytes(raw))
        except Exception as exc:  # noqa: BLE001 - onnx/protobuf raise many unrelated types
            raise InvalidInputError(f"{getattr(src, 'path', None)}: unreadable graph ({type(exc).__name__})") from None
        _refill_constants(model, src)
        return from_onnx(model)
    g = getattr(src, "graph", None)
    if g is not None:
        return normalize(g)
    path = getattr(src, "path", None)
    if path and str(path).lower().endswith(".onnx") and os.path.isfile(path):
        return load_onnx_graph(path)
    return None


def _refill_constants(model, src) -> None:
    by_name = {t.name: t for t in getattr(src, "tensors", ())}
    for init in model.graph.initializer:
        t = by_name.get(init.name)
        if t is None or init.data_type not in (6, 7) or math.prod(init.dims) > MAX_CONST_ELEMS:
            continue
        if init.HasField("raw_data") or len(init.int64_data) or len(init.int32_data):
            continue
        try:
            init.raw_data = bytes(t.buffer())
        except Exception:  # noqa: BLE001, S110 - enrichment only
            pass


def canonical_bytes(g: dict) -> bytes:
    """UTF-8 JSON, keys sorted, no whitespace (the bytes graph_id hashes and the store keeps)."""
    try:
        return json.dumps(g, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"graph is not JSON-serializable: {exc}") from None


def graph_id(g: dict) -> str:
    """32 hex digits: XXH3-128 of the canonical bytes."""
    return hashing.hexdigest(canonical_bytes(g))


def node_label(n: dict) -> str:
    """A node's display name: its name, else ``OpType->first_output``."""
    return n["name"] or f"{n['op_type']}->{n['outputs'][0] if n['outputs'] else '?'}"
