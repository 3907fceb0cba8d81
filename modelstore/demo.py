"""`modelstore demo`: build a small realistic store offline, in seconds, and tour it.

A GPT-shaped model is "trained" for a few epochs (every weight moves a little), then
fine-tuned on two blocks as a second model with lineage; every checkpoint goes through a
real .safetensors file, as a user's training loop would write it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from safetensors.numpy import save_file

from modelstore.testing.models import finetune, train_step, transformer


def build(store, epochs: int = 4, d_model: int = 256, say=print) -> list:
    """Commit a training series and a fine-tune into `store`; returns the VersionInfos."""
    out = []
    sd = transformer(n_layers=6, d_model=d_model, vocab=4000, dtype="F32", seed=7)
    with tempfile.TemporaryDirectory() as tmp:
        for epoch in range(1, epochs + 1):
            sd = train_step(sd, lr=1e-3, seed=epoch)
            path = Path(tmp) / f"epoch{epoch}.safetensors"
            save_file(sd, str(path), metadata={"epoch": str(epoch)})
            info = store.commit(path, model="tiny-gpt", message=f"epoch {epoch}",
                                meta={"task": "text-generation", "dataset": "tinystories", "epoch": str(epoch)})
            say(f"committed {info.ref}  {info.size / 1e6:.1f} MB  ({info.stored / 1e6:.1f} MB new)")
            out.append(info)
        ft = finetune(sd, layers=[4, 5], scale=0.05, seed=99)
        path = Path(tmp) / "sst2.safetensors"
        save_file(ft, str(path))
        info = store.commit(path, model="tiny-gpt-sst2", message="fine-tune blocks 4-5 on sst2",
                            meta={"task": "text-classification", "dataset": "sst2"}, parent=out[-1].ref)
        say(f"committed {info.ref}  {info.size / 1e6:.1f} MB  ({info.stored / 1e6:.1f} MB new; parent {out[-1].ref})")
        out.append(info)
    return out
