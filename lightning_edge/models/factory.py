"""One entry point for every network: our CIFAR models and all of timm's, by name.

``create_model`` is what ``model.name`` in the Hydra config resolves to. It adapts the network to the
data (input channels, classes and, for models with a fixed input size, the resolution), loads local
weights, and checks with one forward pass that the network can run on the data before any training.
"""
from __future__ import annotations

import difflib
import fnmatch
import os
import re
from collections.abc import Mapping
from typing import Any

import timm
import torch
from torch import nn

from lightning_edge.models.cifar_wrn import register_wrn_name
from lightning_edge.models.moonshine import derive_student

# Prefixes that wrappers put in front of parameter names: our ClassificationModule, DDP, torch.compile.
_STATE_DICT_PREFIXES = ("net.", "model.", "module.", "_orig_mod.")


def list_models(pattern: str = "*") -> list[str]:
    """Every model name ``create_model`` accepts that matches ``pattern`` (ours first)."""
    ours = sorted(timm.list_models("cifar_*"), key=_natural_key)
    return [name for name in ours if fnmatch.fnmatch(name, pattern)] + [
        name for name in timm.list_models(pattern) if not name.startswith("cifar_")
    ]


def _natural_key(name: str) -> list:
    """Sort cifar_resnet20 before cifar_resnet110."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _unknown_model_error(name: str) -> ValueError:
    candidates = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
    hint = f" Did you mean {', '.join(candidates)}?" if candidates else ""
    return ValueError(
        f"unknown model name {name!r}.{hint} Our CIFAR models are cifar_resnet20/32/44/56/110 and "
        "cifar_wrn_DEPTH_WIDTH (e.g. cifar_wrn_40_2); any timm model name works too. "
        "List them all with: lightning-edge models"
    )


def create_model(
    name: str,
    num_classes: int = 10,
    in_chans: int = 3,
    image_size: int | None = None,
    pretrained: bool = False,
    checkpoint_path: str | os.PathLike | None = None,
    derive: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build ``name`` (ours or timm's) for ``in_chans``-channel images and ``num_classes`` classes.

    Args:
        name: a timm model name, ``cifar_resnet{20,32,44,56,110}`` or ``cifar_wrn_DEPTH_WIDTH``.
        num_classes: classifier size.
        in_chans: input channels of the data.
        image_size: side of the (square) input; when given, models with a fixed input size are built for
            it and one forward pass proves the network runs at that size.
        pretrained: download weights through timm (needs a model hub; ours have none).
        checkpoint_path: local weights to load: a state dict, a timm checkpoint or a Lightning checkpoint.
        derive: ``derive_student`` arguments (``{"block": "G(4)"}``): build the Moonshine student of ``name``
            instead; a checkpoint's spec that holds it rebuilds the student.
        **kwargs: passed to the model's constructor (``drop_rate``, ``shortcut``, ...).
    """
    register_wrn_name(name)
    if not timm.is_model(name):
        raise _unknown_model_error(name)
    arguments = dict(num_classes=num_classes, in_chans=in_chans, **kwargs)
    try:
        model = _create_sized(name, pretrained, arguments, image_size)
    except (OSError, RuntimeError) as error:
        if not pretrained:
            raise
        raise RuntimeError(
            f"could not fetch pretrained weights for {name!r} ({error}). This machine may have no model hub: "
            "set model.pretrained=false and model.checkpoint_path=PATH to load local weights"
        ) from error
    if derive:
        shape = (in_chans, image_size, image_size) if image_size is not None else None
        model, _ = derive_student(model, input_shape=shape, **dict(derive))
    if checkpoint_path:
        load_weights(model, checkpoint_path)
    if image_size is not None:
        check_runs_on(model, name, (in_chans, image_size, image_size))
    return model


def _create_sized(name: str, pretrained: bool, arguments: dict, image_size: int | None) -> nn.Module:
    """Pass ``img_size`` to models that have a fixed input size (ViT and kin); others don't accept it."""
    if image_size is not None and "img_size" not in arguments:
        try:
            return timm.create_model(name, pretrained=pretrained, img_size=image_size, **arguments)
        except TypeError as error:
            if "img_size" not in str(error):
                raise
    return timm.create_model(name, pretrained=pretrained, **arguments)


def check_runs_on(model: nn.Module, name: str, input_shape: tuple[int, int, int]) -> None:
    """Run one sample through ``model`` so a size mismatch stops here, naming the model and the fix."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros((1, *input_shape)))
    except Exception as error:  # noqa: BLE001 - any failure here means the data and model don't fit
        channels, height, width = input_shape
        raise ValueError(
            f"model {name!r} cannot run on {channels}x{height}x{width} inputs: {error}. "
            "Resize the data (data.image_size=N) or pick a model for small images (cifar_resnet20, cifar_wrn_16_2)"
        ) from error
    finally:
        model.train(was_training)


def read_checkpoint(checkpoint_path: str | os.PathLike) -> Any:
    """The object a torch checkpoint file holds, on the CPU; a corrupt file fails naming the path."""
    path = os.fspath(checkpoint_path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001
        try:
            # Lightning checkpoints carry RNG states and hyper-parameters beside the tensors.
            return torch.load(path, map_location="cpu", weights_only=False)
        except Exception as error:  # noqa: BLE001
            raise ValueError(f"checkpoint {path!r} is not a readable torch file ({error}); it may be truncated") from error


def recorded_model_spec(checkpoint_path: str | os.PathLike) -> dict[str, Any] | None:
    """The ``create_model`` spec a train.py checkpoint records under ``hyper_parameters.net``, if any."""
    checkpoint = read_checkpoint(checkpoint_path)
    hyper_parameters = checkpoint.get("hyper_parameters") if isinstance(checkpoint, Mapping) else None
    spec = hyper_parameters.get("net") if isinstance(hyper_parameters, Mapping) else None
    return dict(spec) if isinstance(spec, Mapping) and spec.get("name") else None


def _existing(checkpoint_path: str | os.PathLike) -> str:
    path = os.fspath(checkpoint_path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist; check model.checkpoint_path")
    return path


def read_state_dict(checkpoint_path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The network weights in a state dict, timm checkpoint or Lightning checkpoint, wrapper prefixes removed."""
    path = _existing(checkpoint_path)
    return _state_dict_of(read_checkpoint(path), path)


def _state_dict_of(checkpoint: Any, path: str) -> dict[str, torch.Tensor]:
    """The network weights inside a loaded checkpoint object (``read_state_dict`` after the read)."""
    if isinstance(checkpoint, Mapping):
        for key in ("state_dict", "model", "state_dict_ema"):
            if isinstance(checkpoint.get(key), Mapping):
                checkpoint = checkpoint[key]
                break
    if not isinstance(checkpoint, Mapping) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise ValueError(f"checkpoint {path!r} holds no state dict of tensors")
    return _strip_prefixes(dict(checkpoint))


def _strip_prefixes(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    changed = True
    while changed:
        changed = False
        for prefix in _STATE_DICT_PREFIXES:
            if state_dict and all(key.startswith(prefix) for key in state_dict):
                state_dict = {key[len(prefix):]: value for key, value in state_dict.items()}
                changed = True
        if state_dict and not changed and any(key.startswith("net.") for key in state_dict):
            # A Lightning module with extra modules beside the network (a teacher, an adapter): keep the network.
            state_dict = {key[4:]: value for key, value in state_dict.items() if key.startswith("net.")}
            changed = True
    return state_dict


def _fold_pruning_masks(state_dict: dict[str, torch.Tensor], own_keys: set[str]) -> dict[str, torch.Tensor]:
    """Multiply each ``*.weight_mask`` the model does not hold into its weight and drop it."""
    from lightning_edge.prune.masks import MASK_NAME

    folded = dict(state_dict)
    for key in [key for key in state_dict if key.endswith(f".{MASK_NAME}") and key not in own_keys]:
        weight_key = key[: -len(MASK_NAME)] + "weight"
        if weight_key in folded:
            folded[weight_key] = folded[weight_key] * folded.pop(key).to(folded[weight_key].dtype)
    return folded


def load_weights(model: nn.Module, checkpoint_path: str | os.PathLike) -> nn.Module:
    """Load local weights into ``model`` strictly; a mismatch names the keys and shapes that differ.

    A checkpoint of a channel-pruned network records its widths (``pruned_architecture``); ``model`` is
    reshaped to them first, so pruned checkpoints load into a freshly built network. A checkpoint written while
    GradualMagnitudePruning ran carries masks beside the weights; they are applied, so the network loads sparse."""
    from lightning_edge.prune.surgery import ARCHITECTURE_KEY, apply_architecture  # prune builds on models

    path = _existing(checkpoint_path)
    checkpoint = read_checkpoint(path)  # read once: the widths and the weights both come from it
    if isinstance(checkpoint, Mapping) and checkpoint.get(ARCHITECTURE_KEY):
        apply_architecture(model, checkpoint[ARCHITECTURE_KEY])
    own = model.state_dict()
    state_dict = _fold_pruning_masks(_state_dict_of(checkpoint, path), set(own))
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    mismatched = sorted(k for k in set(own) & set(state_dict) if own[k].shape != state_dict[k].shape)
    if missing or unexpected or mismatched:
        details = []
        if missing:
            details.append(f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            details.append(f"unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
        if mismatched:
            shapes = [f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}" for k in mismatched[:3]]
            details.append(f"shape mismatch {shapes}")
        raise ValueError(
            f"checkpoint {os.fspath(checkpoint_path)!r} does not fit the model ({'; '.join(details)}). "
            "Check model.name, the number of classes and input channels of the data it was trained on"
        )
    model.load_state_dict(state_dict)
    return model
