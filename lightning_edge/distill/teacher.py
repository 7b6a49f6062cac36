"""Getting a teacher network: a module, a model name with local weights, or a Lightning checkpoint."""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Union

from torch import nn

from lightning_edge.models.factory import create_model, load_weights, recorded_model_spec

TeacherSpec = Union[nn.Module, str, os.PathLike, Mapping[str, Any]]


def load_teacher(teacher: TeacherSpec, **overrides: Any) -> nn.Module:
    """The teacher network for ``teacher``; its weights are loaded, nothing else is changed.

    Args:
        teacher: an ``nn.Module`` (returned as is, not copied); the path of a Lightning checkpoint written
            by ``ClassificationModule`` (it records the architecture); or a mapping with ``name`` (any
            ``create_model`` name), ``checkpoint`` (local weights: a state dict, timm or Lightning checkpoint)
            and other ``create_model`` arguments (``num_classes``, ``in_chans``, ``kwargs``...).
        overrides: ``create_model`` arguments used where the spec gives none (e.g. the data's classes).
    """
    if isinstance(teacher, nn.Module):
        return teacher
    if isinstance(teacher, (str, os.PathLike)):
        path = os.fspath(teacher)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"teacher {path!r} is neither a module nor an existing checkpoint file. To build a teacher by model "
                "name, give its weights too: teacher={'name': NAME, 'checkpoint': PATH} (Hydra: teacher.name=NAME teacher.ckpt=PATH)"
            )
        teacher = {"checkpoint": path}
    if not isinstance(teacher, Mapping):
        raise TypeError(f"teacher must be an nn.Module, a checkpoint path or a mapping, got {type(teacher).__name__}")
    spec = dict(teacher)
    checkpoint = spec.pop("checkpoint", None) or spec.pop("ckpt", None)
    extra = dict(spec.pop("kwargs", None) or {})
    if checkpoint and not os.path.isfile(os.fspath(checkpoint)):
        raise FileNotFoundError(f"teacher checkpoint {os.fspath(checkpoint)!r} does not exist; check teacher.ckpt")
    if not checkpoint:
        if not spec.get("name"):
            raise ValueError("the teacher needs a model name with a checkpoint, or a checkpoint that records its model")
        raise ValueError(
            f"teacher {spec['name']!r} has no checkpoint: distilling from untrained weights teaches nothing. "
            "Give its trained weights: teacher.ckpt=PATH (Python: {'name': ..., 'checkpoint': PATH})"
        )
    recorded = recorded_model_spec(os.fspath(checkpoint))
    if recorded is not None:
        if spec.get("name") and spec["name"] != recorded["name"]:
            raise ValueError(
                f"teacher checkpoint {os.fspath(checkpoint)!r} holds a {recorded['name']!r}, not the {spec['name']!r} "
                "named for the teacher; drop teacher.name or give the matching checkpoint"
            )
        spec = {**recorded, **{k: v for k, v in spec.items() if v is not None and k != "name"}}
    elif not spec.get("name"):
        raise ValueError(
            f"teacher checkpoint {os.fspath(checkpoint)!r} does not record its architecture (no hyper_parameters.net with a "
            "model name). Name the architecture too: teacher.name=MODEL teacher.ckpt=PATH "
            "(Python: KnowledgeDistillation(teacher={'name': MODEL, 'checkpoint': PATH, 'num_classes': N}))"
        )
    arguments = {**{k: v for k, v in overrides.items() if v is not None}, **{k: v for k, v in spec.items() if v is not None}}
    arguments.pop("pretrained", None)
    model = create_model(**arguments, **extra)
    load_weights(model, checkpoint)
    return model


def freeze(teacher: nn.Module) -> nn.Module:
    """Teacher mode: eval (BN uses its running statistics and never updates them), no gradients."""
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher
