"""A Keras 3 callback committing a version at the end of every epoch (any Keras backend).

    model.fit(x, y, epochs=10, callbacks=[ModelstoreCallback(".modelstore", model="mlp")])

The version holds every model weight by its Keras path (e.g. "dense/kernel"), the epoch's
`logs` as metrics (val_loss -> dataset "val", name "loss"; the training "loss" and other
unprefixed keys go to `default_dataset`), attribute `step` = epochs completed, and the
previous commit as parent. `every_n_epochs` thins the commits.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._common import Committer, missing

try:
    import keras

    _Base, HAVE_KERAS = keras.callbacks.Callback, True
except ImportError:
    _Base, HAVE_KERAS = object, False

__all__ = ["ModelstoreCallback", "keras_weights"]


def keras_weights(model) -> dict[str, Any]:
    """{path: array} of a Keras model's weights (names made unique if a path repeats).

    On the torch backend the values are the variables' tensors, detached (read without a
    copy); on other backends numpy copies."""
    from modelstore.formats.torch_io import is_torch_tensor

    out: dict[str, Any] = {}
    for i, v in enumerate(model.weights):
        name = getattr(v, "path", None) or v.name
        if name in out:
            name = f"{name}#{i}"
        value = getattr(v, "value", v)
        out[name] = value.detach() if is_torch_tensor(value) else np.asarray(keras.ops.convert_to_numpy(v))
    return out


class ModelstoreCallback(_Base):
    def __init__(self, store: Any = None, model: str = "", *, parent: str | None = None, author: str | None = None,
                 default_dataset: str = "train", every_n_epochs: int = 1, **meta: Any):
        if not HAVE_KERAS:
            raise missing("Keras 3", "keras", "keras")
        super().__init__()
        self.every_n_epochs = max(1, int(every_n_epochs))
        self.committer = Committer(store, model, parent=parent, author=author, default_dataset=default_dataset,
                                   meta=meta)

    @property
    def versions(self) -> list:
        """VersionInfo of each commit made by this callback, oldest first."""
        return self.committer.versions

    def on_epoch_end(self, epoch, logs=None):
        done = int(epoch) + 1
        if done % self.every_n_epochs:
            return
        self.committer.commit(keras_weights(self.model), logs, step=done, message=f"keras epoch {done}")

    def on_train_end(self, logs=None):
        self.committer.close()
