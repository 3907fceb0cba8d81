"""Synthetic checkpoints with trained-like weights, built in code (no downloads).

"Trained-like" means roughly Gaussian weights with per-layer scales (as after training),
so compression ratios resemble real checkpoints rather than constant or uniform data.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

_NP = {"F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16, "F64": np.float64}


def transformer(n_layers: int = 12, d_model: int = 256, vocab: int = 1000, dtype: str = "F32",
                seed: int = 0) -> dict[str, np.ndarray]:
    """A GPT/BERT-shaped state dict: embeddings, n_layers blocks (attention + MLP), head."""
    rng = np.random.default_rng(seed)
    dt = _NP[dtype]

    def w(*shape, scale=None):
        scale = scale if scale is not None else 1.0 / np.sqrt(shape[-1])
        return (rng.standard_normal(shape, dtype=np.float32) * scale).astype(dt)

    sd = {"embed.weight": w(vocab, d_model, scale=0.02)}
    for i in range(n_layers):
        p = f"layers.{i}."
        sd[p + "attn.qkv.weight"] = w(3 * d_model, d_model)
        sd[p + "attn.qkv.bias"] = w(3 * d_model, scale=0.01)
        sd[p + "attn.out.weight"] = w(d_model, d_model)
        sd[p + "ln1.weight"] = (1.0 + w(d_model, scale=0.05)).astype(dt)
        sd[p + "mlp.fc1.weight"] = w(4 * d_model, d_model)
        sd[p + "mlp.fc2.weight"] = w(d_model, 4 * d_model)
        sd[p + "ln2.weight"] = (1.0 + w(d_model, scale=0.05)).astype(dt)
    sd["head.weight"] = w(vocab, d_model, scale=0.02)
    return sd


def sized_transformer(total_bytes: int, dtype: str = "F32", n_layers: int = 12, seed: int = 0) -> dict[str, np.ndarray]:
    """A transformer whose weights total about `total_bytes` (d_model chosen to fit)."""
    itemsize = np.dtype(_NP[dtype]).itemsize
    # params ~ 12 * L * d^2 + 2 * vocab * d with vocab = 8 d
    d = int(np.sqrt(total_bytes / itemsize / (12 * n_layers + 16)))
    d = max(16, d - d % 16)
    return transformer(n_layers=n_layers, d_model=d, vocab=8 * d, dtype=dtype, seed=seed)


def finetune(sd: dict[str, np.ndarray], layers: list[int], scale: float = 1e-3, seed: int = 1) -> dict[str, np.ndarray]:
    """Change every tensor of the given blocks slightly; leave the rest bit-identical."""
    rng = np.random.default_rng(seed)
    out = dict(sd)
    prefixes = tuple(f"layers.{i}." for i in layers)
    for k, v in sd.items():
        if k.startswith(prefixes):
            out[k] = (v.astype(np.float32) + rng.standard_normal(v.shape, dtype=np.float32) * scale
                      * np.float32(np.abs(v.astype(np.float32)).mean() + 1e-8)).astype(v.dtype)
    return out


def train_step(sd: dict[str, np.ndarray], lr: float = 1e-3, seed: int = 2) -> dict[str, np.ndarray]:
    """Every weight moves a little (one epoch of full training)."""
    rng = np.random.default_rng(seed)
    return {k: (v.astype(np.float32) * (1 + lr * rng.standard_normal(v.shape, dtype=np.float32))).astype(v.dtype)
            for k, v in sd.items()}
