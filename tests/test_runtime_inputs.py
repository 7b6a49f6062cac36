"""Graphs with several inputs: each graph input is one input op at the plan's start (``quantize`` where a
QuantizeLinear reads it, ``float_input`` where a float op does), and ``Session.run`` takes a list in graph input order
or a dict by input name; in QDQ files (ONNX Runtime's quantize_static) and FP32 ones, on every kernel path."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from lightning_edge.export import onnxruntime_session
from lightning_edge.runtime import available_kernels, compile, load
from lightning_edge.runtime.benchmark import quantize_static_qdq
from lightning_edge.runtime.reference import ReferenceModel

KERNELS = available_kernels()
INPUTS = ["image", "mask"]


class Masked(nn.Module):
    """An image and a one-channel mask of another size, each through its own conv, joined by a broadcast product."""

    def __init__(self):
        super().__init__()
        self.image, self.mask = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(1, 8, 3, stride=2, padding=1)
        self.fc = nn.Linear(8, 5)

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = torch.relu(self.image(image)) * torch.sigmoid(self.mask(mask)).mean((2, 3), keepdim=True)
        return self.fc(features.mean((2, 3))), features


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inputs")
    torch.manual_seed(0)
    x = (torch.randn(2, 3, 8, 8), torch.randn(2, 1, 10, 10))
    fp32 = str(folder / "fp32.onnx")
    torch.onnx.export(Masked().eval(), x, fp32, input_names=INPUTS, output_names=["logits", "features"],
                      opset_version=17, dynamo=False)
    rng = np.random.default_rng(0)
    batches = [{"image": rng.standard_normal((2, 3, 8, 8)).astype(np.float32),
                "mask": rng.standard_normal((2, 1, 10, 10)).astype(np.float32)} for _ in range(2)]
    qdq = quantize_static_qdq(fp32, str(folder / "qdq.onnx"), batches)
    return {"fp32": fp32, "qdq": qdq}, [t.numpy() for t in x], folder


@pytest.mark.parametrize("kind", ["fp32", "qdq"])
def test_several_inputs_compile_and_run(files, kind):
    paths, x, folder = files
    edge = folder / f"{kind}.edge"
    plan = compile(paths[kind], edge, select=False)
    assert plan.input_names == INPUTS and [entry["shape"] for entry in plan.inputs] == [[3, 8, 8], [1, 10, 10]]
    starts = [op.kind for op in plan.ops[:2]]
    assert starts == (["float_input"] * 2 if kind == "fp32" else ["quantize"] * 2)
    onnx_runtime = onnxruntime_session(paths[kind])  # unfused where its int8 kernels saturate (no VNNI)
    want = onnx_runtime.run(None, dict(zip(INPUTS, x)))
    reference = ReferenceModel(paths[kind]).run(x)
    for kernels in KERNELS:
        session = load(edge, kernels=kernels)
        assert session.input_names == INPUTS and session.input_shapes == [(3, 8, 8), (1, 10, 10)]
        got = session.run(x)
        assert all(np.array_equal(a, b) for a, b in zip(got, session.run(dict(zip(INPUTS, x)))))
        for g, w, r in zip(got, want, reference):
            if kind == "fp32":
                assert np.abs(g - w).max() <= 1e-4 * np.abs(w).max(), kernels
            else:
                assert np.array_equal(g, r), f"{kernels}: differs from the reference"
                assert np.abs(g - w).max() <= 0.1 * np.abs(w).max(), kernels


def test_wrong_inputs_are_refused(files):
    paths, x, folder = files
    compile(paths["fp32"], folder / "checked.edge", select=False)
    session = load(folder / "checked.edge")
    with pytest.raises(ValueError, match="takes 2 inputs \\(image, mask\\)"):
        session.run(x[0])
    with pytest.raises(ValueError, match="this model takes \\['image', 'mask'\\]"):
        session.run({"image": x[0]})
    with pytest.raises(ValueError, match="input 'mask' of shape \\(2, 1, 8, 8\\)"):
        session.run([x[0], x[1][:, :, :8, :8]])
    with pytest.raises(ValueError, match="different batch sizes"):
        session.run([x[0], x[1][:1]])
