"""The numpy INT8 reference: INT8_SPEC arithmetic by hand, and whole QDQ files against ONNX Runtime."""
from __future__ import annotations

import numpy as np
import onnx
import torch

from conftest import calibrated_network
from lightning_edge.export import onnxruntime_session, to_onnx
from lightning_edge.models import create_model
from lightning_edge.runtime.benchmark import quantize_static_qdq
from lightning_edge.runtime.reference import ReferenceModel, quantize, requantize


def test_quantize_and_requantize_round_half_to_even():
    x = np.array([0.25, 0.75, 1.25, -0.25, 1000.0], dtype=np.float32)
    assert quantize(x, np.float32(0.5), 3, 0, 255).tolist() == [3, 5, 5, 3, 255]
    acc = np.array([[5, 15, 25, -5]], dtype=np.int64).reshape(1, 1, 4)  # acc * 0.1 = 0.5, 1.5, 2.5, -0.5 (in float32)
    multiplier = np.array([0.5], dtype=np.float32)
    assert requantize(acc, multiplier / np.float32(5.0), 10, 0, 255).ravel().tolist() == [10, 12, 12, 10]


def test_reference_follows_onnxruntime_layer_by_layer(tmp_path):
    """Against ONNX Runtime's plain float path (DequantizeLinear, float op, QuantizeLinear; no integer kernels,
    whose AVX2 u8 x s8 products may saturate): equal codes while the inputs are equal, then ties only."""
    import onnxruntime

    path = to_onnx(calibrated_network(), torch.zeros(1, 1, 28, 28), str(tmp_path / "model.onnx"))
    proto = onnx.load(path)
    names = [node.output[0] for node in proto.graph.node if node.op_type == "QuantizeLinear"]
    for name in names:
        proto.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.UINT8, None))
    x = np.random.default_rng(0).standard_normal((8, 1, 28, 28)).astype(np.float32)
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    theirs = onnxruntime.InferenceSession(proto.SerializeToString(), options).run(None, {"input": x})
    reference = ReferenceModel(path)
    ours = reference.run(x)[0]
    assert (ours.argmax(1) == theirs[0].argmax(1)).all()
    exact_layers = 0
    for name, codes in zip(names, theirs[1:]):
        difference = np.abs(reference.tensors[name].codes.astype(int) - codes.astype(int))
        assert difference.max() <= 1 and (difference == 0).mean() >= 0.999, name  # a tie rounds apart, rarely
        if difference.any():
            break  # from here on the inputs differ too, and a random network amplifies that
        exact_layers += 1
    assert exact_layers >= 5


def test_reference_runs_onnxruntime_quantize_static_files(tmp_path):
    model = create_model("cifar_resnet20", num_classes=10, in_chans=1).eval()
    float_path = to_onnx(model, torch.zeros(1, 1, 28, 28), str(tmp_path / "float.onnx"))
    rng = np.random.default_rng(0)
    quantized = quantize_static_qdq(float_path, str(tmp_path / "ort.onnx"),
                                    [rng.standard_normal((1, 1, 28, 28)).astype(np.float32) for _ in range(4)])
    x = rng.standard_normal((8, 1, 28, 28)).astype(np.float32)
    ours = ReferenceModel(quantized).run(x)[0]
    theirs = onnxruntime_session(quantized).run(None, {"input": x})[0]
    assert (ours.argmax(1) == theirs.argmax(1)).all()
    assert np.abs(ours - theirs).max() < 0.05 * np.abs(theirs).max()
