"""Why ONNX Runtime's default session disagrees with the QDQ file it runs on a quantized Softmax.

ONNX Runtime fuses DequantizeLinear -> Softmax -> QuantizeLinear into its contrib op QLinearSoftmax
(``onnxruntime/contrib_ops/cpu/quantization/qlinear_softmax.cc``), which requantizes with
``floor(1 / y_scale)`` instead of ``1 / y_scale``. For the output scale its own quantizer gives a Softmax,
float32(1/255) = 0.0039215689, ``1 / y_scale`` is 254.99998 in float32 and the floor is 254: every output
code is about 254/255 of what the file says, and a one-element Softmax (exactly 1.0) comes out as code 254.

This script builds that smallest case, a Softmax over a last axis of length D between QDQ pairs, and runs it in
ONNX Runtime fused (as users run it), ONNX Runtime unfused (the file as written), the spec's numpy
reference and our runtime. With ``--scale 256`` the output scale is 1/256, whose inverse is exact, and the
fused session agrees again (up to its table's own rounding).

    .venv/bin/python scripts/ort_softmax_defect.py
    .venv/bin/python scripts/ort_softmax_defect.py --length 4 --scale 256

With ``--model F.onnx`` it does the same to a whole network instead: every Softmax's output scale becomes
float32(1/SCALE), and it prints the argmax agreement of our runtime with both ONNX Runtime sessions on the
64 random inputs of ``bench_coverage.py``, before and after (on a random-weight mobilevit_xxs the two top
logits are often within a rounding, so one code anywhere can move the argmax):

    .venv/bin/python scripts/ort_softmax_defect.py --model outputs/bench/coverage64/mobilevit_xxs/ort.onnx --scale 256
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np


def softmax_file(path: Path, length: int, output_scale: float) -> None:
    """x (float32, 1 x 4 x 1 x length) -> Q/DQ (input grid) -> Softmax(axis=-1) -> Q/DQ (output grid) -> y."""
    import onnx
    from onnx import TensorProto, helper

    def constant(name: str, value, dtype) -> onnx.TensorProto:
        return helper.make_tensor(name, dtype, [], [value])

    nodes = [
        helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "sx", "zx"], ["xd"]),
        helper.make_node("Softmax", ["xd"], ["p"], axis=-1),
        helper.make_node("QuantizeLinear", ["p", "sy", "zy"], ["pq"]),
        helper.make_node("DequantizeLinear", ["pq", "sy", "zy"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "softmax_qdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 1, length])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 1, length])],
        initializer=[constant("sx", 0.05, TensorProto.FLOAT), constant("zx", 128, TensorProto.UINT8),
                     constant("sy", output_scale, TensorProto.FLOAT), constant("zy", 0, TensorProto.UINT8)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    onnx.save(model, path)


def rescale_softmax_outputs(path: str, output_scale: float, out: Path) -> int:
    """Write ``path`` with every Softmax's output QuantizeLinear scale set to ``output_scale``; returns how many."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(path)
    initializers = {tensor.name: tensor for tensor in model.graph.initializer}
    scales = {consumer.input[1] for node in model.graph.node if node.op_type == "Softmax"
              for consumer in model.graph.node if node.output[0] in consumer.input
              and consumer.op_type == "QuantizeLinear"}
    for name in scales:
        initializers[name].CopyFrom(numpy_helper.from_array(np.array(output_scale, np.float32), name))
    onnx.save(model, out)
    return len(scales)


def network_agreement(path: str, output_scale: float) -> None:
    """Our runtime's argmax agreement with ONNX Runtime fused and unfused, on the file and on its rescaled copy."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_coverage import reference_agreement

    x = np.random.default_rng(2).standard_normal((64, 3) + _spatial(path)).astype(np.float32)
    with tempfile.TemporaryDirectory() as folder:
        rescaled = Path(folder) / "rescaled.onnx"
        count = rescale_softmax_outputs(path, output_scale, rescaled)
        for name, file in ((path, path), (f"the same, {count} Softmax output scales = {output_scale!r}", rescaled)):
            record, _ = reference_agreement(str(file), x, threads=2)
            print(f"{name}: ours vs ONNX Runtime fused {record.get('argmax_agreement', float('nan')):.1%}, "
                  f"vs unfused {record.get('unfused_argmax_agreement', float('nan')):.1%}; "
                  f"fused vs unfused {record['ort_self_agreement']:.1%}")


def _spatial(path: str) -> tuple[int, int]:
    import onnx

    dims = onnx.load(path).graph.input[0].type.tensor_type.shape.dim
    return int(dims[2].dim_value), int(dims[3].dim_value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--length", type=int, default=1, help="the Softmax axis (attention rows: tokens)")
    parser.add_argument("--scale", type=float, default=255.0, help="output scale is float32(1/SCALE)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", help="a QDQ network to rescale instead (see above)")
    args = parser.parse_args()
    output_scale = float(np.float32(1.0 / args.scale))
    if args.model:
        network_agreement(args.model, output_scale)
        return

    from lightning_edge.runtime import compile, load
    from lightning_edge.runtime.benchmark import onnxruntime_session
    from lightning_edge.runtime.reference import ReferenceModel

    print(f"output scale {output_scale!r}; 1/scale in float32 = {np.float32(1.0) / np.float32(output_scale)!r}; "
          f"ONNX Runtime's QLinearSoftmax multiplies by floor(1/scale) = "
          f"{int(np.floor(np.float32(1.0) / np.float32(output_scale)))}")
    x = np.random.default_rng(args.seed).standard_normal((1, 4, 1, args.length)).astype(np.float32)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "softmax.onnx"
        softmax_file(path, args.length, output_scale)
        compile(str(path), str(Path(folder) / "softmax.edge"))
        codes = {
            "ONNX Runtime fused": onnxruntime_session(str(path), 1).run(None, {"x": x})[0],
            "ONNX Runtime unfused": onnxruntime_session(str(path), 1, optimized=False).run(None, {"x": x})[0],
            "reference.py": ReferenceModel(str(path)).run(x)[0],
            "our runtime": load(str(Path(folder) / "softmax.edge"), threads=1).run(x),
        }
    for name, y in codes.items():
        y = np.rint(np.asarray(y).reshape(4, args.length) / output_scale).astype(int)
        print(f"{name:>22}: output codes {y.tolist()}")


if __name__ == "__main__":
    main()
