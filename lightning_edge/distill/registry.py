"""Distillation losses by name, so a config or a flag can switch methods: ``losses=["kd", "at"]``."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Union

from torch import nn

from lightning_edge.distill.attention import AttentionTransferLoss
from lightning_edge.distill.hint import FeatureHintLoss
from lightning_edge.distill.kd import KDLoss

LOSSES: dict[str, type[nn.Module]] = {"kd": KDLoss, "at": AttentionTransferLoss, "hint": FeatureHintLoss}
DEFAULT_LOSSES = ("kd", "at")

LossSpec = Union[str, nn.Module, Mapping[str, Any]]


def create_loss(name: str, **kwargs: Any) -> nn.Module:
    """The loss registered as ``name``, built with ``kwargs``."""
    if name not in LOSSES:
        raise ValueError(f"unknown distillation loss {name!r}: registered losses are {', '.join(LOSSES)}")
    return LOSSES[name](**kwargs)


def _name_of(loss: nn.Module) -> str:
    return getattr(loss, "name", None) or type(loss).__name__.lower()


def build_losses(losses: Sequence[LossSpec] | Mapping[str, LossSpec | None] | None) -> dict[str, nn.Module]:
    """Named losses from a list (names or modules) or a mapping ``name -> module | kwargs | None``.

    ``None`` gives KD plus attention transfer with their default weights. A mapping's keys name the
    logged terms (``distill/NAME``); a key that is a registered name with a kwargs mapping (or ``None``)
    as value builds that loss, so ``{"kd": {"temperature": 2}}`` works in YAML and Python alike.
    """
    if losses is None:
        losses = list(DEFAULT_LOSSES)
    built: dict[str, nn.Module] = {}
    items = losses.items() if isinstance(losses, Mapping) else [(None, spec) for spec in losses]
    for key, spec in items:
        if isinstance(spec, nn.Module):
            loss = spec
        elif isinstance(spec, str):
            loss = create_loss(spec)
        elif spec is None or isinstance(spec, Mapping):
            if key is None:
                raise ValueError(f"a list of distillation losses holds names or modules, got {spec!r}")
            loss = create_loss(key, **dict(spec or {}))
        else:
            raise TypeError(f"a distillation loss is a name, a module or a mapping of arguments, got {type(spec).__name__}")
        name = key or _name_of(loss)
        if name in built:
            raise ValueError(f"distillation loss {name!r} is given twice; name them apart with a mapping")
        built[name] = loss
    if not built:
        raise ValueError("KnowledgeDistillation needs at least one loss; use distill=none to train without a teacher")
    if sum(getattr(loss, "inputs", "features") == "logits" for loss in built.values()) > 1:
        raise ValueError("only one logit loss (KDLoss) can weight the student's own loss; give one")
    return built
