"""A quantized network to model.onnx (QDQ) and model.edge (the INT8 runtime's plan), both evaluated.

One function for train.py's export step and the ExportInt8 callback, so the two write the same files
and report the same numbers.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from lightning_edge.export.evaluate import evaluate_edge, evaluate_onnx
from lightning_edge.export.onnx import to_onnx

log = logging.getLogger(__name__)


def test_batch_limit(trainer: Any) -> int | None:
    """How many test batches an export is evaluated on: what the Trainer's own test would run (all: None)."""
    limit = trainer.limit_test_batches
    return 1 if trainer.fast_dev_run else (limit if isinstance(limit, int) else None)


def export_int8(network: nn.Module, example: torch.Tensor, directory: str, name: str = "model", opset: int = 17,
                loader: Iterable[Any] | None = None, max_batches: int | None = None, edge: bool = True) -> dict[str, Any]:
    """Write DIRECTORY/NAME.onnx and (with ``edge``) DIRECTORY/NAME.edge; with ``loader``, evaluate both.

    Returns {"onnx", "bytes", "format", "onnxruntime"?, "edge"?: {"path", "bytes", "kernels", "runtime"?}}:
    accuracies and argmax agreement with ``network`` on the loader's batches.
    """
    from lightning_edge.quant import is_prepared

    os.makedirs(directory, exist_ok=True)
    path = to_onnx(network, example, os.path.join(directory, f"{name}.onnx"), opset=opset)
    result: dict[str, Any] = {"onnx": path, "bytes": os.path.getsize(path), "format": "qdq" if is_prepared(network) else "fp32"}
    log.info("exported %s (%d bytes)", path, result["bytes"])
    if loader is not None:
        result["onnxruntime"] = evaluate_onnx(path, loader, reference=network, max_batches=max_batches)
        log.info("ONNX Runtime on the test set: %s", result["onnxruntime"])
    if edge and result["format"] == "qdq":
        from lightning_edge.runtime import compile

        edge_path = os.path.join(directory, f"{name}.edge")
        plan = compile(path, edge_path, tune_batch=int(example.shape[0]) if example.ndim == 4 else 1)
        result["edge"] = {"path": edge_path, "bytes": os.path.getsize(edge_path), "kernels": plan.selection["kernels"]}
        if loader is not None:
            result["edge"]["runtime"] = evaluate_edge(edge_path, loader, reference=network, max_batches=max_batches)
            log.info("INT8 runtime on the test set: %s", result["edge"]["runtime"])
    return result
