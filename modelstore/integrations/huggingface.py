"""A Hugging Face `transformers` TrainerCallback committing a version at each checkpoint save.

    trainer = Trainer(..., callbacks=[ModelstoreCallback(".modelstore", model="bert-sst2")])

At `on_save` (whenever the Trainer's save strategy saves) the model's state_dict is
committed with the trainer's latest logged metrics (the newest value of each key in
`state.log_history`; eval_loss -> dataset "eval", name "loss", unprefixed keys such as the
training "loss" go to `default_dataset`; runtime/throughput keys are dropped), attributes
`step` (global step) and `epoch`, and the previous commit as parent. Only the main process
commits.
"""

from __future__ import annotations

from typing import Any

from ._common import Committer, missing

try:
    from transformers import TrainerCallback as _Base

    HAVE_TRANSFORMERS = True
except ImportError:
    _Base, HAVE_TRANSFORMERS = object, False

__all__ = ["ModelstoreCallback"]

SKIP = ("epoch", "step", "total_flos")
SKIP_SUFFIXES = ("_runtime", "_per_second")


def latest_logs(log_history: list[dict]) -> dict[str, Any]:
    """The newest value of every metric key in a Trainer's log history."""
    out: dict[str, Any] = {}
    for entry in log_history:
        for k, v in entry.items():
            if k not in SKIP and not k.endswith(SKIP_SUFFIXES):
                out[k] = v
    return out


class ModelstoreCallback(_Base):
    def __init__(self, store: Any = None, model: str = "", *, parent: str | None = None, author: str | None = None,
                 default_dataset: str = "train", **meta: Any):
        if not HAVE_TRANSFORMERS:
            raise missing("Hugging Face transformers", "huggingface", "transformers")
        self.committer = Committer(store, model, parent=parent, author=author, default_dataset=default_dataset,
                                   meta=meta)

    @property
    def versions(self) -> list:
        """VersionInfo of each commit made by this callback, oldest first."""
        return self.committer.versions

    def on_save(self, args, state, control, model=None, **kwargs):
        if not state.is_world_process_zero:
            return
        if model is None:
            from modelstore.errors import InvalidInputError

            raise InvalidInputError("modelstore callback: the Trainer passed no model to on_save")
        step = int(state.global_step)
        meta = {"epoch": float(state.epoch)} if state.epoch is not None else {}
        self.committer.commit(model.state_dict(), latest_logs(state.log_history), step=step, meta=meta,
                              message=f"transformers checkpoint: step {step}")

    def on_train_end(self, args, state, control, **kwargs):
        self.committer.close()
