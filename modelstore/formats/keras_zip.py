"""The Keras 3 ``.keras`` zip around an HDF5 weights file: opening its weights member, keeping
its other members, and writing the zip back.

A ``.keras`` file is a zip of ``metadata.json``, ``config.json``, ``model.weights.h5`` and,
for layers with assets (vocabularies, ...), files under ``assets/``. The reader hands the
weights member to the HDF5 reader (in place when stored uncompressed, as Keras writes it) and
returns every other member, in archive order, for the ``__hdf5__`` record
(:func:`members_record`); the writer (:func:`write_zip`) puts them back around a freshly
written weights file, uncompressed, with a fixed timestamp so a checkout is reproducible.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import struct
import tempfile
import zipfile
from collections.abc import Sequence
from typing import Any, BinaryIO

from modelstore.errors import InvalidInputError

WEIGHTS = "model.weights.h5"
CONFIG = "config.json"
METADATA = "metadata.json"
MAX_MEMBERS_BYTES = 256 << 20  # config, metadata and assets kept in the record, at most
_EPOCH = (1980, 1, 1, 0, 0, 0)  # zip's earliest timestamp: the same bytes on every checkout

Member = tuple[str, "bytes | None"]  # (name, bytes); None for the weights member


class _Slice:
    """A read-only file object over bytes [start, start + size) of another file."""

    def __init__(self, f, start: int, size: int) -> None:
        self.f, self.start, self.size, self.pos = f, start, size, 0

    def seek(self, pos: int, whence: int = 0) -> int:
        self.pos = pos if whence == 0 else self.pos + pos if whence == 1 else self.size + pos
        return self.pos

    def tell(self) -> int:
        return self.pos

    def read(self, n: int = -1) -> bytes:
        n = self.size - self.pos if n < 0 else max(0, min(n, self.size - self.pos))
        self.f.seek(self.start + self.pos)
        data = self.f.read(n)
        self.pos += len(data)
        return data

    def readinto(self, b) -> int:
        data = self.read(len(b))
        b[:len(data)] = data
        return len(data)


def _check_member_name(name: str, where: str) -> None:
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or ".." in parts or "\x00" in name or ":" in parts[0]:
        raise InvalidInputError(f"{where}: zip member {name!r} points outside the archive; refusing it")


def open_weights(where: str, closers: list) -> tuple[Any, list[Member]]:
    """The weights member of a .keras zip as a seekable file object, and every member in
    archive order with the bytes of all but the weights (what rebuilding the zip needs)."""
    try:
        zf = zipfile.ZipFile(where)
    except (zipfile.BadZipFile, OSError) as e:
        raise InvalidInputError(f"{where}: not a readable .keras (zip) file ({e})") from None
    closers.append(zf.close)
    try:
        info = zf.getinfo(WEIGHTS)
    except KeyError:
        raise InvalidInputError(f"{where}: no {WEIGHTS} inside; not a Keras 3 .keras file") from None
    try:
        others = [i for i in zf.infolist() if i.filename != WEIGHTS]
        total = sum(i.file_size for i in others)
        if total > MAX_MEMBERS_BYTES:
            raise InvalidInputError(f"{where}: its config, metadata and assets hold {total} bytes, over the "
                                    f"{MAX_MEMBERS_BYTES >> 20} MiB modelstore keeps beside the weights")
        members: list[Member] = []
        for i in zf.infolist():
            _check_member_name(i.filename, where)
            members.append((i.filename, None if i.filename == WEIGHTS else zf.read(i)))
        if info.compress_type == zipfile.ZIP_STORED:
            f = open(where, "rb")  # noqa: SIM115 - lives as long as the source; closed by its closers
            closers.append(f.close)
            f.seek(info.header_offset)
            head = f.read(30)
            if len(head) != 30 or head[:4] != b"PK\x03\x04":
                raise InvalidInputError(f"{where}: corrupt zip entry for {WEIGHTS}")
            n_name, n_extra = struct.unpack("<HH", head[26:30])
            start = info.header_offset + 30 + n_name + n_extra
            if start + info.file_size > os.fstat(f.fileno()).st_size:
                raise InvalidInputError(f"{where}: {WEIGHTS} runs past the end of the file (truncated?)")
            return _Slice(f, start, info.file_size), members
        tmp = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the source; closed by its closers
        closers.append(tmp.close)
        with zf.open(info) as src:
            shutil.copyfileobj(src, tmp, 1 << 22)
        tmp.seek(0)
        return tmp, members
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise InvalidInputError(f"{where}: corrupt .keras file ({str(e)[:200]})") from None


def metadata_of(members: Sequence[Member]) -> dict[str, str]:
    """metadata.json's scalar entries as strings (version attributes: keras_version, ...)."""
    raw = dict(members).get(METADATA)
    try:
        doc = json.loads(raw) if raw else {}
    except (ValueError, UnicodeDecodeError):
        return {}
    return {k: str(v) for k, v in doc.items() if isinstance(v, (str, int, float))} if isinstance(doc, dict) else {}


def members_record(members: Sequence[Member]) -> dict[str, Any]:
    """The record entries for the zip: ``keras_config`` (config.json's text, as before) and
    ``keras_members``: [name, content] in archive order, content null for config.json and the
    weights (rebuilt from the two), ``{"t": text}`` for UTF-8 members, else ``{"b": base64}``."""
    out: dict[str, Any] = {}
    listed = []
    for name, data in members:
        if name == CONFIG and data is not None and "keras_config" not in out:
            try:
                out["keras_config"] = data.decode("utf-8")
                listed.append([name, None])
                continue
            except UnicodeDecodeError:
                pass
        if data is None:
            listed.append([name, None])
            continue
        try:
            listed.append([name, {"t": data.decode("utf-8")}])
        except UnicodeDecodeError:
            listed.append([name, {"b": base64.b64encode(data).decode("ascii")}])
    out["keras_members"] = listed
    return out


def require_config(rec: dict[str, Any] | None, where: str) -> str:
    """The record's config.json text; the one clear error when there is none."""
    config = rec.get("keras_config") if rec else None
    if not isinstance(config, str):
        raise InvalidInputError(
            f"{where}: writing .keras needs the model's config.json, which only versions committed from a "
            ".keras file carry; write the weights as .weights.h5 (or .safetensors) instead"
        )
    return config


def members_from_record(rec: dict[str, Any] | None, metadata: dict[str, str] | None, where: str) -> list[Member]:
    """The zip's members from an ``__hdf5__`` record; a record from before ``keras_members``
    gets metadata.json from ``metadata``. InvalidInputError without a Keras config."""
    config = require_config(rec, where)
    listed = rec.get("keras_members")
    if listed is None:
        meta = {k: v for k, v in (metadata or {}).items() if k in ("keras_version", "date_saved")}
        return [(METADATA, json.dumps(meta).encode()), (CONFIG, config.encode("utf-8")), (WEIGHTS, None)]
    out: list[Member] = []
    try:
        for name, content in listed:
            if not isinstance(name, str):
                raise TypeError(name)
            _check_member_name(name, where)
            if content is None:
                data = config.encode("utf-8") if name == CONFIG else None
            elif "t" in content:
                data = content["t"].encode("utf-8")
            else:
                data = base64.b64decode(content["b"], validate=True)
            out.append((name, data))
    except (TypeError, ValueError, KeyError, AttributeError):
        raise InvalidInputError(f"{where}: the record's keras_members is not a list of [name, content]") from None
    if (WEIGHTS, None) not in out:
        out.append((WEIGHTS, None))
    return out


def write_zip(out: BinaryIO, members: Sequence[Member], weights: BinaryIO) -> None:
    """Write the .keras zip into ``out``: ``members`` in order, uncompressed, the weights
    member streamed from the file object ``weights``."""
    size = os.fstat(weights.fileno()).st_size
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, data in members:
            info = zipfile.ZipInfo(name, date_time=_EPOCH)
            if data is not None:
                zf.writestr(info, data)
                continue
            info.file_size = size  # so zipfile picks zip64 itself for a large weights file
            weights.seek(0)
            with zf.open(info, "w") as dst:
                shutil.copyfileobj(weights, dst, 1 << 22)
