"""Hugging Face style folders of safetensors files.

A folder is read as follows (format "hf-safetensors" in every case):
- if it has ``model.safetensors.index.json`` (or, failing that, exactly one
  ``*.safetensors.index.json``): its ``weight_map`` (tensor name -> shard file name)
  is authoritative. Every shard is opened once. A tensor listed in the index but missing
  from its shard, or a tensor in a shard that the index does not list, is an error
  (nothing is silently dropped). Shard names must be plain relative paths that stay inside
  the folder (no absolute paths, no ``..``, no symlink escaping the folder).
- otherwise, if it has exactly one ``*.safetensors`` file, that file is read.

Tensor order: shards sorted by file name (``model-00001-of-00003`` ... sorts naturally),
then data-offset order inside each shard, i.e. sequential I/O.
Metadata: the shards' ``__metadata__`` merged in that shard order (first value wins); the
index's own ``metadata`` (e.g. total_size) is not copied.
"""

from __future__ import annotations

import os
from pathlib import PurePosixPath

from modelstore.errors import InvalidInputError, NotFoundError

from .base import ModelSource
from .safetensors_io import loads_strict_json, read_safetensors

INDEX_NAME = "model.safetensors.index.json"
FORMAT = "hf-safetensors"


def _find_index(folder: str, names: list[str]) -> str | None:
    if INDEX_NAME in names:
        return INDEX_NAME
    found = sorted(n for n in names if n.endswith(".safetensors.index.json"))
    if len(found) > 1:
        raise InvalidInputError(
            f"{folder}: several index files ({', '.join(found)}); open one model at a time "
            f"(keep only {INDEX_NAME})"
        )
    return found[0] if found else None


def _shard_path(folder: str, shard: object, index_path: str) -> str:
    if not isinstance(shard, str) or not shard:
        raise InvalidInputError(f"{index_path}: shard name {shard!r} is not a non-empty string")
    parts = PurePosixPath(shard.replace("\\", "/")).parts
    if os.path.isabs(shard) or shard.startswith(("/", "\\")) or ".." in parts:
        raise InvalidInputError(
            f"{index_path}: shard {shard!r} points outside the model folder; shard names must be relative paths inside it"
        )
    full = os.path.join(folder, *parts)
    real_folder = os.path.realpath(folder)
    if os.path.commonpath([real_folder, os.path.realpath(full)]) != real_folder:
        raise InvalidInputError(
            f"{index_path}: shard {shard!r} resolves outside the model folder (symlink?); refusing to read it"
        )
    return full


def read_folder(folder: str | os.PathLike[str]) -> ModelSource:
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise NotFoundError(f"no such folder: {folder}")
    names = sorted(os.listdir(folder))
    index_name = _find_index(folder, names)
    if index_name is None:
        st = [n for n in names if n.endswith(".safetensors") and os.path.isfile(os.path.join(folder, n))]
        if len(st) == 1:
            src = read_safetensors(os.path.join(folder, st[0]), format=FORMAT)
            src.path = folder
            return src
        if st:
            raise InvalidInputError(
                f"{folder}: {len(st)} .safetensors files but no {INDEX_NAME}; add the index or open one file"
            )
        others = [n for n in names if n.endswith((".bin", ".pt", ".pth", ".npz"))]
        hint = f"; to read {others[0]} pass its path" if others else ""
        raise InvalidInputError(
            f"{folder}: no .safetensors files in folder (expected {INDEX_NAME} with shards, "
            f"or exactly one .safetensors file){hint}"
        )

    index_path = os.path.join(folder, index_name)
    try:
        with open(index_path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise InvalidInputError(f"cannot read {index_path}: {e.strerror}") from None
    index = loads_strict_json(raw, index_path)
    if not isinstance(index, dict) or not isinstance(index.get("weight_map"), dict):
        raise InvalidInputError(f"{index_path}: no 'weight_map' object; not a safetensors index")
    weight_map: dict[str, object] = index["weight_map"]
    if not weight_map:
        raise InvalidInputError(f"{index_path}: 'weight_map' is empty")
    by_shard: dict[str, set[str]] = {}
    for name, shard in weight_map.items():
        if not name:
            raise InvalidInputError(f"{index_path}: empty tensor name in weight_map")
        _shard_path(folder, shard, index_path)
        by_shard.setdefault(shard, set()).add(name)  # type: ignore[arg-type]

    opened: list[ModelSource] = []
    try:
        tensors, metadata = [], {}
        for shard in sorted(by_shard):
            full = _shard_path(folder, shard, index_path)
            if not os.path.isfile(full):
                raise NotFoundError(f"{index_path}: shard {shard!r} listed in weight_map does not exist")
            src = read_safetensors(full, format=FORMAT)
            opened.append(src)
            listed = by_shard[shard]
            present = {t.name for t in src.tensors}
            if missing := sorted(listed - present):
                raise InvalidInputError(
                    f"{full}: tensor {missing[0]!r} listed in {index_name} is not in this shard"
                    + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
                )
            if extra := [t.name for t in src.tensors if t.name not in listed]:
                raise InvalidInputError(
                    f"{full}: tensor {extra[0]!r} is in this shard but {index_name} maps it "
                    + (f"to {weight_map[extra[0]]!r}" if extra[0] in weight_map else "nowhere")
                    + "; fix the index"
                )
            tensors.extend(src.tensors)
            for k, v in src.metadata.items():
                metadata.setdefault(k, v)
        closers = [s.close for s in opened]
        return ModelSource(FORMAT, tensors, metadata, path=folder, closers=closers)
    except BaseException:
        for s in opened:
            s.close()
        raise
