"""Run an exported file (ONNX in ONNX Runtime, .edge in our runtime) over a data loader: accuracy, and
agreement with the torch model it came from."""
from __future__ import annotations

import functools
import os
import sys
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from lightning_edge.quant.calibrate import batch_input


def onnxruntime_session(path: str, threads: int | None = None, optimized: bool | None = None) -> Any:
    """A CPU ONNX Runtime session for ``path`` with ``threads`` intra-op threads (default: torch's).

    ``optimized=None`` (the default) gives ONNX Runtime's fused int8 kernels where they are exact, and its
    unfused session (the QDQ file run op by op, as written) on an x86 CPU without VNNI, where those kernels
    saturate and the result is no longer what the file means (``runtime.benchmark.onnxruntime_int8_is_exact``;
    a warning says so once). ``True`` or ``False`` forces either."""
    from lightning_edge.runtime.benchmark import onnxruntime_int8_is_exact
    from lightning_edge.runtime.benchmark import onnxruntime_session as session

    if optimized is None:
        optimized = onnxruntime_int8_is_exact()
        if not optimized:
            _warn_unfused_once()
    return session(path, threads=int(threads or torch.get_num_threads()), optimized=optimized)


@functools.lru_cache(maxsize=1)
def _warn_unfused_once() -> None:
    warnings.warn("this CPU has no VNNI, where ONNX Runtime's fused int8 kernels saturate (vpmaddubsw): running its "
                  "unfused session instead, the QDQ file op by op (pass optimized=True for the fused kernels)",
                  stacklevel=3)


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
    return evaluate_runner(lambda x: session.run(None, {input_name: x})[0], loader, reference, max_batches,
                           f"ONNX Runtime {os.path.basename(path)}")


def evaluate_edge(
    path: str, loader: Iterable[Any], reference: nn.Module | None = None, threads: int | None = None,
    max_batches: int | None = None,
) -> dict[str, Any]:
    """``evaluate_onnx`` for a .edge file run by lightning-edge's INT8 runtime (all cores by default)."""
    from lightning_edge.runtime import load

    session = load(path, threads=threads)
    result: dict[str, Any] = evaluate_runner(session.run, loader, reference, max_batches, f"runtime {os.path.basename(path)}")
    result.update(kernels=session.kernels, threads=session.threads)
    return result


@torch.no_grad()
def evaluate_runner(
    run: Callable[[np.ndarray], np.ndarray], loader: Iterable[Any], reference: nn.Module | None, max_batches: int | None,
    description: str,
) -> dict[str, float]:
    """Accuracy of ``run`` (float32 NCHW batch -> logits) on ``loader``; argmax agreement with ``reference``."""
    if reference is not None:
        reference = reference.eval()
        device = next((tensor.device for tensor in reference.parameters()), torch.device("cpu"))
    correct = agree = images = 0
    max_difference = 0.0
    batches = tqdm(loader, desc=description, leave=False, disable=not sys.stderr.isatty())
    for index, batch in enumerate(batches):
        if max_batches is not None and index >= max_batches:
            break
        inputs = batch_input(batch)
        targets = batch[1] if isinstance(batch, (list, tuple)) and len(batch) > 1 else None
        logits = run(np.ascontiguousarray(inputs.float().cpu().numpy()))
        predicted = logits.argmax(axis=1)
        if targets is not None:
            correct += int((predicted == targets.cpu().numpy()).sum())
        if reference is not None:
            expected = reference(inputs.to(device)).float().cpu().numpy()
            agree += int((predicted == expected.argmax(axis=1)).sum())
            max_difference = max(max_difference, float(np.abs(expected - logits).max()))
        images += len(logits)
    if images == 0:
        raise ValueError(f"{description}: the loader gave no batches")
    result = {"images": images, "acc": correct / images}
    if reference is not None:
        result.update(agreement=agree / images, max_abs_logit_difference=max_difference)
    return result
