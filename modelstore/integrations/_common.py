"""What every framework callback shares: the missing-extra error and a lazy Tracker."""

from __future__ import annotations

from typing import Any

from modelstore.errors import InvalidInputError


class MissingExtraError(InvalidInputError, ImportError):
    """An optional framework is not installed (an ImportError too, so `except ImportError` works)."""


def missing(framework: str, extra: str, pip_name: str, what: str = "this callback") -> MissingExtraError:
    return MissingExtraError(
        f"{what} needs {framework}: pip install 'modelstore[{extra}]' (or pip install {pip_name})")


class Committer:
    """Opens a Tracker at the first commit (so a callback can be built before the store
    exists), turns flat framework logs into metrics per dataset, and closes the store."""

    def __init__(self, store: Any, model: str, *, parent: str | None, author: str | None,
                 default_dataset: str, skip: tuple[str, ...] = (), meta: dict | None = None):
        from modelstore.catalog import check_dataset, check_model_name
        from modelstore.commit import check_meta

        check_model_name(model)
        check_dataset(default_dataset)
        self.meta = check_meta(meta)
        self.store, self.model, self.parent, self.author = store, model, parent, author
        self.default_dataset, self.skip = default_dataset, skip
        self.tracker = None
        self.versions: list = []  # VersionInfo of every commit, oldest first

    @property
    def last_ref(self) -> str | None:
        return self.versions[-1].ref if self.versions else self.parent

    def commit(self, state: Any, logs: Any, *, step: int | None, message: str, meta: dict | None = None):
        from modelstore.track import split_metrics, track

        if self.tracker is None:
            self.tracker = track(self.store, self.model, parent=self.parent, author=self.author, **self.meta)
        metrics = split_metrics(dict(logs or {}), self.default_dataset, self.skip)
        info = self.tracker.commit(state, metrics, message=message, step=step, meta=meta)
        self.versions.append(info)
        return info

    def close(self) -> None:
        if self.tracker is not None:
            self.parent = self.last_ref  # a later fit() on the same callback continues the line
            self.tracker.close()
            self.tracker = None
