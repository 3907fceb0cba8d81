"""NumPy .npz reader and streaming writer.

Tensor names are the zip member names without ``.npy``. numpy's .npy format cannot name
ml_dtypes types, so bfloat16/float8 arrays are stored with a raw void descr ('|V2', '|V1');
the writer adds a member ``__modelstore_dtypes__.npy`` (a uint8 array holding UTF-8 JSON
``{tensor name: dtype name}``, only for BF16/F8 tensors, written first) and the reader
honours it. A void-typed member without such an entry is refused.

Reader: ``np.load(path, allow_pickle=False)``; only the .npy headers are read at open time;
each member is read (and decompressed) in full when its ``buffer()`` is called, one tensor
at a time; nothing is cached.

Writer: ZIP_STORED (uncompressed) members with zip64 forced, npy header then the chunks
streamed straight into the zip; the ``metadata`` argument is ignored (npz has no place for it).
"""

from __future__ import annotations

import json
import os
import zipfile
from typing import Any

import numpy as np

from modelstore import dtypes
from modelstore.errors import InvalidInputError, NotFoundError

from .base import (
    Checked,
    Holder,
    ModelSource,
    ReadTensor,
    TensorSource,
    array_bytes,
    atomic_output,
    check_unique_names,
    copy_tensor,
    format_writer,
    numel,
)

DTYPES_MEMBER = "__modelstore_dtypes__"
NON_NATIVE = ("BF16", "F8_E4M3", "F8_E5M2")  # dtypes .npy cannot name


def _read_npy_header(fp, member: str, where: str) -> tuple[tuple[int, ...], np.dtype]:
    fmt = np.lib.format
    try:
        version = fmt.read_magic(fp)
        if version == (1, 0):
            shape, _fortran, dt = fmt.read_array_header_1_0(fp)
        elif version == (2, 0):
            shape, _fortran, dt = fmt.read_array_header_2_0(fp)
        else:
            raise ValueError(f"unsupported .npy format version {version}")
    except (ValueError, SyntaxError, TypeError, EOFError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise InvalidInputError(f"{where}: member {member!r} is not a valid .npy array ({msg})") from None
    return tuple(shape), dt


def _load_dtype_map(npz: Any, where: str) -> dict[str, str]:
    try:
        raw = npz[DTYPES_MEMBER + ".npy"]
        if raw.dtype != np.uint8 or raw.ndim != 1:
            raise ValueError("not a 1-D uint8 array")
        mapping = json.loads(raw.tobytes().decode("utf-8"))
    except (ValueError, UnicodeDecodeError, zipfile.BadZipFile, OSError) as e:
        raise InvalidInputError(f"{where}: member {DTYPES_MEMBER}.npy is corrupt ({e})") from None
    if not isinstance(mapping, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and v in dtypes.BY_NAME for k, v in mapping.items()
    ):
        raise InvalidInputError(f"{where}: member {DTYPES_MEMBER}.npy is not a map of tensor names to dtypes")
    return mapping


def _member_reader(holder: Holder, member: str, shape: tuple[int, ...], where: str):
    def read() -> memoryview:
        npz = holder.get("npz")
        try:
            arr = npz[member]
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
            raise InvalidInputError(f"{where}: cannot read member {member!r}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
        if arr.shape != shape:
            raise InvalidInputError(f"{where}: member {member!r} changed while open")
        return array_bytes(arr)

    return read


def read_npz(path: str | os.PathLike[str]) -> ModelSource:
    where = os.fspath(path)
    try:
        npz = np.load(where, allow_pickle=False)
    except FileNotFoundError:
        raise NotFoundError(f"no such file: {where}") from None
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise InvalidInputError(f"{where}: not a readable .npz file ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise InvalidInputError(f"{where}: is a single .npy array, not an .npz archive; save it with np.savez")
    holder = Holder(where)
    holder.items["npz"] = npz

    def close() -> None:
        holder.close()
        npz.close()

    try:
        infos = [i for i in npz.zip.infolist() if not i.is_dir()]
        members = [i.filename for i in infos]
        bad = [m for m in members if not m.endswith(".npy")]
        if bad:
            raise InvalidInputError(f"{where}: member {bad[0]!r} is not a .npy array; not an npz written by numpy")
        check_unique_names((m[:-4] for m in members), where)
        dtype_map = _load_dtype_map(npz, where) if DTYPES_MEMBER + ".npy" in members else {}
        tensors = []
        for member in members:
            name = member[:-4]
            if name == DTYPES_MEMBER:
                continue
            with npz.zip.open(member) as fp:
                shape, dt = _read_npy_header(fp, member, where)
            if dt.hasobject:
                raise InvalidInputError(
                    f"{where}: tensor {name!r} is an object array (pickled data); refusing it (allow_pickle=False)"
                )
            if dt.names is not None:
                raise InvalidInputError(f"{where}: tensor {name!r} is a structured array ({dt}); not supported")
            if name in dtype_map:
                ours = dtypes.get(dtype_map[name])
                if dt.itemsize != ours.itemsize or not (dt.kind == "V" or dt == ours.numpy):
                    raise InvalidInputError(
                        f"{where}: tensor {name!r} is stored as {dt} but {DTYPES_MEMBER} says {ours.name}"
                    )
            elif dt.kind == "V":
                raise InvalidInputError(
                    f"{where}: tensor {name!r} has raw void dtype {dt.str} (how numpy saves bfloat16/float8) "
                    "and no dtype record; re-save with modelstore or as .safetensors"
                )
            else:
                try:
                    ours = dtypes.from_numpy(dt)
                except InvalidInputError:
                    raise InvalidInputError(
                        f"{where}: tensor {name!r} has unsupported dtype {dt} "
                        f"(supported: {', '.join(dtypes.BY_NAME)})"
                    ) from None
            tensors.append(
                TensorSource(name, ours.name, shape, numel(shape) * ours.itemsize, _member_reader(holder, member, shape, where))
            )
        return ModelSource("npz", tensors, {}, path=where, closers=[close])
    except BaseException:
        close()
        raise


def _write_npy_header(fp, header: dict[str, Any]) -> None:
    try:
        np.lib.format.write_array_header_1_0(fp, header)
    except ValueError:  # header too long for format 1.0 (huge ndim)
        np.lib.format.write_array_header_2_0(fp, header)


@format_writer
def write_npz(where: str, checked: Checked, read_tensor: ReadTensor, metadata: dict[str, str] | None) -> None:
    """Write an uncompressed zip64 .npz: each tensor a ``.npy`` member (``metadata`` ignored:
    npz has no place for it), the dtype record first when there are BF16/F8 tensors."""
    for name, _, _ in checked:
        if name == DTYPES_MEMBER:
            raise InvalidInputError(f"{where}: tensor name {DTYPES_MEMBER!r} is reserved in .npz files")
        if "\x00" in name:
            raise InvalidInputError(f"{where}: tensor name {name!r} contains a NUL byte, which zip member names cannot hold")
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidInputError(f"{where}: tensor name {name!r} is not valid unicode (lone surrogate)") from None
    dtype_map = {name: dt.name for name, dt, _ in checked if dt.name in NON_NATIVE}
    with atomic_output(where) as f:
        with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            if dtype_map:
                blob = np.frombuffer(json.dumps(dtype_map, ensure_ascii=False).encode("utf-8"), dtype=np.uint8)
                with zf.open(DTYPES_MEMBER + ".npy", "w", force_zip64=True) as out:
                    np.lib.format.write_array(out, blob, allow_pickle=False)
            for name, dt, shape in checked:
                descr = f"|V{dt.itemsize}" if dt.name in NON_NATIVE else np.lib.format.dtype_to_descr(dt.numpy)
                with zf.open(name + ".npy", "w", force_zip64=True) as out:
                    _write_npy_header(out, {"descr": descr, "fortran_order": False, "shape": shape})
                    copy_tensor(out, read_tensor, name, numel(shape) * dt.itemsize)
