"""Post-training quantization: ranges from a few batches of data, no training."""
from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from lightning_edge.quant.prepare import QuantConfig, activation_quantizers, is_prepared, prepare_qat, set_observers

log = logging.getLogger(__name__)


def batch_input(batch: Any) -> torch.Tensor:
    """The input tensor of a batch: the batch itself, the first element of a tuple/list, or ``batch["image"]``."""
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0]
    if isinstance(batch, Mapping):
        for key in ("image", "input", "x"):
            if isinstance(batch.get(key), torch.Tensor):
                return batch[key]
    raise TypeError(
        f"cannot find the input tensor in a batch of type {type(batch).__name__}; yield tensors, "
        "(input, target) pairs or dicts with an 'image' entry"
    )


@torch.no_grad()
def calibrate(
    model: nn.Module,
    loader: Iterable[Any],
    num_batches: int = 32,
    config: QuantConfig | Mapping[str, Any] | None = None,
) -> nn.Module:
    """Calibrate activation ranges on ``num_batches`` batches of ``loader`` and freeze them.

    ``model`` is a float network (it is prepared on a copy first, with ``config``) or one from
    ``prepare_qat``, calibrated in place. The network runs in eval mode, so BatchNorm uses its running
    statistics exactly as deployed; each range is the mean of the batches' minima and maxima.
    Returns the calibrated, fake-quantized model, in eval mode.
    """
    if num_batches < 1:
        raise ValueError(f"num_batches must be >= 1, got {num_batches}")
    if not is_prepared(model):
        model = prepare_qat(model, config)
    elif config is not None:
        raise ValueError("model is already prepared; its quantization config cannot change in calibrate")
    device = next((tensor.device for tensor in model.parameters()), torch.device("cpu"))
    quantizers = list(activation_quantizers(model))
    model.eval()
    set_observers(model, True)
    for quantizer in quantizers:
        quantizer.calibrating = True
    seen = 0
    try:
        for batch in loader:
            if seen >= num_batches:
                break
            model(batch_input(batch).to(device))
            seen += 1
    finally:
        for quantizer in quantizers:
            quantizer.calibrating = False
    if seen == 0:
        raise ValueError("calibrate got no batches from the loader")
    if seen < num_batches:
        log.warning("calibrate asked for %d batches, the loader gave %d", num_batches, seen)
    set_observers(model, False)
    return model
