"""Commit from inside a training loop: `modelstore.track(store, model="...")`.

A Tracker commits a PyTorch state_dict, a dict of numpy arrays, or a checkpoint path as
the next version of one model, with metrics per dataset, in one call. Each commit's parent
is the tracker's previous commit (or `parent=` given at start), so one run is one line of
versions. In-memory dicts go straight to the chunker (no temp file, no pickling; torch
tensors are viewed as numpy, bf16 as same-width ints), and unchanged chunks dedup while
changed ones delta-encode against the parent, so committing every epoch is cheap.

    with modelstore.track(".modelstore", model="resnet", lr=0.1) as run:
        for epoch in range(10):
            train(...)
            run.commit(net.state_dict(), metrics={"cifar10-val": {"accuracy": acc}}, step=epoch)

Metric logs from frameworks are flat ({"val_loss": 0.3, "loss": 0.5}); `split_metrics`
turns them into {dataset: {name: value}} (see its docstring for the naming rule).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self

from modelstore.errors import InvalidInputError

STATE_DICT_KEYS = ("state_dict", "model_state_dict")  # as modelstore.formats.torch_io reads .pt files

__all__ = ["Tracker", "metric_triples", "split_metrics", "track"]

# Key prefixes that name a dataset split in framework logs: "val_loss" -> ("val", "loss").
SPLIT_PREFIXES = ("train", "training", "val", "valid", "validation", "eval", "test", "dev")
_BAD_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.-]+")
_BAD_DATASET_CHARS = re.compile(r"[^A-Za-z0-9_./-]+")
_SPLIT_KEY = re.compile(rf"^({'|'.join(SPLIT_PREFIXES)})[_-](.+)$")


def track(store_or_path: Any = None, model: str = "", *, parent: str | None = None, author: str | None = None,
          **meta: Any) -> Tracker:
    """A Tracker committing versions of `model` to a Store (or the store at a path).

    `meta` keyword arguments become attributes of every version (e.g. lr=0.1, task="cls");
    `parent` is the REF the first commit descends from (default: the model's latest version).
    A path to an absent or empty folder becomes a new store.
    """
    return Tracker(store_or_path, model, parent=parent, author=author, meta=meta)


class Tracker:
    """One training run's line of versions; a context manager (closes a store it opened)."""

    def __init__(self, store_or_path: Any, model: str, *, parent: str | None = None, author: str | None = None,
                 meta: Mapping[str, Any] | None = None):
        from modelstore.catalog import check_model_name
        from modelstore.commit import check_meta
        from modelstore.config import Layout
        from modelstore.store import Store

        check_model_name(model)
        self.meta = check_meta(dict(meta or {}))
        self.model = model
        self.author = author
        self.versions: list = []  # VersionInfo of each commit, oldest first
        self._parent = parent
        if isinstance(store_or_path, Store):
            self.store, self._owns_store = store_or_path, False
        elif store_or_path is not None and not Layout(Path(store_or_path)).config.exists() \
                and (not Path(store_or_path).exists() or not any(Path(store_or_path).iterdir())):
            # a fresh (absent or empty) folder becomes a new store, as `git init` would
            self.store, self._owns_store = Store.init(store_or_path), True
        else:
            self.store, self._owns_store = Store.open(store_or_path), True

    @property
    def last(self):
        """The VersionInfo of the latest commit of this tracker (None before the first)."""
        return self.versions[-1] if self.versions else None

    def commit(self, state: Any, metrics: Any = None, *, message: str = "", step: int | None = None,
               meta: Mapping[str, Any] | None = None):
        """Store `state` (state_dict, dict of arrays, or path) as the next version; returns its VersionInfo.

        `metrics`: {dataset: {name: value}} (values may be 0-d tensors or numpy scalars), or
        (dataset, name, value) triples. `step` is recorded as the attribute `step`; `meta`
        adds attributes to this version only.
        """
        if self.store is None:
            raise InvalidInputError(f"tracker of {self.model!r} is closed; start a new modelstore.track(...)")
        triples = metric_triples(metrics)
        extra = dict(self.meta)
        if step is not None:
            extra["step"] = int(step)
        extra.update(meta or {})
        source = _as_source(state)
        parent = self.last.ref if self.last is not None else self._parent
        info = self.store.commit(source, model=self.model, message=message, meta=extra, parent=parent,
                                 author=self.author, metrics=triples)
        self.versions.append(info)
        return info

    def close(self) -> None:
        if self._owns_store and self.store is not None:
            self.store.close()
        self.store = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Tracker(model={self.model!r}, commits={len(self.versions)}, last={self.last.ref if self.last else None})"


def _as_source(state: Any) -> Any:
    """What Store.commit reads: a path, or a flat {name: array/tensor} with torch tensors
    detached (a dict holding a dict under "state_dict"/"model_state_dict" gives that dict,
    as for .pt files)."""
    if isinstance(state, (str, os.PathLike)):
        return state
    if not isinstance(state, Mapping):
        raise InvalidInputError(
            f"cannot commit a {type(state).__name__}; pass model.state_dict(), a dict of numpy arrays, or a path")
    for key in STATE_DICT_KEYS:  # a training checkpoint dict: {"state_dict": {...}, "epoch": ...}
        if isinstance(state.get(key), Mapping):
            state = state[key]
            break
    out = {}
    for name, value in state.items():
        detach = getattr(value, "detach", None)
        out[name] = detach() if callable(detach) and _is_torch(value) else value
    return out


def _is_torch(value: Any) -> bool:
    from modelstore.formats.torch_io import is_torch_tensor

    return is_torch_tensor(value)


def _number(value: Any) -> Any:
    """A Python number from a float/int, numpy scalar or one-element tensor (else unchanged)."""
    if isinstance(value, (int, float)):
        return value
    if callable(getattr(value, "detach", None)):  # a tensor that may require grad
        value = value.detach()
    item = getattr(value, "item", None)
    if callable(item):
        try:
            return item()
        except (ValueError, RuntimeError, TypeError):  # more than one element
            return value
    return value


def metric_triples(metrics: Any) -> list[tuple[str, str, Any]]:
    """{dataset: {name: value}} or [(dataset, name, value)] -> triples (values made plain numbers)."""
    if not metrics:
        return []
    if isinstance(metrics, Mapping):
        out = []
        for dataset, values in metrics.items():
            if not isinstance(values, Mapping):
                raise InvalidInputError(
                    f"metrics[{dataset!r}] is a {type(values).__name__}; expected {{dataset: {{name: value}}}}")
            out.extend((dataset, name, _number(v)) for name, v in values.items())
        return out
    try:
        return [(d, n, _number(v)) for d, n, v in metrics]
    except (TypeError, ValueError):
        raise InvalidInputError("metrics must be {dataset: {name: value}} or (dataset, name, value) triples") from None


def split_metrics(flat: Mapping[str, Any], default_dataset: str, skip: tuple[str, ...] = ()) -> dict[str, dict[str, float]]:
    """Flat framework logs -> {dataset: {name: value}}, keeping only finite numbers.

    Naming rule: "DATASET/NAME" (any prefix before the first '/') -> (DATASET, NAME);
    "val_loss", "eval_accuracy", "test-f1" (a known split prefix: train, training, val, valid,
    validation, eval, test, dev, then '_' or '-') -> (split, rest); anything else ->
    (default_dataset, key). Characters a metric or dataset name cannot hold become '_'.
    Keys in `skip`, non-numbers and NaN/inf are dropped (a NaN loss must not stop training).
    """
    out: dict[str, dict[str, float]] = {}
    for key, raw in flat.items():
        if not isinstance(key, str) or key in skip:
            continue
        value = _number(raw)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        dataset, name = default_dataset, key
        if "/" in key.strip("/"):
            dataset, name = key.strip("/").split("/", 1)
        else:
            m = _SPLIT_KEY.match(key)
            if m:
                dataset, name = m.group(1), m.group(2)
        dataset = _BAD_DATASET_CHARS.sub("_", dataset).strip("_./-") or default_dataset
        name = _BAD_NAME_CHARS.sub("_", name)
        if not re.match(r"^[A-Za-z_]", name):
            name = "_" + name
        out.setdefault(dataset, {})[name[:100]] = float(value)
    return out
