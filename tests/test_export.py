"""export.to_onnx: standard QDQ that ONNX Runtime runs as the fake-quantized model predicts; FP32 for float."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from conftest import FASHION_MNIST_DIR, calibrated_network, qat_resnet_on_fashion_mnist
from lightning_edge.export import evaluate_onnx, onnxruntime_session, to_onnx
from lightning_edge.models import create_model
from lightning_edge.quant import QuantConv2d, prepare_qat, quantized_layers


def test_float_model_exports_as_plain_fp32(tmp_path):
    model = create_model("cifar_wrn_16_2", num_classes=10, in_chans=1).eval()
    x = torch.randn(3, 1, 28, 28)
    path = to_onnx(model, x[:1], str(tmp_path / "float.onnx"))
    graph = onnx.load(path).graph
    assert not [node for node in graph.node if "Quantize" in node.op_type or node.op_type in ("Identity", "Constant")]
    logits = onnxruntime_session(path).run(None, {"input": x.numpy()})[0]  # batch 3 through a batch-1 trace
    with torch.no_grad():
        assert np.allclose(logits, model(x).numpy(), atol=1e-4)


def test_quantized_export_is_standard_qdq(tmp_path):
    model = calibrated_network()
    path = to_onnx(model, torch.randn(1, 1, 28, 28), str(tmp_path / "int8.onnx"))
    proto = onnx.load(path)
    assert proto.opset_import[0].version >= 13
    graph = proto.graph
    initializers = {item.name: numpy_helper.to_array(item) for item in graph.initializer}
    producers = {output: node for node in graph.node for output in node.output}
    assert not [node for node in graph.node if node.op_type in ("Cast", "Constant", "BatchNormalization")]
    convs = [node for node in graph.node if node.op_type in ("Conv", "Gemm")]
    assert len(convs) == 22
    layers = list(quantized_layers(model))
    for node, layer in zip(convs, layers):
        x_dq, w_dq, b_dq = (producers[name] for name in node.input)
        assert x_dq.op_type == w_dq.op_type == b_dq.op_type == "DequantizeLinear"
        codes, scale = initializers[w_dq.input[0]], initializers[w_dq.input[1]]
        assert codes.dtype == np.int8 and np.abs(codes.astype(int)).max() <= 127
        assert scale.shape == (codes.shape[0],) and next(a.i for a in w_dq.attribute if a.name == "axis") == 0
        assert not initializers[w_dq.input[2]].any()  # symmetric
        bias = initializers[b_dq.input[0]]
        assert bias.dtype == np.int32
        input_scale = initializers[x_dq.input[1]]
        assert np.array_equal(initializers[b_dq.input[1]], (input_scale * scale).astype(np.float32))
        integers = layer.integer_weight_and_bias()  # the file holds the model's own integers
        assert np.array_equal(codes, integers["weight"].numpy())
        assert np.array_equal(bias, integers["bias"].numpy().astype(np.int32))
    activations = [node for node in graph.node if node.op_type == "QuantizeLinear"]
    assert len(activations) == len(model.quant_plan.points)
    assert all(initializers[node.input[2]].dtype == np.uint8 for node in activations)


def test_lone_batchnorm_exports_as_depthwise_conv(tmp_path):
    model = calibrated_network("cifar_wrn_16_2")
    path = to_onnx(model, torch.randn(1, 1, 28, 28), str(tmp_path / "wrn.onnx"))
    groups = [next(a.i for a in node.attribute if a.name == "group") for node in onnx.load(path).graph.node if node.op_type == "Conv"]
    assert sorted(set(groups)) == [1, 32, 64, 128]  # the six lone pre-activation BatchNorms: depthwise 1x1
    x = torch.randn(8, 1, 28, 28)
    logits = onnxruntime_session(path).run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        expected = model(x).numpy()
    steps = np.abs(logits - expected) / model.activation_quantizers["fc"].scale.item()
    assert (steps <= 1.01).mean() >= 0.95 and steps.max() <= 3.01  # ties round apart, then propagate a little


def test_uncalibrated_model_is_refused(tmp_path):
    model = prepare_qat(create_model("cifar_resnet20", num_classes=10, in_chans=1))
    with pytest.raises(ValueError, match="no range yet.*calibrate"):
        to_onnx(model, torch.randn(1, 1, 28, 28), str(tmp_path / "x.onnx"))
    assert not list(tmp_path.iterdir())


@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="needs Debian's dataset-fashion-mnist")
def test_onnxruntime_agrees_with_the_qat_model_on_real_test_images(tmp_path):
    """QAT fine-tuning on Fashion-MNIST, then the export in ONNX Runtime against the fake-quant model."""
    network, data = qat_resnet_on_fashion_mnist()
    assert isinstance(network.conv1, QuantConv2d)
    path = to_onnx(network, torch.zeros(1, 1, 28, 28), str(tmp_path / "qat.onnx"))
    result = evaluate_onnx(path, data.test_dataloader(), reference=network, max_batches=8)  # 2,000 images
    assert result["images"] == 2000
    assert result["agreement"] >= 0.995
    assert result["acc"] > 0.6  # it learned something, so agreement is not between two constant guesses
    session = onnxruntime_session(path)
    images = next(iter(data.test_dataloader()))[0]
    logits = session.run(None, {"input": images.numpy()})[0]
    with torch.no_grad():
        expected = network(images).numpy()
    steps = np.abs(logits - expected) / network.activation_quantizers["fc"].scale.item()
    assert (steps <= 1.01).mean() >= 0.99  # within one output step on nearly all elements


def test_seven_bit_activations_stay_within_127_in_onnxruntime(tmp_path):
    model = calibrated_network(config={"activation_bits": 7})
    path = to_onnx(model, torch.randn(1, 1, 28, 28), str(tmp_path / "a7.onnx"))
    proto = onnx.load(path)
    users = {name: node for node in proto.graph.node for name in node.input}
    quantize_nodes = [node for node in proto.graph.node if node.op_type == "QuantizeLinear"]
    # 7-bit codes are written QuantizeLinear -> Clip(0, 127) on the uint8 codes -> DequantizeLinear
    clips = [users[node.output[0]] for node in quantize_nodes]
    assert {clip.op_type for clip in clips} == {"Clip"}
    for clip in clips:  # expose every activation's codes
        proto.graph.output.append(onnx.helper.make_tensor_value_info(clip.output[0], onnx.TensorProto.UINT8, None))
    import onnxruntime

    x = torch.randn(32, 1, 28, 28) * 1.5  # wider than the calibration data: ranges saturate
    outputs = onnxruntime.InferenceSession(proto.SerializeToString()).run(None, {"input": x.numpy()})
    assert all(int(codes.max()) <= 127 for codes in outputs[1:])
    with torch.no_grad():
        expected = model(x).numpy()
    steps = np.abs(outputs[0] - expected) / model.activation_quantizers["fc"].scale.item()
    assert (steps <= 1.01).mean() >= 0.95


def test_lsq_model_exports_its_learned_step_sizes(tmp_path):
    torch.manual_seed(0)
    model = prepare_qat(create_model("cifar_resnet20", num_classes=10, in_chans=1), {"observer": "lsq"}).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    for _ in range(3):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    model.eval()
    path = to_onnx(model, x[:1], str(tmp_path / "lsq.onnx"))
    graph = onnx.load(path).graph
    initializers = {item.name: numpy_helper.to_array(item) for item in graph.initializer}
    learned = model.activation_quantizers["fc"].scale.item()
    scales = [float(initializers[node.input[1]]) for node in graph.node if node.op_type == "QuantizeLinear"]
    assert learned in scales
    logits = onnxruntime_session(path).run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        steps = np.abs(logits - model(x).numpy()) / learned
    assert (steps <= 1.01).mean() >= 0.95
