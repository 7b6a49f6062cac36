"""Quantization in pure torch: fake-quant, observers, BatchNorm folding, QAT preparation, PTQ calibration.

The arithmetic is INT8_SPEC's (``qparams``): per-channel symmetric int8 weights, per-tensor asymmetric
uint8 activations, int32 biases, half-to-even rounding; so a prepared model predicts what the exported
ONNX QDQ file computes in ONNX Runtime and in our runtime.
"""
from lightning_edge.quant.calibrate import batch_input, calibrate
from lightning_edge.quant.graph import QuantPlan, UnsupportedModelError, build_plan
from lightning_edge.quant.modules import QuantBatchNorm2d, QuantConv2d, QuantLinear
from lightning_edge.quant.prepare import (
    QuantConfig,
    activation_quantizers,
    freeze_batchnorm,
    is_prepared,
    prepare_qat,
    quantized_layers,
    set_fake_quant,
    set_observers,
    synchronize_observers,
)
from lightning_edge.quant.quantizers import ActivationQuantizer, SharedQuantizer

__all__ = [
    "ActivationQuantizer", "QuantBatchNorm2d", "QuantConfig", "QuantConv2d", "QuantLinear", "QuantPlan",
    "SharedQuantizer", "UnsupportedModelError", "activation_quantizers", "batch_input", "build_plan", "calibrate",
    "freeze_batchnorm", "is_prepared", "prepare_qat", "quantized_layers", "set_fake_quant", "set_observers",
    "synchronize_observers",
]
