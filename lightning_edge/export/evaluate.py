"""Run an exported ONNX file in ONNX Runtime over a data loader: accuracy, and agreement with a torch model."""
from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from lightning_edge.quant.calibrate import batch_input


def onnxruntime_session(path: str, threads: int | None = None) -> Any:
    """A CPU ONNX Runtime session for ``path`` with ``threads`` intra-op threads (default: torch's)."""
    from lightning_edge.runtime.benchmark import onnxruntime_session as session

    return session(path, threads=int(threads or torch.get_num_threads()))


@torch.no_grad()
def evaluate_onnx(
    path: str, loader: Iterable[Any], reference: nn.Module | None = None, threads: int | None = None,
    max_batches: int | None = None,
) -> dict[str, float]:
    """Top-1 accuracy of ``path`` in ONNX Runtime on (input, target) batches of ``loader``.

    With ``reference`` (the torch model the file was exported from) also the share of images whose
    argmax agrees and the largest absolute logit difference.
    """
    session = onnxruntime_session(path, threads)
    input_name = session.get_inputs()[0].name
    if reference is not None:
        reference = reference.eval()
        device = next((tensor.device for tensor in reference.parameters()), torch.device("cpu"))
    correct = agree = images = 0
    max_difference = 0.0
    batches = tqdm(loader, desc=f"ONNX Runtime {path.rsplit('/', 1)[-1]}", leave=False, disable=not sys.stderr.isatty())
    for index, batch in enumerate(batches):
        if max_batches is not None and index >= max_batches:
            break
        inputs = batch_input(batch)
        targets = batch[1] if isinstance(batch, (list, tuple)) and len(batch) > 1 else None
        logits = session.run(None, {input_name: inputs.float().cpu().numpy()})[0]
        predicted = logits.argmax(axis=1)
        if targets is not None:
            correct += int((predicted == targets.cpu().numpy()).sum())
        if reference is not None:
            expected = reference(inputs.to(device)).float().cpu().numpy()
            agree += int((predicted == expected.argmax(axis=1)).sum())
            max_difference = max(max_difference, float(np.abs(expected - logits).max()))
        images += len(logits)
    if images == 0:
        raise ValueError("evaluate_onnx got no batches")
    result = {"images": images, "acc": correct / images}
    if reference is not None:
        result.update(agreement=agree / images, max_abs_logit_difference=max_difference)
    return result
