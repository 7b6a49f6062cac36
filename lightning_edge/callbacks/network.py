"""Which module of a LightningModule is the network a callback works on."""
from __future__ import annotations

import pytorch_lightning as pl
from torch import nn

from lightning_edge.models.taps import find_module

# Attribute names LightningModules commonly keep their network under, tried in this order.
NETWORK_ATTRIBUTES = ("net", "model", "student", "network")


def find_network(
    pl_module: pl.LightningModule, spec: str | nn.Module | None = None, exclude: tuple[nn.Module, ...] = ()
) -> tuple[str, nn.Module]:
    """(path, module) of the network: ``spec`` as a module or attribute path, else the first of
    ``NETWORK_ATTRIBUTES`` that holds a module (not one in ``exclude``), else the LightningModule itself."""
    if isinstance(spec, nn.Module):
        for path, module in pl_module.named_modules():
            if module is spec:
                return path, module
        raise ValueError(f"the {type(spec).__name__} given as the network is not part of the LightningModule")
    if isinstance(spec, str):
        return spec, find_module(pl_module, spec, "LightningModule")
    for name in NETWORK_ATTRIBUTES:
        candidate = getattr(pl_module, name, None)
        if isinstance(candidate, nn.Module) and not any(candidate is other for other in exclude):
            return name, candidate
    return "", pl_module
