"""Export a network to ONNX: a prepared (fake-quantized) one as standard QDQ, a float one as plain FP32.

The QDQ file is what ONNX Runtime's own quantizer writes, and what our runtime compiles:

- activations: ``QuantizeLinear -> DequantizeLinear`` pairs (uint8, per tensor) at every int8 point;
- weights: int8 initializers (BatchNorm already folded) through ``DequantizeLinear`` with per-channel
  scales (``axis=0``), symmetric, codes in [-127, 127];
- biases: int32 initializers with scale ``s_x * s_w[c]`` through ``DequantizeLinear``;
- a BatchNorm with nothing to fold into becomes a depthwise 1x1 ``Conv``.

Weights and biases are fixed from the prepared model's own integer codes (``attach_export_tensors``), so
the file computes what the fake-quantized model predicts, up to float rounding at ties. Scales and zero
points are initializers (the exporter's casts of them are folded), as runtimes expect.
"""
from __future__ import annotations

import copy
import io
import warnings

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from torch import nn

from lightning_edge.io import atomic_write_bytes
from lightning_edge.quant.prepare import inactive_quantizers, is_prepared, quantized_layers

DEFAULT_OPSET = 17
INPUT_NAME, OUTPUT_NAME = "input", "logits"
_WEIGHTED_OPS = ("Conv", "Gemm")


def to_onnx(
    model: nn.Module, example_input: torch.Tensor, path: str, opset: int = DEFAULT_OPSET, dynamic_batch: bool = True
) -> str:
    """Write ``model`` to ``path`` as ONNX (atomically) and return the path.

    Args:
        model: a network from ``prepare_qat`` / ``calibrate`` (exported as QDQ) or a float network (FP32).
        example_input: one batch in the network's input layout (NCHW), used to trace it.
        path: the .onnx file to write.
        opset: ONNX opset, 13 or later (per-channel DequantizeLinear needs 13).
        dynamic_batch: let the batch dimension vary (input ``input``, output ``logits``).
    """
    if opset < 13:
        raise ValueError(f"opset {opset} cannot express per-channel quantization; use 13 or later")
    exported = copy.deepcopy(model).cpu().eval()
    quantized = is_prepared(exported)
    if quantized:
        _check_calibrated(exported)
        for layer in list(quantized_layers(exported)):
            layer.attach_export_tensors()
    proto = _torch_export(exported, example_input.detach().cpu().float(), opset, dynamic_batch)
    _fold_constant_nodes(proto.graph)  # also un-shares the initializers the exporter deduplicated (Identity nodes)
    if quantized:
        _quantize_biases(proto.graph)
    onnx.checker.check_model(proto)
    return atomic_write_bytes(path, proto.SerializeToString())


def _check_calibrated(model: nn.Module) -> None:
    missing = inactive_quantizers(model)
    if missing:
        raise ValueError(
            f"{len(missing)} activation quantizers have no range yet (first: {missing[0]!r}); run "
            "lightning_edge.quant.calibrate(model, loader) or train with QAT before exporting"
        )


def _torch_export(model: nn.Module, example: torch.Tensor, opset: int, dynamic_batch: bool) -> onnx.ModelProto:
    buffer = io.BytesIO()
    axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice; it is the one that maps fake-quant
        torch.onnx.export(
            model, (example,), buffer, dynamo=False, opset_version=opset, input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME], dynamic_axes=axes, do_constant_folding=True,
        )
    return onnx.load_from_string(buffer.getvalue())


class _Constants:
    """The graph's constant tensors by name: initializers and Constant nodes' values."""

    def __init__(self, graph: onnx.GraphProto):
        self.graph = graph
        self.values = {item.name: numpy_helper.to_array(item) for item in graph.initializer}
        for node in graph.node:
            if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
                self.values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)

    def __contains__(self, name: str) -> bool:
        return name in self.values

    def __getitem__(self, name: str) -> np.ndarray:
        return self.values[name]

    def add(self, name: str, value: np.ndarray) -> None:
        self.values[name] = value
        self.graph.initializer.append(numpy_helper.from_array(value, name))


def _fold_constant_nodes(graph: onnx.GraphProto) -> None:
    """Turn Constant nodes, and Identity, Cast and QuantizeLinear nodes of constants, into initializers.

    This turns the exporter's ``Cast(int32 zero point)`` into uint8 initializers and ``QuantizeLinear(weight)``
    into int8 weight initializers, the form of ONNX Runtime's QDQ files.
    """
    constants = _Constants(graph)
    folded = []
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] in constants:
            constants.add(node.output[0], constants[node.output[0]])
            folded.append(node)
            continue
        inputs = [name for name in node.input if name]
        if node.op_type not in ("Identity", "Cast", "QuantizeLinear") or not all(name in constants for name in inputs):
            continue
        values = [constants[name] for name in inputs]
        if node.op_type == "Identity":
            result = values[0]
        elif node.op_type == "Cast":
            to = next(attribute.i for attribute in node.attribute if attribute.name == "to")
            result = values[0].astype(helper.tensor_dtype_to_np_dtype(to))
        else:
            axis = next((attribute.i for attribute in node.attribute if attribute.name == "axis"), 1)
            result = _quantize_linear(*values, axis=axis)
        constants.add(node.output[0], result)
        folded.append(node)
    for node in folded:
        graph.node.remove(node)
    _drop_unused_initializers(graph)


def _quantize_linear(x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, axis: int = 1) -> np.ndarray:
    """ONNX QuantizeLinear: saturate(round_half_even(x / scale) + zero_point), per tensor or along ``axis``."""
    if scale.ndim == 1 and x.ndim > 1:
        shape = [1] * x.ndim
        shape[axis] = -1
        scale, zero_point = scale.reshape(shape), zero_point.reshape(shape)
    info = np.iinfo(zero_point.dtype)
    codes = np.round(x.astype(np.float32) / scale.astype(np.float32)) + zero_point.astype(np.int64)
    return np.clip(codes, info.min, info.max).astype(zero_point.dtype)


def _quantize_biases(graph: onnx.GraphProto) -> None:
    """Give each Conv/Gemm that reads int8 input and weights an int32 bias behind a DequantizeLinear."""
    constants = _Constants(graph)
    producers = {output: node for node in graph.node for output in node.output}
    added = []
    for node in graph.node:
        if node.op_type not in _WEIGHTED_OPS or len(node.input) < 3 or node.input[2] not in constants:
            continue
        x_dq, w_dq = producers.get(node.input[0]), producers.get(node.input[1])
        if not (_is_dequantize(x_dq) and _is_dequantize(w_dq)):
            continue
        input_scale = constants[x_dq.input[1]].astype(np.float32)
        weight_scale = constants[w_dq.input[1]].astype(np.float32).reshape(-1)
        scale = (input_scale * weight_scale).astype(np.float32)
        bias = constants[node.input[2]].astype(np.float32)
        codes = np.clip(np.round(bias / scale), -(2**31), 2**31 - 1).astype(np.int32)
        stem = f"{node.name or node.output[0]}_bias".strip("/").replace("/", "_")
        constants.add(f"{stem}_quantized", codes)
        constants.add(f"{stem}_scale", scale)
        constants.add(f"{stem}_zero_point", np.zeros_like(codes))
        added.append(helper.make_node(
            "DequantizeLinear", [f"{stem}_quantized", f"{stem}_scale", f"{stem}_zero_point"], [f"{stem}_dequantized"],
            name=f"{stem}_DequantizeLinear", axis=0,
        ))
        node.input[2] = f"{stem}_dequantized"
    for node in reversed(added):
        graph.node.insert(0, node)
    _drop_unused_initializers(graph)


def _is_dequantize(node: onnx.NodeProto | None) -> bool:
    return node is not None and node.op_type == "DequantizeLinear"


def _drop_unused_initializers(graph: onnx.GraphProto) -> None:
    """Remove initializers and Constant nodes nothing reads any more."""
    used = {name for node in graph.node for name in node.input} | {output.name for output in graph.output}
    for initializer in [item for item in graph.initializer if item.name not in used]:
        graph.initializer.remove(initializer)
    for node in [item for item in graph.node if item.op_type == "Constant" and item.output[0] not in used]:
        graph.node.remove(node)
