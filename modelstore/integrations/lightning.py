"""A PyTorch Lightning callback committing a version each time a checkpoint is saved.

    trainer = L.Trainer(callbacks=[ModelstoreCallback(".modelstore", model="mnist-cnn")])

The version holds the LightningModule's state_dict as it is written to the checkpoint,
with `trainer.callback_metrics` as metrics (split per dataset by track.split_metrics, e.g.
val_loss -> dataset "val", name "loss"; unprefixed keys go to `default_dataset`),
attributes `step` (global step) and `epoch`, and the previous commit as parent. Only rank 0
commits. The last committed REF is kept in the callback's state in the checkpoint, so a
resumed run continues the same line. Works with `lightning` (preferred) or `pytorch_lightning`.
"""

from __future__ import annotations

from typing import Any

from ._common import Committer, missing

try:
    from lightning.pytorch.callbacks import Callback as _Base

    HAVE_LIGHTNING = True
except ImportError:
    try:
        from pytorch_lightning.callbacks import Callback as _Base

        HAVE_LIGHTNING = True
    except ImportError:
        _Base, HAVE_LIGHTNING = object, False

__all__ = ["ModelstoreCallback"]


class ModelstoreCallback(_Base):
    def __init__(self, store: Any = None, model: str = "", *, parent: str | None = None, author: str | None = None,
                 default_dataset: str = "train", **meta: Any):
        if not HAVE_LIGHTNING:
            raise missing("PyTorch Lightning", "lightning", "lightning")
        super().__init__()
        self.committer = Committer(store, model, parent=parent, author=author, default_dataset=default_dataset,
                                   meta=meta)

    @property
    def versions(self) -> list:
        """VersionInfo of each commit made by this callback, oldest first."""
        return self.committer.versions

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        if not trainer.is_global_zero:
            return
        state = checkpoint.get("state_dict") or pl_module.state_dict()
        epoch, step = int(trainer.current_epoch), int(trainer.global_step)
        info = self.committer.commit(state, trainer.callback_metrics, step=step, meta={"epoch": epoch},
                                     message=f"lightning checkpoint: epoch {epoch}, step {step}")
        # Lightning gathered state_dict() before this hook: record the version this checkpoint is.
        mine = checkpoint.get("callbacks", {}).get(self.state_key)
        if isinstance(mine, dict):
            mine["last_ref"] = info.ref

    def state_dict(self) -> dict:
        return {"last_ref": self.committer.last_ref}

    def load_state_dict(self, state_dict: dict) -> None:
        if state_dict.get("last_ref") and not self.committer.versions:
            self.committer.parent = state_dict["last_ref"]

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self.committer.close()
