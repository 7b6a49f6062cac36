"""Export trained networks: ``to_onnx`` writes standard ONNX QDQ for quantized networks, FP32 otherwise."""
from lightning_edge.export.checkpoint import network_from_checkpoint
from lightning_edge.export.evaluate import evaluate_onnx, onnxruntime_session
from lightning_edge.export.onnx import to_onnx

__all__ = ["evaluate_onnx", "network_from_checkpoint", "onnxruntime_session", "to_onnx"]
