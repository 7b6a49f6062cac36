"""Export trained networks: ``to_onnx`` writes standard ONNX QDQ for quantized networks, FP32 otherwise;
``export_int8`` adds the INT8 runtime's .edge file and evaluates both on a test loader."""
from lightning_edge.export.checkpoint import network_from_checkpoint
from lightning_edge.export.evaluate import evaluate_edge, evaluate_onnx, onnxruntime_session
from lightning_edge.export.int8 import export_int8
from lightning_edge.export.onnx import to_onnx

__all__ = ["evaluate_edge", "evaluate_onnx", "export_int8", "network_from_checkpoint", "onnxruntime_session", "to_onnx"]
