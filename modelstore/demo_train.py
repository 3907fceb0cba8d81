"""Real, tiny training for `modelstore demo`: MLPs, a small CNN and a linear baseline in NumPy.

Data is scikit-learn's digits (8x8 images, shipped inside the package: no download), split
into train and a held-out validation set, plus a noisy copy of the validation set (Gaussian
noise and a random occluded patch). Everything is float32 and seeded, so a build is
reproducible and the accuracies recorded in the demo store are measured, not invented.
Parameters use PyTorch's names and layouts (`layers.0.weight` is (out, in); conv weights
(out, in, kh, kw)) so a checkpoint looks like the state dict a training loop would save.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

F32 = np.float32
N_CLASSES = 10


# -- data ----------------------------------------------------------------------------
@dataclass
class Digits:
    """Train and held-out validation splits; images flattened to 64 floats in [0, 1]."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_val_noisy: np.ndarray  # the same held-out images, corrupted (see corrupt())


def corrupt(x: np.ndarray, rng: np.random.Generator, sigma: float = 0.3, patch: int = 3) -> np.ndarray:
    """Gaussian pixel noise plus one zeroed patch x patch square per image, clipped to [0, 1]."""
    out = x.reshape(-1, 8, 8) + rng.normal(0.0, sigma, size=(len(x), 8, 8)).astype(F32)
    rows = rng.integers(0, 8 - patch + 1, size=len(x))
    cols = rng.integers(0, 8 - patch + 1, size=len(x))
    for i, (r, c) in enumerate(zip(rows, cols)):
        out[i, r:r + patch, c:c + patch] = 0.0
    return np.clip(out, 0.0, 1.0).reshape(len(x), 64).astype(F32)


def _digits_table() -> np.ndarray:
    """The (1797, 65) digits table (64 pixels 0..16, then the label) from the scikit-learn package.

    Read straight from the CSV the package ships (importing sklearn costs seconds: scipy);
    sklearn.datasets.load_digits() is the fallback should that file ever move.
    """
    import importlib.util
    from pathlib import Path

    from modelstore.errors import ModelstoreError

    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise ModelstoreError("the demo trains on scikit-learn's digits: pip install scikit-learn")
    csv = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz"
    if csv.is_file():
        return np.loadtxt(csv, delimiter=",")
    try:
        from sklearn.datasets import load_digits as sk_digits
    except ImportError:
        raise ModelstoreError("the demo trains on scikit-learn's digits: pip install scikit-learn") from None
    d = sk_digits()
    return np.column_stack([d.data, d.target])


def load_digits(seed: int = 0, val_fraction: float = 0.3) -> Digits:
    """scikit-learn's digits, shuffled with `seed` and split; the noisy copy uses seed + 1."""
    table = _digits_table()
    x = (table[:, :64] / 16.0).astype(F32)
    y = table[:, 64].astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    n_val = round(len(x) * val_fraction)
    val, train = order[:n_val], order[n_val:]
    x_val = x[val]
    return Digits(x[train], y[train], x_val, y[val], corrupt(x_val, np.random.default_rng(seed + 1)))


# -- architectures -------------------------------------------------------------------
def _dense_init(rng, n_in: int, n_out: int, prefix: str) -> dict:
    w = rng.normal(0.0, np.sqrt(2.0 / n_in), size=(n_out, n_in)).astype(F32)
    return {f"{prefix}.weight": w, f"{prefix}.bias": np.zeros(n_out, F32)}


class MLP:
    """Fully connected ReLU network 64 -> hidden... -> 10; hidden=() is logistic regression."""

    def __init__(self, hidden: tuple[int, ...]):
        self.hidden = tuple(hidden)
        sizes = (64, *self.hidden, N_CLASSES)
        self.layers = [(f"layers.{i}" if i < len(self.hidden) else "head", sizes[i], sizes[i + 1])
                       for i in range(len(sizes) - 1)]

    def init(self, rng) -> dict:
        params = {}
        for name, n_in, n_out in self.layers:
            params.update(_dense_init(rng, n_in, n_out, name))
        return params

    def flops(self) -> int:
        """Multiply-adds per image."""
        return sum(n_in * n_out for _, n_in, n_out in self.layers)

    def forward(self, p: dict, x: np.ndarray):
        cache = []
        h = x
        for i, (name, _, _) in enumerate(self.layers):
            z = h @ p[f"{name}.weight"].T + p[f"{name}.bias"]
            cache.append(h)
            h = np.maximum(z, 0.0) if i < len(self.layers) - 1 else z
        return h, cache

    def backward(self, p: dict, cache, dout: np.ndarray) -> dict:
        grads = {}
        for i in range(len(self.layers) - 1, -1, -1):
            name, h = self.layers[i][0], cache[i]
            grads[f"{name}.weight"] = dout.T @ h
            grads[f"{name}.bias"] = dout.sum(axis=0)
            if i:
                dout = (dout @ p[f"{name}.weight"]) * (h > 0)
        return grads


def _im2col(x: np.ndarray) -> np.ndarray:
    """(N, H, W, C) -> (N*H*W, 9*C): the 3x3 neighbourhoods of a zero-padded image."""
    n, h, w, c = x.shape
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    cols = np.stack([xp[:, i:i + h, j:j + w, :] for i in range(3) for j in range(3)], axis=3)
    return cols.reshape(n * h * w, 9 * c)


def _col2im(dcols: np.ndarray, shape) -> np.ndarray:
    n, h, w, c = shape
    dcols = dcols.reshape(n, h, w, 9, c)
    dxp = np.zeros((n, h + 2, w + 2, c), F32)
    for k in range(9):
        i, j = divmod(k, 3)
        dxp[:, i:i + h, j:j + w, :] += dcols[:, :, :, k, :]
    return dxp[:, 1:-1, 1:-1, :]


class CNN:
    """Two 3x3 conv + ReLU + 2x2 max-pool blocks, then a linear head: 8x8 -> 4x4 -> 2x2 -> 10."""

    def __init__(self, channels: tuple[int, int]):
        self.channels = tuple(channels)

    def init(self, rng) -> dict:
        c1, c2 = self.channels
        p = {}
        for name, c_in, c_out in (("conv1", 1, c1), ("conv2", c1, c2)):
            p[f"{name}.weight"] = rng.normal(0.0, np.sqrt(2.0 / (9 * c_in)), size=(c_out, c_in, 3, 3)).astype(F32)
            p[f"{name}.bias"] = np.zeros(c_out, F32)
        p.update(_dense_init(rng, 4 * c2, N_CLASSES, "head"))
        return p

    def flops(self) -> int:
        c1, c2 = self.channels
        return 64 * 9 * c1 + 16 * 9 * c1 * c2 + 4 * c2 * N_CLASSES

    @staticmethod
    def _wmat(w: np.ndarray) -> np.ndarray:  # (out, in, 3, 3) -> (9*in, out), matching _im2col
        return w.transpose(2, 3, 1, 0).reshape(-1, w.shape[0])

    def forward(self, p: dict, x: np.ndarray):
        h = x.reshape(-1, 8, 8, 1)
        cache = []
        for name in ("conv1", "conv2"):
            n, hh, ww, _ = h.shape
            cols = _im2col(h)
            z = (cols @ self._wmat(p[f"{name}.weight"]) + p[f"{name}.bias"]).reshape(n, hh, ww, -1)
            a = np.maximum(z, 0.0)
            pooled = a.reshape(n, hh // 2, 2, ww // 2, 2, -1).max(axis=(2, 4))
            cache.append((h.shape, cols, a, pooled))
            h = pooled
        flat = h.reshape(len(h), -1)
        cache.append(flat)
        return flat @ p["head.weight"].T + p["head.bias"], cache

    def backward(self, p: dict, cache, dout: np.ndarray) -> dict:
        flat = cache[2]
        grads = {"head.weight": dout.T @ flat, "head.bias": dout.sum(axis=0)}
        d = (dout @ p["head.weight"]).reshape(cache[1][3].shape)
        for idx, name in ((1, "conv2"), (0, "conv1")):
            in_shape, cols, a, pooled = cache[idx]
            n, hh, ww, c = a.shape
            a6 = a.reshape(n, hh // 2, 2, ww // 2, 2, c)
            mask = a6 == pooled[:, :, None, :, None, :]
            da = (mask * d[:, :, None, :, None, :]).reshape(a.shape) * (a > 0)
            dz = da.reshape(-1, c)
            w = p[f"{name}.weight"]
            grads[f"{name}.weight"] = (cols.T @ dz).reshape(3, 3, w.shape[1], w.shape[0]).transpose(3, 2, 0, 1)
            grads[f"{name}.bias"] = dz.sum(axis=0)
            if idx:
                d = _col2im(dz @ self._wmat(w).T, in_shape)
        return grads


# -- optimisation --------------------------------------------------------------------
class Adam:
    def __init__(self, lr: float, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8):
        self.lr, self.b1, self.b2, self.eps = lr, beta1, beta2, eps
        self.m: dict = {}
        self.v: dict = {}
        self.t = 0

    def step(self, params: dict, grads: dict) -> None:
        self.t += 1
        c1, c2 = 1 - self.b1 ** self.t, 1 - self.b2 ** self.t
        for k, g in grads.items():
            m = self.m[k] = self.b1 * self.m.get(k, 0.0) + (1 - self.b1) * g
            v = self.v[k] = self.b2 * self.v.get(k, 0.0) + (1 - self.b2) * g * g
            params[k] = (params[k] - self.lr * (m / c1) / (np.sqrt(v / c2) + self.eps)).astype(F32)


class SGD:
    """SGD with momentum."""

    def __init__(self, lr: float, momentum: float = 0.9):
        self.lr, self.momentum = lr, momentum
        self.vel: dict = {}

    def step(self, params: dict, grads: dict) -> None:
        for k, g in grads.items():
            v = self.vel[k] = self.momentum * self.vel.get(k, 0.0) + g
            params[k] = (params[k] - self.lr * v).astype(F32)


def make_optimizer(name: str, lr: float):
    return {"adam": Adam, "sgd": SGD}[name](lr)


def _softmax_xent(logits: np.ndarray, y: np.ndarray):
    """Mean cross-entropy and its gradient with respect to the logits."""
    z = logits - logits.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    loss = float(-logp[np.arange(len(y)), y].mean())
    d = np.exp(logp)
    d[np.arange(len(y)), y] -= 1.0
    return loss, (d / len(y)).astype(F32)


def train_epoch(arch, params: dict, opt, x: np.ndarray, y: np.ndarray, rng, batch: int = 32,
                trainable: tuple[str, ...] | None = None) -> float:
    """One pass of minibatch training in place; `trainable`: name prefixes to update (None: all)."""
    order = rng.permutation(len(x))
    total = 0.0
    for start in range(0, len(x), batch):
        idx = order[start:start + batch]
        logits, cache = arch.forward(params, x[idx])
        loss, dlogits = _softmax_xent(logits, y[idx])
        grads = arch.backward(params, cache, dlogits)
        if trainable is not None:
            grads = {k: g for k, g in grads.items() if k.startswith(trainable)}
        opt.step(params, grads)
        total += loss * len(idx)
    return total / len(x)


def evaluate(arch, params: dict, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Accuracy, mean cross-entropy loss and macro F1 on a held-out set."""
    logits, _ = arch.forward(params, x)
    loss, _ = _softmax_xent(logits, y)
    pred = logits.argmax(axis=1)
    f1s = []
    for c in range(N_CLASSES):
        tp = np.sum((pred == c) & (y == c))
        denom = np.sum(pred == c) + np.sum(y == c)
        f1s.append(2.0 * tp / denom if denom else 0.0)
    return {"accuracy": round(float(np.mean(pred == y)), 6), "loss": round(loss, 6),
            "f1": round(float(np.mean(f1s)), 6)}


def n_params(params: dict) -> int:
    return int(sum(v.size for v in params.values()))
