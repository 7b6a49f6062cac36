"""Logger factories the ``logger`` config group instantiates."""
from __future__ import annotations

import netrc
import os

from pytorch_lightning.loggers import WandbLogger


def wandb_logged_in() -> bool:
    """True when wandb has credentials: WANDB_API_KEY, or an api.wandb.ai entry in ~/.netrc."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def wandb_logger(offline: bool | None = None, **kwargs) -> WandbLogger:
    """A WandbLogger that runs offline unless the user is logged in (``wandb sync`` uploads later).

    Args:
        offline: force offline (True) or online (False); None decides from the credentials.
        **kwargs: passed to ``WandbLogger`` (project, name, save_dir, tags, ...).
    """
    if offline is None:
        offline = not wandb_logged_in()
    return WandbLogger(offline=offline, **kwargs)
