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


def magnitude_masks(weights: dict[str, torch.Tensor], sparsity: float, scope: str = "layer",
                    block: Sequence[int] | None = None) -> dict[str, torch.Tensor]:
    """Masks (float32, 1 keeps and 0 prunes) removing the ``sparsity`` fraction of smallest-magnitude weights,
    in each layer (``scope="layer"``) or across all of them (``"global"``). Exactly round(sparsity * count)
    weights go; ties go in index order (stable), so equal weights give equal masks on every rank.

    ``block=(out, in)`` prunes whole blocks instead: ``out`` output channels by ``in`` input channels (per
    group) at one kernel position, scored by their mean magnitude, edge blocks cut short. The runtime's
    kernels skip a block of zeros along the reduction axis, so ``(16, 4)`` (16 output channels, 4 input
    channels) is the pattern its VNNI quads and AVX2 pairs turn into speed. Then as many whole blocks go as
    bring the pruned count nearest sparsity * count, always leaving one block (a
    small layer may end well below the target: its blocks are coarse)."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), not {sparsity}")
    if scope not in ("layer", "global"):
        raise ValueError(f"scope must be 'layer' or 'global', not {scope!r}")
    if block is not None:
        return _block_masks(weights, sparsity, scope, check_block(block))
    if scope == "layer":
        return {name: _smallest_out(weight.detach().abs().flatten(), sparsity).view_as(weight) for name, weight in weights.items()}
    magnitudes = torch.cat([weight.detach().abs().flatten().float() for weight in weights.values()])
    flat = _smallest_out(magnitudes, sparsity)
    masks, offset = {}, 0
    for name, weight in weights.items():
        masks[name] = flat[offset:offset + weight.numel()].view_as(weight)
        offset += weight.numel()
    return masks


def check_block(block: Sequence[int]) -> tuple[int, int]:
    """``block`` as (output channels, input channels), both positive integers, or a ValueError naming it."""
    values = tuple(block) if isinstance(block, Sequence) and not isinstance(block, str) else (block,)
    if len(values) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values):
        raise ValueError(f"block must be two positive integers (output channels, input channels), e.g. [16, 4]; "
                         f"not {block!r}")
    return values


def _smallest_out(magnitudes: torch.Tensor, sparsity: float) -> torch.Tensor:
    count = int(round(sparsity * magnitudes.numel()))
    mask = torch.ones(magnitudes.numel(), dtype=torch.float32, device=magnitudes.device)
    if count:
        order = torch.sort(magnitudes.float(), stable=True).indices
        mask[order[:count]] = 0.0
    return mask


def _block_scores(weight: torch.Tensor, block: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean magnitude, weights held) of each (out, in) block of ``weight`` at each kernel position, flat in
    (output block, input block, position) order."""
    out_block, in_block = block
    magnitudes = weight.detach().abs().float().reshape(weight.shape[0], weight.shape[1] if weight.dim() > 1 else 1, -1)
    out_c, in_c, positions = magnitudes.shape
    padded_out, padded_in = -(-out_c // out_block) * out_block, -(-in_c // in_block) * in_block
    padding = (0, 0, 0, padded_in - in_c, 0, padded_out - out_c)
    totals, held = (torch.nn.functional.pad(values, padding).reshape(
        padded_out // out_block, out_block, padded_in // in_block, in_block, positions).sum((1, 3)).flatten()
        for values in (magnitudes, torch.ones_like(magnitudes)))
    return totals / held, held


def _expand_blocks(keep: torch.Tensor, weight: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    """A flat per-block keep vector (``_block_scores``' order) as a mask of ``weight``'s shape."""
    out_c, in_c = weight.shape[0], weight.shape[1] if weight.dim() > 1 else 1
    grid = keep.reshape(-(-out_c // block[0]), -(-in_c // block[1]), -1)
    mask = grid.repeat_interleave(block[0], 0).repeat_interleave(block[1], 1)[:out_c, :in_c]
    return mask.reshape(weight.shape).contiguous()


def _block_masks(weights: dict[str, torch.Tensor], sparsity: float, scope: str,
                 block: tuple[int, int]) -> dict[str, torch.Tensor]:
    scored = {name: _block_scores(weight, block) for name, weight in weights.items()}
    groups = [[name] for name in weights] if scope == "layer" else [list(weights)]
    masks = {}
    for names in groups:
        scores = torch.cat([scored[name][0] for name in names])
        held = torch.cat([scored[name][1] for name in names])
        target = sparsity * float(held.sum())
        order = torch.sort(scores, stable=True).indices
        pruned = torch.cumsum(held[order], 0)
        count = int(torch.searchsorted(pruned, torch.tensor(target), right=True))  # blocks whose total <= target
        if count < len(order) and abs(float(pruned[count]) - target) < abs(target - (float(pruned[count - 1]) if count else 0.0)):
            count += 1  # one more block lands nearer the target
        count = min(count, len(order) - 1)  # a layer of one or two blocks keeps one: never a layer of zeros
        keep = torch.ones(len(order), dtype=torch.float32, device=scores.device)
        keep[order[:count]] = 0.0
        offset = 0
        for name in names:
            blocks = scored[name][0].numel()
            masks[name] = _expand_blocks(keep[offset:offset + blocks], weights[name], block).to(weights[name].device)
            offset += blocks
    return masks


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
