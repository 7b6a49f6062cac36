"""ExactResume: a run resumed from a checkpoint continues exactly as if it had never stopped.

Lightning restores weights, optimizer, schedulers and loop counters, but not the random generators,
so a resumed run shuffles and augments differently from the uninterrupted one. This callback stores
the Python, NumPy, torch and CUDA generator states in every checkpoint and puts them back just before
the first training epoch after a resume, after the sanity-check validation pass has drawn its own numbers.
"""
from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from lightning_fabric.utilities.seed import _collect_rng_states, _set_rng_states
from pytorch_lightning.callbacks import Callback


class ExactResume(Callback):
    """Checkpoint the random generators and restore them at the start of the resumed epoch.

    Exact for checkpoints taken at epoch boundaries (what ``ModelCheckpoint`` writes by default);
    a checkpoint taken mid-epoch resumes with the generators of that moment.
    """

    def __init__(self) -> None:
        self._pending_states: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"rng_states": _collect_rng_states(include_cuda=True)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending_states = state_dict.get("rng_states")

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._pending_states is None:
            return
        states, self._pending_states = self._pending_states, None
        if not states.get("torch.cuda"):
            states = {key: value for key, value in states.items() if key != "torch.cuda"}
        _set_rng_states(states)
