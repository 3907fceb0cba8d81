"""`modelstore import mlflow --tracking-uri URI [--model NAME]`: MLflow registered models -> versions.

Each registered model version becomes a version of the model of the same name, in MLflow
version order, each the parent of the next. Carried over:
- weights: read from the version's artifacts (a local artifact store is read in place;
  any other is downloaded to a temporary folder by MLflow). Only safetensors, .npz and
  PyTorch state-dict files (.pt/.pth/.bin, loaded weights-only) are read; nothing is ever
  unpickled (MLflow's pickled flavours, e.g. python_model.pkl or a whole pickled nn.Module,
  are refused). The first readable file by preference (a sharded safetensors folder, then
  .safetensors, .npz, torch; larger first) is committed; the others are listed in the
  summary. A version with no readable weights is skipped with its reason.
- the run's params as attributes (a key that is built in or not a valid key becomes
  "param.KEY", invalid characters as '_'); registered-version tags as "mlflow.tag.KEY";
  plus mlflow.model, mlflow.version, mlflow.run_id, mlflow.source (and mlflow.stage).
- the run's metrics (latest value of each key): dataset = the key's prefix where there is
  one ("val/acc" -> val/acc as (val, acc); "val_loss" -> (val, loss), see
  track.split_metrics), else the dataset "mlflow" ("accuracy" -> (mlflow, accuracy)).
- the version's description as the message, its user as the author.
Re-running imports only versions not imported yet (matched by the mlflow.version
attribute), so an interrupted import can simply be repeated.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from pathlib import Path
from urllib.parse import unquote, urlparse

from modelstore.errors import InvalidInputError, ModelstoreError, NotFoundError

DATASET = "mlflow"
WEIGHT_SUFFIXES = (".safetensors", ".npz", ".pt", ".pth", ".bin")
_BAD_KEY = re.compile(r"[^A-Za-z0-9_.-]+")


def _client(tracking_uri: str):
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        from modelstore.integrations._common import missing

        raise missing("MLflow", "mlflow", "mlflow", what="import mlflow") from None
    if "://" not in tracking_uri and not tracking_uri.startswith(("sqlite:", "file:")) \
            and not Path(tracking_uri).exists():
        raise NotFoundError(f"--tracking-uri {tracking_uri}: no such folder")
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def _mlflow_error(e: Exception, what: str) -> ModelstoreError:
    code = getattr(e, "error_code", "")
    msg = str(getattr(e, "message", e)).splitlines()[0][:300]
    if code == "RESOURCE_DOES_NOT_EXIST":
        return NotFoundError(f"mlflow: {what}: {msg}")
    return InvalidInputError(f"mlflow: {what}: {msg}")


def _paged(fn, **kw):
    token = None
    while True:
        page = fn(page_token=token, **kw) if token else fn(**kw)
        yield from page
        token = getattr(page, "token", None)
        if not token:
            return


def attr_key(key: str, prefix: str = "param.") -> str:
    """An MLflow param/tag key as a valid, non-built-in attribute key."""
    from modelstore.catalog import BUILTINS, META_KEY

    if META_KEY.match(key) and key not in BUILTINS and not key.startswith("mlflow."):
        return key
    return (prefix + _BAD_KEY.sub("_", key))[:100]


def local_dir(uri: str) -> Path | None:
    """The folder a file:// (or plain path) artifact URI names; None for remote stores."""
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return Path(unquote(parsed.path) if parsed.scheme else uri)
    return None


def pick_weights(folder: Path) -> tuple[Path | None, list[dict]]:
    """(the weights file or HF folder to commit, notes on every other candidate)."""
    from modelstore.formats import open_model

    if not folder.exists():
        return None, [{"path": str(folder), "reason": "artifact folder does not exist"}]
    files = [folder] if folder.is_file() else [p for p in folder.rglob("*") if p.is_file()]
    # a sharded Hugging Face folder is one checkpoint
    cands: list[Path] = sorted({p.parent for p in files if p.name.endswith(".safetensors.index.json")})
    sharded = set(cands)
    rank = {".safetensors": 0, ".npz": 1, ".pt": 2, ".pth": 2, ".bin": 2}
    cands += sorted((p for p in files if p.suffix.lower() in WEIGHT_SUFFIXES and p.parent not in sharded),
                    key=lambda p: (rank[p.suffix.lower()], -p.stat().st_size, str(p)))
    notes, chosen = [], None
    for c in cands:
        rel = str(c.relative_to(folder)) if c != folder else c.name
        if chosen is not None:
            notes.append({"path": rel, "reason": f"not imported: {chosen.name} was chosen"})
            continue
        try:
            with open_model(os.fspath(c)) as src:
                if src.tensors:
                    chosen = c
                else:
                    notes.append({"path": rel, "reason": "holds no tensors"})
        except ModelstoreError as e:
            notes.append({"path": rel, "reason": str(e)})
    if not cands:
        kinds = sorted({p.suffix or p.name for p in files})[:8]
        notes.append({"path": ".", "reason": "no safetensors/npz/state-dict file among the artifacts"
                      + (f" (found {', '.join(kinds)})" if kinds else "")})
    return chosen, notes


def _meta(mv, run) -> dict:
    meta = {"mlflow.model": mv.name, "mlflow.version": str(mv.version), "mlflow.source": mv.source or ""}
    if mv.run_id:
        meta["mlflow.run_id"] = mv.run_id
    stage = getattr(mv, "current_stage", None)
    if stage and stage != "None":
        meta["mlflow.stage"] = stage
    for k, v in (getattr(mv, "tags", None) or {}).items():
        meta[("mlflow.tag." + _BAD_KEY.sub("_", k))[:100]] = v
    if run is not None:
        for k, v in run.data.params.items():
            meta[attr_key(k)] = v
    return {k: v for k, v in meta.items() if v != ""}


def import_mlflow(store, tracking_uri: str, *, model: str | None = None, progress=None) -> dict:
    """Import registered model versions from an MLflow tracking/registry URI; a summary dict."""
    from modelstore.catalog import check_model_name
    from modelstore.track import split_metrics

    client = _client(tracking_uri)
    try:
        if model is not None:
            names = [client.get_registered_model(model).name]
        else:
            names = sorted(rm.name for rm in _paged(client.search_registered_models, max_results=1000))
    except ModelstoreError:
        raise
    except Exception as e:  # noqa: BLE001 - MlflowException, connection and SQL errors alike
        raise _mlflow_error(e, f"registered model {model}" if model else "listing registered models") from None
    start = time.perf_counter()
    done, skipped, already, raw = [], [], 0, 0
    for name in names:
        try:
            check_model_name(name)
            if "'" in name:
                raise InvalidInputError(f"model name {name!r} holds a quote")
        except InvalidInputError as e:
            skipped.append({"model": name, "version": None, "reason": str(e)})
            continue
        try:
            mvs = sorted(_paged(client.search_model_versions, filter_string=f"name = '{name}'", max_results=1000),
                         key=lambda mv: int(mv.version))
        except Exception as e:  # noqa: BLE001 - as above
            raise _mlflow_error(e, f"versions of {name}") from None
        try:
            existing = store.log(name)
        except NotFoundError:
            existing = []
        seen = {str(v.meta.get("mlflow.version")): v for v in existing if "mlflow.version" in v.meta}
        parent = None
        for mv in mvs:
            if str(mv.version) in seen:
                already += 1
                parent = seen[str(mv.version)].ref
                continue
            if progress:
                progress(f"{name} v{mv.version}")
            run = client.get_run(mv.run_id) if mv.run_id else None
            uri = client.get_model_version_download_uri(name, mv.version)
            info, notes = _commit_one(store, client, uri, mv, run, parent, split_metrics, tracking_uri)
            if info is None:  # the version is skipped: say why in one entry
                why = "; ".join(f"{n['path']}: {n['reason']}" if n["path"] != "." else n["reason"] for n in notes)
                skipped.append({"model": name, "version": int(mv.version), "reason": f"not imported: {why}"})
                continue
            for n in notes:  # imported; other files among its artifacts were not
                skipped.append({"model": name, "version": int(mv.version), "path": n["path"], "reason": n["reason"]})
            parent = info.ref
            done.append(info)
            raw += info.size
    seconds = time.perf_counter() - start
    stored = sum(v.stored for v in done)
    return {"tracking_uri": tracking_uri, "models": names, "versions": [v.to_dict() for v in done],
            "skipped": skipped, "already_imported": already, "raw_bytes": raw, "stored_bytes": stored,
            "stored_over_raw": stored / raw if raw else 0.0, "seconds": seconds}


def _commit_one(store, client, uri, mv, run, parent, split_metrics, tracking_uri):
    folder = local_dir(uri)
    tmp = None
    try:
        if folder is None:  # remote artifact store: let MLflow fetch it
            import mlflow.artifacts

            tmp = tempfile.TemporaryDirectory(prefix="modelstore-mlflow-")
            folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp.name,
                                                              tracking_uri=tracking_uri))
        path, notes = pick_weights(folder)
        if path is None:
            return None, notes
        metrics = split_metrics(run.data.metrics if run is not None else {}, DATASET)
        triples = [(d, n, v) for d, ms in metrics.items() for n, v in ms.items()]
        author = getattr(mv, "user_id", None) or (run.info.user_id if run is not None else None) or None
        info = store.commit(os.fspath(path), model=mv.name, message=mv.description or f"mlflow {mv.name} v{mv.version}",
                            meta=_meta(mv, run), parent=parent, author=author, metrics=triples)
        return info, notes
    finally:
        if tmp is not None:
            tmp.cleanup()
