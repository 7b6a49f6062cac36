"""Graphs with several outputs: every output is compiled (the plan keeps their names and shapes, in graph output
order), ``Session.run(x)`` returns them as a list in that order (one array for a one-output model, as always) and
``Session.run(x, as_dict=True)`` as a dict by output name; in QDQ files (ONNX Runtime's quantize_static) and FP32 ones,
on every kernel path this CPU has."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from lightning_edge.export import onnxruntime_session
from lightning_edge.runtime import available_kernels, compile, load
from lightning_edge.runtime.benchmark import quantize_static_qdq
from lightning_edge.runtime.edge_format import EdgeFormatError, read_edge
from lightning_edge.runtime.reference import ReferenceModel
from lightning_edge.runtime.session import Session

KERNELS = available_kernels()
OUTPUTS = ["logits", "features", "map"]


class TwoHeads(nn.Module):
    """A network returning (logits, pooled features, a feature map): a Gemm's output, a pooled vector and an image."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1),
                                  nn.ReLU())
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        feature_map = self.body(x)
        features = feature_map.mean((2, 3))
        return self.fc(features), features, feature_map


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The FP32 file, ONNX Runtime's QDQ file of it, and a batch."""
    folder = tmp_path_factory.mktemp("outputs")
    torch.manual_seed(0)
    x = torch.randn(2, 3, 12, 12)
    fp32 = str(folder / "fp32.onnx")
    torch.onnx.export(TwoHeads().eval(), x, fp32, input_names=["input"], output_names=OUTPUTS, opset_version=17,
                      dynamo=False)
    rng = np.random.default_rng(0)
    qdq = quantize_static_qdq(fp32, str(folder / "qdq.onnx"),
                              [rng.standard_normal((2, 3, 12, 12)).astype(np.float32) for _ in range(2)])
    return {"fp32": fp32, "qdq": qdq}, x.numpy(), folder


@pytest.mark.parametrize("kind", ["fp32", "qdq"])
def test_several_outputs_compile_and_run(files, kind):
    paths, x, folder = files
    edge = folder / f"{kind}.edge"
    plan = compile(paths[kind], edge, select=False)
    assert plan.output_names == OUTPUTS
    assert [entry["shape"] for entry in plan.outputs] == [[10], [16], [16, 6, 6]]
    onnx_runtime = onnxruntime_session(paths[kind])  # unfused where its int8 kernels saturate (no VNNI)
    want = onnx_runtime.run(None, {"input": x})
    reference = ReferenceModel(paths[kind]).run(x)
    for kernels in KERNELS:
        session = load(edge, kernels=kernels)
        got = session.run(x)
        assert isinstance(got, list) and [g.shape for g in got] == [w.shape for w in want]
        for name, g, w, r in zip(OUTPUTS, got, want, reference):
            if kind == "fp32":
                assert np.abs(g - w).max() <= 1e-4 * np.abs(w).max(), f"{kernels}: output {name}"
            else:  # the int8 arithmetic of the spec, bit for bit; ONNX Runtime's within a few steps of each grid
                assert np.array_equal(g, r), f"{kernels}: output {name} differs from the reference"
                assert np.abs(g - w).max() <= 0.1 * np.abs(w).max(), f"{kernels}: output {name}"
        by_name = session.run(x, as_dict=True)
        assert list(by_name) == OUTPUTS and all(np.array_equal(by_name[n], g) for n, g in zip(OUTPUTS, got))
        assert session.output_names == OUTPUTS
        traced, _ = session.trace(x)
        assert all(np.array_equal(t, g) for t, g in zip(traced, got))


def test_one_output_is_one_array(files):
    paths, x, folder = files
    import onnx

    model = onnx.load(paths["fp32"])
    del model.graph.output[1:]
    onnx.save(model, str(folder / "one.onnx"))
    compile(folder / "one.onnx", folder / "one.edge", select=False)
    session = load(folder / "one.edge")
    assert isinstance(session.run(x), np.ndarray) and list(session.run(x, as_dict=True)) == ["logits"]


@pytest.mark.parametrize("damage, message", [
    ("index twice", "output ops write outputs \\[0, 0, 2\\]"),
    ("index out of range", "output ops write outputs \\[0, 1, 7\\]"),
    ("outputs missing one", "not each of its 2 outputs once"),
    ("output op in the middle", "its output ops \\(dequantize or float_output\\) last"),
])
def test_damaged_outputs_are_refused(files, damage, message):
    paths, x, folder = files
    compile(paths["qdq"], folder / "damaged.edge", select=False)
    plan, tensors = read_edge(folder / "damaged.edge")
    ends = [op for op in plan["ops"] if op["kind"] == "dequantize"]
    if damage == "index twice":
        ends[1]["index"] = 0
    elif damage == "index out of range":
        ends[2]["index"] = 7
    elif damage == "outputs missing one":
        plan["outputs"].pop()
    else:
        plan["ops"].insert(2, plan["ops"].pop(plan["ops"].index(ends[0])))
    with pytest.raises(EdgeFormatError, match=message):
        Session(plan, tensors)
