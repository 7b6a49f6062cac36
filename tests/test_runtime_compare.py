"""lightning_edge.runtime.compare: the first tensor where a .edge file's codes part from ONNX Runtime's."""
from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from lightning_edge.cli import main
from lightning_edge.runtime import compile
from lightning_edge.runtime.compare import first_differences
from tests.test_runtime_ops import SHAPE, ort_qdq_file


class ThreeConvs(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(8, 8, 1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 16 * 16, 10))

    def forward(self, x):
        return self.body(x)


def test_equal_files_have_no_difference_and_a_moved_zero_point_is_found_where_it_is(tmp_path, capsys):
    # Seeded weights: ONNX Runtime's unfused path sums each conv in float32, so on some weight draws a sum
    # lands one float32 step from a rounding tie that our exact integer sum resolves the other way (one code
    # apart); with the global generator's state left by earlier tests this test then failed now and then.
    torch.manual_seed(0)
    path = ort_qdq_file(ThreeConvs(), tmp_path)
    compile(path, str(tmp_path / "model.edge"), select=False)
    x = np.random.default_rng(1).standard_normal((3, *SHAPE)).astype(np.float32) * 2
    assert first_differences(tmp_path / "model.edge", path, x, optimized=False) == [None, None, None]
    # The same file with the second conv's output grid moved by one code: ONNX Runtime now computes another
    # network, and the comparison names that conv's QuantizeLinear output as where the codes part.
    model = onnx.load(path)
    convs = [node for node in model.graph.node if node.op_type == "Conv"]
    quantize = next(node for node in model.graph.node if node.op_type == "QuantizeLinear" and node.input[0] in
                    {name for conv in convs[1:2] for name in _after_relu(model, conv.output[0])})
    zero = next(item for item in model.graph.initializer if item.name == quantize.input[2])
    zero.CopyFrom(numpy_helper.from_array((numpy_helper.to_array(zero).astype(np.int32) + 1).astype(np.uint8), zero.name))
    moved = str(tmp_path / "moved.onnx")
    onnx.save(model, moved)
    found = first_differences(tmp_path / "model.edge", moved, x, optimized=False)
    assert all(d is not None and d.tensor == quantize.output[0] for d in found), found
    # compared before it: the input's codes and the first conv's, both equal
    assert all(d.compared == 3 and d.differing > 0 and d.largest >= 1 for d in found), found
    np.save(tmp_path / "x.npy", x)
    assert main(["compare", str(tmp_path / "model.edge"), moved, "--input", str(tmp_path / "x.npy"), "--unfused"]) == 0
    assert capsys.readouterr().out.count(f"codes part at {quantize.output[0]}") == 3


def _after_relu(model: onnx.ModelProto, name: str) -> set[str]:
    """``name`` and the output of the Relu that reads it (the QuantizeLinear reads one of them)."""
    return {name, *(node.output[0] for node in model.graph.node if node.op_type == "Relu" and node.input[0] == name)}
