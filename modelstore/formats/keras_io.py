"""Keras 3 (.keras zip) and HDF5 weight files (.h5, .weights.h5): reader and writers.

Tensors are the HDF5 datasets, named by their path without the leading slash (Keras 3:
``layers/dense/vars/0``; legacy: ``model_weights/d1/sequential/d1/kernel``). A ``.keras``
file is a zip (keras_zip.py); its ``model.weights.h5`` member is read in place when stored
uncompressed (Keras writes it so), else extracted to a temporary file removed on close.

One extra tensor, ``__hdf5__`` (U8, 1-D), holds UTF-8 JSON with what the datasets do not
carry: every group (empty ones too), the attributes of groups and datasets (Keras' legacy
``layer_names``/``weight_names`` lists, whose order matters, ``model_config``, ...) and, for
``.keras``, the zip's other members (``keras_config``: config.json's text; ``keras_members``:
metadata.json, assets, in archive order). The writers re-create them, so a stored version
writes back to an ``.h5`` Keras loads weights from, and a version read from a ``.keras`` to
a ``.keras`` that ``keras.saving.load_model`` opens. ``ModelSource.metadata`` gets the root's
short string attributes (``keras_version``, ``backend``) and, for .keras, metadata.json's.
``ModelSource.params`` counts the datasets' elements except the optimizer's state (the
``optimizer/`` and legacy ``optimizer_weights/`` groups) and the record: Keras'
``count_params()``.

Refused (InvalidInputError, nothing read): external HDF5 links, datasets stored in external
raw files or virtual datasets (both read other files), string/compound datasets, and
datasets declaring far more bytes than they store (a hostile size would otherwise allocate
it). BF16/F8 datasets are written as same-width unsigned ints with a ``modelstore_dtype``
attribute, which the reader honours. The writer holds one tensor in memory at a time.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from typing import Any

import numpy as np

from modelstore import dtypes
from modelstore.errors import InvalidInputError, NotFoundError

from . import keras_zip
from .base import (
    Checked,
    Holder,
    ModelSource,
    ReadTensor,
    TensorSource,
    array_bytes,
    atomic_output,
    format_writer,
    load_record,
    numel,
    read_whole,
    require,
)

RECORD = "__hdf5__"
RECORD_FORMAT = "modelstore-hdf5/1"
DTYPE_ATTR = "modelstore_dtype"
NON_NATIVE = {"BF16": "<u2", "F8_E4M3": "u1", "F8_E5M2": "u1"}
OPTIMIZER_GROUPS = ("optimizer/", "optimizer_weights/")  # Keras 3 / legacy: state, not parameters
SHORT_ATTR = 1000
MAX_RATIO = 1024  # declared bytes per stored byte accepted (compressed chunks), beyond 64 MiB
_FREE = 64 << 20


def _h5py(what: str):
    return require("h5py", "keras", what)


def _encode_attr(v: Any) -> dict[str, Any] | None:
    if isinstance(v, str):
        return {"s": v}
    if isinstance(v, (bytes, np.bytes_)):
        return {"b": bytes(v).decode("latin-1")}
    if isinstance(v, np.ndarray):
        if v.dtype.kind == "S":
            return {"S": [x.decode("latin-1") for x in v.reshape(-1).tolist()], "dtype": v.dtype.str, "shape": list(v.shape)}
        if v.dtype.kind == "O":
            items = [x.decode("utf-8", "surrogateescape") if isinstance(x, bytes) else x for x in v.reshape(-1).tolist()]
            return {"O": items, "shape": list(v.shape)} if all(isinstance(x, str) for x in items) else None
        if v.dtype.kind in "biuf":
            return {"a": v.reshape(-1).tolist(), "dtype": v.dtype.str, "shape": list(v.shape)}
        return None
    if isinstance(v, np.generic) and v.dtype.kind in "biuf":
        return {"n": v.item(), "dtype": v.dtype.str}
    return None


def _decode_attr(h5py, e: dict[str, Any]) -> Any:
    if "s" in e:
        return e["s"]
    if "b" in e:
        return np.bytes_(e["b"].encode("latin-1"))
    if "S" in e:
        return np.array([x.encode("latin-1") for x in e["S"]], dtype=e["dtype"]).reshape(e["shape"])
    if "O" in e:
        return np.array(e["O"], dtype=h5py.string_dtype()).reshape(e["shape"])
    if "a" in e:
        return np.array(e["a"], dtype=e["dtype"]).reshape(e["shape"])
    return np.array(e["n"], dtype=e["dtype"])[()]


def read_h5(path: str | os.PathLike[str]) -> ModelSource:
    """A .h5 / .weights.h5 / .keras file as a ModelSource (format 'h5' or 'keras')."""
    where = os.fspath(path)
    h5py = _h5py("reading " + (".keras" if where.lower().endswith(".keras") else ".h5"))
    if not os.path.exists(where):
        raise NotFoundError(f"no such file: {where}")
    closers: list = []
    try:
        is_keras = zipfile.is_zipfile(where)
        members: list = []
        target: Any = where
        if is_keras:
            target, members = keras_zip.open_weights(where, closers)
        meta = keras_zip.metadata_of(members)
        try:
            f = h5py.File(target, "r")
        except (OSError, ValueError) as e:
            raise InvalidInputError(f"{where}: not a readable HDF5 file ({str(e).splitlines()[0][:200]})") from None
        closers.append(f.close)
        holder = Holder(where)
        closers.append(holder.close)
        holder.items["f"] = f
        tensors: list[TensorSource] = []
        groups: list[str] = []
        attrs: dict[str, dict[str, Any]] = {}
        _walk(h5py, f, "", holder, tensors, groups, attrs, where)
        for k, v in f.attrs.items():
            if isinstance(v, (bytes, np.bytes_)):
                v = bytes(v).decode("utf-8", "replace")
            if isinstance(v, str) and len(v) <= SHORT_ATTR:
                meta.setdefault(k, v)
        if any(t.name == RECORD for t in tensors):
            raise InvalidInputError(f"{where}: a dataset is named {RECORD!r}, which modelstore reserves")
        rec = {"format": RECORD_FORMAT, "groups": groups, "attrs": attrs}
        if is_keras:
            rec.update(keras_zip.members_record(members))
        blob = memoryview(json.dumps(rec, separators=(",", ":")).encode("utf-8")).toreadonly()
        tensors.insert(0, TensorSource(RECORD, "U8", (blob.nbytes,), blob.nbytes, lambda: blob))
        return ModelSource("keras" if is_keras else "h5", tensors, meta, path=where, closers=closers,
                           params=params_of(tensors))
    except BaseException:
        for fn in reversed(closers):
            fn()
        raise


def params_of(tensors) -> int:
    """Keras' count_params(): the datasets' elements but the optimizer's state and the record."""
    return sum(numel(t.shape) for t in tensors if t.name != RECORD and not t.name.startswith(OPTIMIZER_GROUPS))


def _walk(h5py, group, prefix: str, holder: Holder, tensors: list, groups: list, attrs: dict, where: str) -> None:
    path = prefix.rstrip("/")
    enc = {k: e for k, v in group.attrs.items() if (e := _encode_attr(v)) is not None}
    if path:
        groups.append(path)
    if enc:
        attrs[path] = enc
    for key in group:
        link = group.get(key, getlink=True)
        name = prefix + key
        if isinstance(link, h5py.ExternalLink):
            raise InvalidInputError(f"{where}: {name!r} is an external link to {link.filename!r}; refusing to follow it")
        if isinstance(link, h5py.SoftLink):
            continue  # an alias of another object, which is read under its own name
        obj = group[key]
        if isinstance(obj, h5py.Group):
            _walk(h5py, obj, name + "/", holder, tensors, groups, attrs, where)
        elif isinstance(obj, h5py.Dataset):
            tensors.append(_dataset(h5py, obj, name, holder, where))
            enc = {k: e for k, v in obj.attrs.items() if k != DTYPE_ATTR and (e := _encode_attr(v)) is not None}
            if enc:
                attrs[name] = enc


def _dataset(h5py, ds, name: str, holder: Holder, where: str) -> TensorSource:
    dcpl = ds.id.get_create_plist()
    if dcpl.get_layout() == h5py.h5d.VIRTUAL or dcpl.get_external_count() > 0:
        raise InvalidInputError(f"{where}: dataset {name!r} keeps its data in other files; refusing it")
    dt = ds.dtype
    marked = ds.attrs.get(DTYPE_ATTR)
    marked = marked.decode() if isinstance(marked, bytes) else marked
    try:
        if isinstance(marked, str) and marked in NON_NATIVE and np.dtype(NON_NATIVE[marked]) == dt.newbyteorder("<"):
            ours = dtypes.get(marked)
        else:
            ours = dtypes.from_numpy(dt)
    except (InvalidInputError, TypeError):
        raise InvalidInputError(
            f"{where}: dataset {name!r} has dtype {dt}, which modelstore cannot store (supported: {', '.join(dtypes.BY_NAME)})"
        ) from None
    shape = tuple(int(d) for d in (ds.shape or ()))
    if ds.shape is None:
        raise InvalidInputError(f"{where}: dataset {name!r} has a null dataspace")
    nbytes = numel(shape) * ours.itemsize
    stored = ds.id.get_storage_size()
    if nbytes > max(stored * MAX_RATIO, _FREE):
        raise InvalidInputError(
            f"{where}: dataset {name!r} declares {nbytes} bytes but stores {stored}; corrupt or hostile, refusing it"
        )
    key = "/" + name

    def read() -> memoryview:
        f = holder.get("f")
        try:
            arr = f[key][()]
        except (OSError, ValueError, KeyError) as e:
            raise InvalidInputError(f"{where}: cannot read dataset {name!r} ({str(e).splitlines()[0][:200]})") from None
        arr = np.asarray(arr)
        if arr.shape != shape:
            raise InvalidInputError(f"{where}: dataset {name!r} changed while open")
        return array_bytes(arr.view(ours.numpy) if ours.name in NON_NATIVE else arr)

    return TensorSource(name, ours.name, shape, nbytes, read)


# ----------------------------------------------------------------------------- writer


@format_writer
def write_h5(where: str, checked: Checked, read_tensor: ReadTensor, metadata: dict[str, str] | None) -> None:
    """Write tensors as HDF5 datasets at their names' paths (plus the ``__hdf5__`` record's
    groups and attributes, or ``metadata`` as root attributes when there is no record)."""
    h5py = _h5py("writing .h5")
    _check_paths(checked, where)
    with atomic_output(where) as out:
        _write_datasets(h5py, out, checked, read_tensor, metadata, where)


@format_writer
def write_keras(where: str, checked: Checked, read_tensor: ReadTensor, metadata: dict[str, str] | None) -> None:
    """Write a Keras 3 .keras zip: the weights as for .h5 into a temporary file next to the
    target, then the zip around it with the ``__hdf5__`` record's config, metadata and assets."""
    h5py = _h5py("writing .keras")
    _check_paths(checked, where)
    if RECORD not in {n for n, _, _ in checked}:
        keras_zip.require_config(None, where)  # the one clear error, before any bytes are read
    with atomic_output(where) as out, tempfile.TemporaryFile(dir=os.path.dirname(os.path.abspath(where))) as tmp:
        rec = _write_datasets(h5py, tmp, checked, read_tensor, metadata, where)
        keras_zip.write_zip(out, keras_zip.members_from_record(rec, metadata, where), tmp)


def _check_paths(checked: Checked, where: str) -> None:
    names = {n for n, _, _ in checked}
    for name in names:
        if name == RECORD:
            continue
        parts = name.split("/")
        if any(not p or p == "." for p in parts):
            raise InvalidInputError(f"{where}: tensor name {name!r} is not a valid HDF5 path")
        for i in range(1, len(parts)):
            if "/".join(parts[:i]) in names:
                raise InvalidInputError(f"{where}: tensor {'/'.join(parts[:i])!r} would have to be a group for {name!r}")


def _write_datasets(h5py, out, checked: Checked, read_tensor: ReadTensor, metadata: dict[str, str] | None,
                    where: str) -> dict[str, Any] | None:
    """Write the HDF5 file into the binary file ``out``, one tensor in memory at a time;
    returns the ``__hdf5__`` record (None when the specs have none)."""
    rec = None
    with h5py.File(out, "w") as f:
        for name, dt, shape in checked:
            buf = read_whole(read_tensor, name, numel(shape) * dt.itemsize)
            if name == RECORD:
                rec = load_record(buf, where, RECORD, RECORD_FORMAT, {"groups": list, "attrs": dict})
                continue
            np_dt = np.dtype(NON_NATIVE.get(dt.name, dt.numpy))
            arr = np.frombuffer(buf, dtype=np_dt).reshape(shape)
            ds = f.create_dataset(name, data=arr)
            if dt.name in NON_NATIVE:
                ds.attrs[DTYPE_ATTR] = dt.name
        _apply(h5py, f, rec, metadata, where)
    return rec


def _apply(h5py, f, rec: dict[str, Any] | None, metadata: dict[str, str] | None, where: str) -> None:
    if rec is None:
        for k, v in (metadata or {}).items():
            f.attrs[str(k)] = str(v)
        return
    try:
        for g in rec["groups"]:
            if g not in f:
                f.require_group(g)
        for path, items in rec["attrs"].items():
            obj = f[path] if path else f
            for k, e in items.items():
                obj.attrs[k] = _decode_attr(h5py, e)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise InvalidInputError(f"{where}: the {RECORD!r} record does not fit these tensors ({str(e)[:200]})") from None
