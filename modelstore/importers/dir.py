"""`modelstore import dir PATH --model M`: a folder of checkpoints -> one version per checkpoint.

Candidates are the folder's entries, not recursing: files ending in .safetensors, .npz,
.pt, .pth, .bin, .ckpt, and subfolders holding .safetensors (Hugging Face checkpoint-N/
folders). Anything else (hidden files, .json, logs ...) is ignored and listed as such.
Order is natural name order (epoch2 before epoch10, checkpoint-500 before checkpoint-1000);
each version is the parent of the next, the first descends from `parent` (default: the
model's latest version). Everything runs in one process on the one open store, so the
chunk index, pack writer and catalog connections are reused across checkpoints.

Bad files: every candidate is opened (headers read, torch files loaded weights-only)
before anything is committed. By default one unreadable candidate stops the import with
one error naming it and nothing is committed; with `skip_bad=True` it is skipped, listed
under "skipped" with its reason, and the chain links the remaining versions. A failure
while committing (a file damaged past its header, disk full, Ctrl-C) deletes the versions
this import already made, so an import is all or nothing (their chunks go at `gc`).

Re-running is safe: a checkpoint already imported into `model` -- a version whose
"source" attribute is the file's name AND whose content id equals the file's (its chunks
hashed, nothing stored) -- is not committed again but listed under "already_imported_files";
a file renamed or rewritten since is imported as new. New checkpoints descend from the
model's latest version, so adding epoch30.pt to the folder and re-running extends the line.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from pathlib import Path

from modelstore.errors import InvalidInputError, ModelstoreError, NotFoundError

MODEL_SUFFIXES = (".safetensors", ".npz", ".pt", ".pth", ".bin", ".ckpt")


def natural_key(name: str) -> tuple:
    """Sort key comparing digit runs as numbers: epoch2 < epoch10."""
    return tuple((0, int(part), part) if part.isdigit() else (1, 0, part.lower())
                 for part in re.split(r"(\d+)", name) if part)


def candidates(folder: Path) -> tuple[list[Path], list[str]]:
    """(checkpoint paths in natural order, names of ignored entries)."""
    picked, ignored = [], []
    for entry in sorted(folder.iterdir(), key=lambda p: natural_key(p.name)):
        if entry.name.startswith("."):
            ignored.append(entry.name)
        elif entry.is_file() and entry.suffix.lower() in MODEL_SUFFIXES or entry.is_dir() and any(p.suffix == ".safetensors" for p in entry.iterdir()):
            picked.append(entry)
        else:
            ignored.append(entry.name)
    return picked, ignored


def _check_readable(path: Path) -> None:
    from modelstore.formats import open_model

    with open_model(os.fspath(path)) as src:  # .ckpt: sniffed as a torch file, loaded weights-only
        if not src.tensors:
            raise InvalidInputError(f"{path}: holds no tensors")


def content_id(store, path: Path) -> str:
    """The content id `store.commit(path)` would give (hex), from the file's chunk hashes
    alone: the same chunking and identity as modelstore.commit, nothing written."""
    from modelstore import chunking, dtypes, hashing
    from modelstore.formats import open_model
    from modelstore.manifest import Manifest, TensorEntry

    target = store.config.chunk_target_bytes
    entries = []
    with open_model(os.fspath(path)) as src:
        if not src.tensors:
            raise InvalidInputError(f"{path}: holds no tensors")
        for t in src.tensors:
            dt = dtypes.get(t.dtype)
            rows = chunking.chunk_rows(t.shape, dt.itemsize, target)
            buf = t.buffer() if t.nbytes else memoryview(b"")
            ids = []
            for off, length in chunking.chunk_spans(t.shape, dt.itemsize, rows):
                ids.append(hashing.digest(buf[off:off + length]))
                t.release(off, off + length)
            del buf
            entries.append(TensorEntry(t.name, dt.name, tuple(t.shape), rows, tuple(ids)))
    return Manifest(tuple(entries)).content_id.hex()


def _imported(store, model: str) -> dict[str, dict[str, str]]:
    """{source file name: {content id: ref}} of the versions of `model` an import made."""
    try:
        log = store.log(model)
    except NotFoundError:
        return {}
    out: dict[str, dict[str, str]] = {}
    for v in log:
        src = v.meta.get("source")
        if isinstance(src, str):
            out.setdefault(src, {}).setdefault(v.content_id, v.ref)
    return out


def _roll_back(store, versions) -> None:
    """Delete the versions this import made (newest first): an import is all or nothing.
    Their chunks stay until `gc`, as after `rm`."""
    for info in reversed(versions):
        store.catalog.delete_version(info.id)


def import_dir(store, folder, *, model: str, parent: str | None = None, message: str | None = None,
               meta: dict | None = None, skip_bad: bool = False,
               progress: Callable[[str, int, int], None] | None = None) -> dict:
    """Commit every checkpoint in `folder` as consecutive versions of `model`; a summary dict."""
    from modelstore.catalog import check_model_name
    from modelstore.commit import check_meta

    check_model_name(model)
    meta = check_meta(meta)
    folder = Path(folder)
    if not folder.exists():
        raise NotFoundError(f"{folder}: no such folder")
    if not folder.is_dir():
        raise InvalidInputError(f"{folder}: not a folder (use `modelstore commit` for one file)")
    paths, ignored = candidates(folder)
    done = _imported(store, model)
    skipped, already, good = [], [], []
    for p in paths:  # validate all before committing any
        try:
            if p.name in done:  # hashing the chunks also proves it readable
                cid = content_id(store, p)
                if cid in done[p.name]:
                    already.append({"path": p.name, "ref": done[p.name][cid], "content_id": cid})
                    continue
            else:
                _check_readable(p)
            good.append(p)
        except ModelstoreError as e:
            if not skip_bad:
                raise type(e)(f"import dir: {e} (nothing imported; fix or remove it, or pass --skip-bad)") from None
            skipped.append({"path": p.name, "error": str(e)})
    if not good and not already:
        raise InvalidInputError(f"{folder}: no readable checkpoint found "
                                f"(looked for {', '.join(MODEL_SUFFIXES)} files and Hugging Face folders)")
    start = time.perf_counter()
    versions, raw = [], 0
    try:
        for i, p in enumerate(good):
            if progress:
                progress(p.name, i, len(good))
            info = store.commit(p, model=model, message=message or f"import {p.name}",
                                meta={**meta, "source": p.name}, parent=versions[-1].ref if versions else parent)
            versions.append(info)
            raw += info.size
    except BaseException as e:
        _roll_back(store, versions)
        if isinstance(e, ModelstoreError):
            raise type(e)(f"import dir: {p.name}: {e} (nothing imported)") from None
        raise
    seconds = time.perf_counter() - start
    stored = sum(v.stored for v in versions)
    return {
        "model": model, "folder": os.fspath(folder.resolve()),
        "versions": [v.to_dict() for v in versions], "skipped": skipped, "ignored": ignored,
        "already_imported": len(already), "already_imported_files": already,
        "raw_bytes": raw, "stored_bytes": stored, "stored_over_raw": stored / raw if raw else 0.0,
        "seconds": seconds, "mb_per_s": raw / 1e6 / seconds if seconds > 0 else 0.0,
    }
