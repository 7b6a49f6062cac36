"""lightning-edge: distillation, quantization, pruning and an INT8 runtime for PyTorch Lightning."""
__version__ = "0.1.0"
