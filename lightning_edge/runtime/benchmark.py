"""Timing helpers shared by ``lightning-edge bench`` and scripts/bench_runtime.py (no torch).

On a shared 2-core machine only ratios measured in one process mean much, so candidates run alternating
in blocks: each round runs every candidate ``calls`` times in a row and keeps all but the first
``discard`` calls of each block. Thread pools (ours, ONNX Runtime's) keep spinning after a call, so an idle
gap comes before each block and the discarded calls absorb what is left. The gap is 0.1 s: after 0.02 s ONNX
Runtime 1.32's workers still held the cores (MobileNetV2 at 224 in BF16 ran 1.65 ms after our own engine's
block and 2.2 ms after ONNX Runtime's, and our pool's automatic policy saw contention in 93% of its calls);
after 0.1 s neither happened.
"""
from __future__ import annotations

import platform
import time
from typing import Callable

import numpy as np


def machine() -> dict[str, object]:
    """CPU model, usable cores and the runtime's kernel paths: what a benchmark table states."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.lower().startswith(("model name", "cpu model")):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    from lightning_edge.runtime.native import available_kernels, cpu_flags, default_threads

    return {"cpu": model, "cores": default_threads(), "arch": platform.machine(), "kernels": available_kernels(),
            "flags": list(cpu_flags())}


def onnxruntime_session(path: str | bytes, threads: int, optimized: bool = True) -> object:
    """The peer: ONNX Runtime's CPU execution provider on ``path`` (or a serialized model) with ``threads`` intra-op
    threads.
    ``optimized=False`` turns its graph optimizations off: a QDQ file then runs as written (DequantizeLinear, the
    float op, QuantizeLinear), the spec's semantics, instead of ONNX Runtime's fused integer kernels."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    if not optimized:
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    return onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def onnxruntime_int8_is_exact() -> bool:
    """Whether ONNX Runtime's fused int8 kernels compute exact integer sums on this CPU.

    On x86-64 without VNNI (AVX-512 VNNI or AVX-VNNI) its u8 x s8 GEMMs use vpmaddubsw, whose int16 pair sums
    saturate on full-range activations and weights (OpenVINO documents the same "saturation issue" for its
    own kernels): the default session then parts from the file's own semantics, and from its own unfused run,
    on a few percent of decisions. Comparisons with ONNX Runtime use its unfused session there instead
    (``onnxruntime_session(..., optimized=False)``)."""
    from lightning_edge.runtime.native import cpu_flags

    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return True
    return bool({"avx512_vnni", "avx_vnni"} & set(cpu_flags()))


def openvino_session(path: str, threads: int) -> tuple[Callable[[np.ndarray], object], dict[str, int]]:
    """The other peer: OpenVINO's CPU plugin on the same file, tuned for latency on ``threads`` threads (one
    stream). Returns ``infer(x)`` and how many of its runtime model's convolutions and fully connected layers
    run in each precision (``{"u8": 52, ...}``: a QDQ file must run as integers there, or the comparison
    is with its float path). Raises ImportError when ``openvino`` is not installed (the ``dev`` extra)."""
    import openvino

    core = openvino.Core()
    compiled = core.compile_model(core.read_model(path), "CPU", {
        "INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY"})
    request = compiled.create_infer_request()
    precisions: dict[str, int] = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        if "layerType" in info and info["layerType"].astype(str) in ("Convolution", "FullyConnected"):
            precision = info["runtimePrecision"].astype(str) if "runtimePrecision" in info else "unknown"
            precisions[precision] = precisions.get(precision, 0) + 1
    return (lambda x: request.infer({0: x})), precisions


def quantize_static_qdq(float_path: str, output_path: str, batches: list[np.ndarray | dict[str, np.ndarray]],
                        per_channel: bool = True, activations: str = "QUInt8") -> str:
    """ONNX Runtime's own quantizer on an FP32 file: static QDQ with int8 weights, calibrated on ``batches``
    (float32 NCHW arrays for the graph's input, or dicts of them by input name for a graph with several): the other
    tool's files the runtime must accept."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    input_name = onnx.load(float_path).graph.input[0].name

    class Batches(CalibrationDataReader):
        def __init__(self):
            self.items = iter([batch if isinstance(batch, dict) else {input_name: batch} for batch in batches])

        def get_next(self):
            return next(self.items, None)

    quantize_static(float_path, output_path, Batches(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                    activation_type=getattr(QuantType, activations), weight_type=QuantType.QInt8)
    return output_path


def alternating(candidates: dict[str, Callable[[], object]], rounds: int = 8, calls: int = 10,
                discard: int = 3, gap: float = 0.1) -> dict[str, list[float]]:
    """Seconds per call of each candidate, alternating in blocks of ``calls`` calls (the first ``discard`` of
    each block untimed) with ``gap`` idle seconds before each block, so no engine inherits another's heat or
    queue (see the module docstring)."""
    if calls <= discard:
        raise ValueError(f"calls ({calls}) must exceed discard ({discard})")
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, call in candidates.items():
            time.sleep(gap)
            for index in range(calls):
                start = time.perf_counter()
                call()
                elapsed = time.perf_counter() - start
                if index >= discard:
                    times[name].append(elapsed)
    return times


def median_ms(times: list[float]) -> float:
    return float(np.median(times)) * 1e3


def ratio(times: dict[str, list[float]], slower: str, faster: str) -> float:
    """Median of ``slower`` over median of ``faster``: above 1 when ``faster`` is faster."""
    return float(np.median(times[slower]) / np.median(times[faster]))
