"""`modelstore demo`: build a small, realistic store offline in seconds (the CLI tours it).

Three model families are trained for real on scikit-learn's digits (modelstore.demo_train):
a linear baseline, MLP trials of different widths and depths, and small CNNs. Every epoch is
saved to a .safetensors file, as a training loop would, and committed with its metadata and
its measured metrics on two held-out validation sets (clean and noisy digits); each epoch's
parent is the previous one. The deepest MLP's best epoch is then fine-tuned on noise-augmented
data as another model (lineage across models, frozen layers deduplicated); tags and comments
follow.

Running it again on the same store is safe: versions already there are kept (training is
seeded, so it is replayed to reach the missing ones), and a complete demo store is left as is.
"""

from __future__ import annotations

import contextlib
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from modelstore.errors import NotFoundError

TASK = "image-classification"
DATASET = "digits"
CLEAN, NOISY = "digits-val", "digits-noisy"  # validation datasets (names under the `digits` family)
BATCH = 32


@dataclass(frozen=True)
class Trial:
    """One training run: a model line in the store, one version per epoch."""

    model: str
    family: str  # linear | mlp | cnn
    shape: tuple  # hidden sizes (linear, mlp) or conv channels (cnn)
    optimizer: str
    lr: float
    cpu_ghz: float  # deployment target: the slowest CPU clock the trial is meant to run on
    author: str
    seed: int

    def arch(self):
        from modelstore.demo_train import CNN, MLP

        return CNN(self.shape) if self.family == "cnn" else MLP(self.shape)

    def architecture(self) -> str:
        if self.family == "cnn":
            return f"conv3x3({self.shape[0]})-pool-conv3x3({self.shape[1]})-pool-linear(10)"
        return "-".join(str(n) for n in (64, *self.shape, 10))


TRIALS = (
    Trial("digits-logreg", "linear", (), "sgd", 0.02, 0.5, "alice", 1),
    Trial("digits-mlp-64", "mlp", (64,), "adam", 1e-3, 0.8, "alice", 2),
    Trial("digits-mlp-256x128", "mlp", (256, 128), "adam", 1e-3, 1.2, "alice", 3),
    Trial("digits-mlp-512x256x128", "mlp", (512, 256, 128), "sgd", 0.01, 1.5, "alice", 4),
    Trial("digits-cnn-8x16", "cnn", (8, 16), "adam", 2e-3, 2.0, "bob", 5),
    Trial("digits-cnn-16x32", "cnn", (16, 32), "adam", 2e-3, 2.4, "bob", 6),
)


@dataclass(frozen=True)
class FineTune:
    """Fine-tune the best epoch of `source` on noise-augmented training data, some layers frozen."""

    model: str = "digits-mlp-robust"
    source: str = "digits-mlp-512x256x128"
    trainable: tuple = ("layers.2", "head")  # layers.0 and layers.1 stay frozen: stored once
    optimizer: str = "adam"
    lr: float = 1e-3
    epochs: int = 4
    noisy_copies: int = 2  # training set = clean images + this many corrupted copies
    author: str = "carol"
    seed: int = 7


FINETUNE = FineTune()


def planned(epochs: int = 8, finetune: FineTune = FINETUNE) -> dict[str, int]:
    """Model name -> number of versions a complete demo store has."""
    return {**{t.model: epochs for t in TRIALS}, finetune.model: finetune.epochs}


def build(store, say=print, *, epochs: int = 8) -> list:
    """Train and commit the demo models into `store`; returns every demo VersionInfo, in build order.

    Versions already in the store are reused (not committed twice); tags and comments are
    added only where missing. A store that already holds the complete demo is left untouched.
    """
    plan = planned(epochs)
    have = _existing(store, plan)
    if all(e in have.get(m, {}) for m, n in plan.items() for e in range(1, n + 1)):
        say(f"demo store already built ({sum(plan.values())} versions); nothing to do")
        return [have[m][e] for m, n in plan.items() for e in range(1, n + 1)]

    from modelstore.demo_train import load_digits

    data = load_digits(seed=0)  # first: a clear error if scikit-learn is missing
    out: list = []
    with _one_blas_thread(), tempfile.TemporaryDirectory() as tmp:
        run = _Runner(store, data, Path(tmp), have, say)
        snapshots = {}
        for trial in TRIALS:
            versions, params = run.trial(trial, epochs)
            out += versions
            snapshots[trial.model] = (versions, params)
        src_versions, src_params = snapshots[FINETUNE.source]
        best = _best(src_versions, CLEAN)
        out += run.finetune(FINETUNE, best, src_params[src_versions.index(best)])
    _annotate(store, out, best, say)
    return [store.resolve(v.ref) for v in out]


def _one_blas_thread():
    """Small matrices: BLAS threads only contend (10x slower on 2 busy cores) and cost determinism."""
    try:
        from threadpoolctl import threadpool_limits  # a scikit-learn dependency
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _existing(store, plan: dict[str, int]) -> dict[str, dict[int, object]]:
    """Model -> epoch -> the demo version already committed for it (by its `epoch` metadata)."""
    out = {}
    for model in plan:
        try:
            out[model] = {v.meta["epoch"]: v for v in store.log(model) if isinstance(v.meta.get("epoch"), int)}
        except NotFoundError:
            pass
    return out


def _best(versions: list, dataset: str):
    """The version with the highest accuracy on `dataset` (the earliest on a tie)."""
    return max(versions, key=lambda v: (v.metrics.get(dataset, {}).get("accuracy", -1.0), -v.number))


def _meta(t: Trial, optimizer: str, lr: float, epochs: int, seed: int) -> dict:
    """The metadata every epoch of a run carries (the epoch and its train loss are added per commit)."""
    return {"task": TASK, "dataset": DATASET, "framework": "numpy", "family": t.family,
            "architecture": t.architecture(), "depth": len(t.shape) + 1, "width": max(t.shape, default=0),
            "optimizer": optimizer, "lr": repr(lr), "batch_size": BATCH, "epochs": epochs, "seed": seed,
            "cpu_ghz": t.cpu_ghz, "flops": t.arch().flops()}


class _Runner:
    """Trains one model line at a time and commits each epoch through a .safetensors file."""

    def __init__(self, store, data, tmp: Path, have: dict, say):
        self.store, self.data, self.tmp, self.have, self.say = store, data, tmp, have, say

    def trial(self, t: Trial, epochs: int):
        from modelstore.demo_train import evaluate, make_optimizer, n_params, train_epoch

        arch = t.arch()
        rng = np.random.default_rng(t.seed)
        params = arch.init(rng)
        opt = make_optimizer(t.optimizer, t.lr)
        meta = _meta(t, t.optimizer, t.lr, epochs, t.seed)
        versions, history = [], []
        for epoch in range(1, epochs + 1):
            train_loss = train_epoch(arch, params, opt, self.data.x_train, self.data.y_train, rng, batch=BATCH)
            history.append({k: v.copy() for k, v in params.items()})
            clean = evaluate(arch, params, self.data.x_val, self.data.y_val)
            noisy = evaluate(arch, params, self.data.x_val_noisy, self.data.y_val)
            versions.append(self._commit(
                t.model, epoch, params, {**meta, "epoch": epoch, "train_loss": round(train_loss, 6)},
                clean, noisy, author=t.author, parent=versions[-1].ref if versions else [],
                message=f"epoch {epoch}/{epochs}: val accuracy {clean['accuracy']:.3f}"))
        first, last = versions[0].metrics, versions[-1].metrics
        self.say(f"trained {t.model:24s} {n_params(params):>7,d} params  {epochs} epochs  accuracy "
                 f"{first[CLEAN]['accuracy']:.3f} -> {last[CLEAN]['accuracy']:.3f} clean, "
                 f"{last[NOISY]['accuracy']:.3f} noisy")
        return versions, history

    def finetune(self, ft: FineTune, source, params: dict) -> list:
        from modelstore.demo_train import corrupt, evaluate, make_optimizer, train_epoch

        trial = next(t for t in TRIALS if t.model == ft.source)
        arch = trial.arch()
        params = {k: v.copy() for k, v in params.items()}
        rng = np.random.default_rng(ft.seed)
        x = np.concatenate([self.data.x_train] + [corrupt(self.data.x_train, np.random.default_rng(ft.seed + 100 + i))
                                                  for i in range(ft.noisy_copies)])
        y = np.concatenate([self.data.y_train] * (ft.noisy_copies + 1))
        opt = make_optimizer(ft.optimizer, ft.lr)
        meta = {**_meta(trial, ft.optimizer, ft.lr, ft.epochs, ft.seed), "finetuned_from": source.ref,
                "trainable": ",".join(ft.trainable), "augment": "gaussian-noise+occlusion"}
        versions = []
        for epoch in range(1, ft.epochs + 1):
            train_loss = train_epoch(arch, params, opt, x, y, rng, batch=BATCH, trainable=ft.trainable)
            clean = evaluate(arch, params, self.data.x_val, self.data.y_val)
            noisy = evaluate(arch, params, self.data.x_val_noisy, self.data.y_val)
            parent = versions[-1].ref if versions else source.ref
            versions.append(self._commit(
                ft.model, epoch, params, {**meta, "epoch": epoch, "train_loss": round(train_loss, 6)},
                clean, noisy, author=ft.author, parent=parent,
                message=f"fine-tune {'+'.join(ft.trainable)} on noisy digits, epoch {epoch}/{ft.epochs}: "
                        f"noisy accuracy {noisy['accuracy']:.3f}"))
        src_noisy = source.metrics[NOISY]["accuracy"]
        self.say(f"fine-tuned {source.ref} -> {ft.model} ({'+'.join(ft.trainable)} trained, the rest frozen): "
                 f"noisy accuracy {src_noisy:.3f} -> {versions[-1].metrics[NOISY]['accuracy']:.3f}")
        return versions

    def _commit(self, model: str, epoch: int, params: dict, meta: dict, clean: dict, noisy: dict, *,
                author: str, parent, message: str):
        """Commit one epoch (or reuse it when the store already has it): save, then store.commit."""
        from safetensors.numpy import save_file

        existing = self.have.get(model, {}).get(epoch)
        if existing is not None:
            return existing
        path = self.tmp / f"{model}-epoch{epoch}.safetensors"
        save_file(params, str(path), metadata={"epoch": str(epoch)})
        metrics = [(ds, name, value) for ds, values in ((CLEAN, clean), (NOISY, noisy))
                   for name, value in values.items()]
        info = self.store.commit(path, model=model, message=message, meta=meta, parent=parent, author=author,
                                 metrics=metrics)
        path.unlink()
        return info


def _annotate(store, versions: list, source, say) -> None:
    """Tags (`best` per model, `baseline`, `production`) and a few review comments, where missing."""
    by_model: dict[str, list] = {}
    for v in versions:
        by_model.setdefault(v.model, []).append(v)
    existing = {(t["model"], t["tag"]) for t in store.tags()}

    def tag(ref: str, name: str, author: str) -> None:
        if (ref.split("@")[0], name) not in existing:
            store.tag(ref, name, author=author)

    for model, vs in by_model.items():
        dataset = NOISY if model == FINETUNE.model else CLEAN
        tag(_best(vs, dataset).ref, "best", vs[0].author)
    tag(by_model["digits-logreg"][-1].ref, "baseline", "alice")
    robust = _best(by_model[FINETUNE.model], NOISY)
    tag(robust.ref, "production", "dave")

    base = by_model["digits-logreg"][-1]
    src_clean, src_noisy = source.metrics[CLEAN]["accuracy"], source.metrics[NOISY]["accuracy"]
    notes = [
        (base, "alice", (f"Linear baseline: {base.metrics[CLEAN]['accuracy']:.1%} on clean digits. "
                         "Anything that does worse than this has a bug.")),
        (source, "bob", (f"Best epoch of {source.model} on clean digits ({src_clean:.1%}) but only "
                         f"{src_noisy:.1%} on noisy ones; fine-tuning {'+'.join(FINETUNE.trainable)} "
                         f"on noise-augmented data as {FINETUNE.model}.")),
        (robust, "dave", (f"Promoted to production: noisy accuracy {src_noisy:.1%} -> "
                          f"{robust.metrics[NOISY]['accuracy']:.1%}, clean {src_clean:.1%} -> "
                          f"{robust.metrics[CLEAN]['accuracy']:.1%}, same size and cost.")),
    ]
    added = 0
    for v, author, text in notes:
        if not store.resolve(v.ref).comments:
            store.comment(v.ref, text, author=author)
            added += 1
    say(f"tagged best/baseline/production, {added} comment(s) added")
