"""Magnitude masks kept as persistent buffers, applied to weights and gradients.

A pruned weight stays exactly zero: the mask multiplies the gradient (a hook), and ``apply_masks``
multiplies the weight again after each optimizer step (momentum and weight decay would otherwise move it).
The masks are buffers named ``weight_mask`` on their modules, so checkpoints carry them and a resumed run
continues with exactly the same masks.
"""
from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence

import torch
from torch import nn

MASK_NAME = "weight_mask"
_HOOK = "_lightning_edge_mask_hook"


def prunable_layers(model: nn.Module, types: Sequence[type] = (nn.Conv2d, nn.Linear), include: Iterable[str] | None = None,
                    exclude: Iterable[str] | None = None, keep_first_and_last: bool = True) -> list[tuple[str, nn.Module]]:
    """(path, module) of each layer whose weight is pruned, in module order.

    Layers of ``types``; with ``include`` only paths matching one of those glob patterns; never paths matching
    ``exclude``. ``keep_first_and_last`` leaves the first conv and the classifier (the last Linear) dense: they
    are small and prune badly (Zhu and Gupta; Han et al.)."""
    layers = [(path, module) for path, module in model.named_modules()
              if isinstance(module, tuple(types)) and isinstance(getattr(module, "weight", None), torch.Tensor)]
    if keep_first_and_last:
        first_conv = next((path for path, module in layers if isinstance(module, nn.Conv2d)), None)
        classifier = next((path for path, module in reversed(layers) if isinstance(module, nn.Linear)), None)
        layers = [(path, module) for path, module in layers if path not in (first_conv, classifier)]
    if include is not None:
        patterns = list(include)
        layers = [(path, module) for path, module in layers if any(fnmatch.fnmatchcase(path, p) for p in patterns)]
    if exclude is not None:
        patterns = list(exclude)
        layers = [(path, module) for path, module in layers if not any(fnmatch.fnmatchcase(path, p) for p in patterns)]
    if not layers:
        raise ValueError("no layer to prune: check the types, include and exclude patterns "
                         f"(model layers: {[path for path, _ in model.named_modules() if path][:10]}...)")
    return layers


def magnitude_masks(weights: dict[str, torch.Tensor], sparsity: float, scope: str = "layer") -> dict[str, torch.Tensor]:
    """Masks (float32, 1 keeps and 0 prunes) removing the ``sparsity`` fraction of smallest-magnitude weights,
    in each layer (``scope="layer"``) or across all of them (``"global"``). Exactly round(sparsity * count)
    weights go; ties go in index order (stable), so equal weights give equal masks on every rank."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), not {sparsity}")
    if scope not in ("layer", "global"):
        raise ValueError(f"scope must be 'layer' or 'global', not {scope!r}")
    if scope == "layer":
        return {name: _smallest_out(weight.detach().abs().flatten(), sparsity).view_as(weight) for name, weight in weights.items()}
    magnitudes = torch.cat([weight.detach().abs().flatten().float() for weight in weights.values()])
    flat = _smallest_out(magnitudes, sparsity)
    masks, offset = {}, 0
    for name, weight in weights.items():
        masks[name] = flat[offset:offset + weight.numel()].view_as(weight)
        offset += weight.numel()
    return masks


def _smallest_out(magnitudes: torch.Tensor, sparsity: float) -> torch.Tensor:
    count = int(round(sparsity * magnitudes.numel()))
    mask = torch.ones(magnitudes.numel(), dtype=torch.float32, device=magnitudes.device)
    if count:
        order = torch.sort(magnitudes.float(), stable=True).indices
        mask[order[:count]] = 0.0
    return mask


def attach_masks(layers: Iterable[tuple[str, nn.Module]]) -> None:
    """Give each layer a persistent ``weight_mask`` buffer (all ones) and a gradient hook that applies it."""
    for _, module in layers:
        if not hasattr(module, MASK_NAME):
            module.register_buffer(MASK_NAME, torch.ones_like(module.weight, dtype=torch.float32), persistent=True)
        if getattr(module, _HOOK, None) is None:
            hook = module.weight.register_hook(lambda grad, module=module: grad * getattr(module, MASK_NAME).to(grad.dtype))
            setattr(module, _HOOK, hook)


@torch.no_grad()
def apply_masks(layers: Iterable[tuple[str, nn.Module]]) -> None:
    """Zero the pruned weights (after an optimizer step, or after new masks)."""
    for _, module in layers:
        module.weight.mul_(getattr(module, MASK_NAME).to(module.weight.dtype))


@torch.no_grad()
def make_permanent(layers: Iterable[tuple[str, nn.Module]]) -> None:
    """Apply the masks once more, then drop them and their hooks: the zeros are now plain weights."""
    for _, module in layers:
        module.weight.mul_(getattr(module, MASK_NAME).to(module.weight.dtype))
        hook = getattr(module, _HOOK, None)
        if hook is not None:
            hook.remove()
            setattr(module, _HOOK, None)
        delattr(module, MASK_NAME)


def sparsity_report(layers: Iterable[tuple[str, nn.Module]]) -> dict[str, float]:
    """Fraction of exactly-zero weights per layer and overall (key ``"total"``)."""
    report, zeros, total = {}, 0, 0
    for path, module in layers:
        weight = module.weight.detach()
        layer_zeros = int((weight == 0).sum())
        report[path] = layer_zeros / weight.numel()
        zeros, total = zeros + layer_zeros, total + weight.numel()
    report["total"] = zeros / max(total, 1)
    return report
