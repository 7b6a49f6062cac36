"""lightning-edge's INT8 runtime: numpy plus compiled C++ kernels, no torch.

- ``compile(onnx_path, edge_path)``: a standard ONNX QDQ file (ours or another tool's) into a fused integer
  plan in a checked .edge file, float32 ops where the graph is not quantized (a plain FP32 file included)
  (``compiler``, ``edge_format``); needs the ``onnx`` package.
- ``load(edge_path, threads=None) -> Session``; ``Session.run(x)``: float32 NCHW in, float32 out (a list for
  several outputs, a dict by name with ``as_dict=True``), any batch (``session``); needs only numpy and the
  extension built by ``pip install``.
- ``reference``: INT8_SPEC.md in plain numpy, the oracle the kernels are tested against bit for bit.
"""
from typing import Any

from lightning_edge.runtime.edge_format import EdgeFormatError
from lightning_edge.runtime.native import available_kernels
from lightning_edge.runtime.session import Session, load

__all__ = ["CompileError", "EdgeFormatError", "Session", "available_kernels", "compile", "load"]


def __getattr__(name: str) -> Any:
    """``compile`` and ``CompileError`` are imported when first used: a device that only loads .edge files never
    imports the compiler and its numpy reference."""
    if name in ("compile", "CompileError"):
        from lightning_edge.runtime import compiler

        return getattr(compiler, name)
    raise AttributeError(f"module 'lightning_edge.runtime' has no attribute {name!r}")
