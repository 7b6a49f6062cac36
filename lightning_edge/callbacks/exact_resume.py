"""ExactResume: a run resumed from a checkpoint continues exactly as if it had never stopped.

Lightning restores weights, optimizer, schedulers and loop counters, but not the random generators,
so a resumed run shuffles and augments differently from the uninterrupted one. This callback stores
the Python, NumPy, torch and CUDA generator states in every checkpoint and puts them back when the
checkpoint loads, and again after the sanity-check validation pass has drawn its own numbers: Lightning
creates (and prefetches from) the resumed epoch's training iterator right after that pass, before
``on_train_epoch_start``.
"""
from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback


def collect_rng_states() -> dict[str, Any]:
    """Every generator's state as tensors, lists and numbers, so ``torch.load(weights_only=True)`` reads it."""
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [kind, keys.tolist(), int(position), int(has_gauss), float(cached_gaussian)],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["torch.cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    """Inverse of ``collect_rng_states``."""
    torch.set_rng_state(states["torch"])
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, position, has_gauss, cached_gaussian = states["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached_gaussian))
    if states.get("torch.cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["torch.cuda"])


class ExactResume(Callback):
    """Checkpoint the random generators and restore them at the start of the resumed epoch.

    Exact for checkpoints taken at epoch boundaries (what ``ModelCheckpoint`` writes by default);
    a checkpoint taken mid-epoch resumes with the generators of that moment.
    """

    def __init__(self) -> None:
        self._pending_states: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"rng_states": collect_rng_states()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending_states = state_dict.get("rng_states")
        if self._pending_states is not None:
            restore_rng_states(self._pending_states)

    def on_sanity_check_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._pending_states is not None:
            restore_rng_states(self._pending_states)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._pending_states = None
