"""lightning-edge's INT8 runtime: numpy plus compiled kernels, no torch.

So far: ``reference``, INT8_SPEC.md in plain numpy, evaluating any standard ONNX QDQ file (the oracle the
compiled kernels will be tested against), and ``edge_format``, the checked .edge container. The compiler,
the kernels and ``load``/``Session`` follow (issue 6).
"""
