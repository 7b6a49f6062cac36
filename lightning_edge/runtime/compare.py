"""Where a .edge file's codes first part from ONNX Runtime's on the same QDQ file, tensor by tensor.

When two engines disagree on a network's output, the question is which layer started it, and by how much.
Both run one sample: ONNX Runtime with every QuantizeLinear output of the file added as a graph output
(fused, as users run it, or unfused: the file's QDQ arithmetic as written), ours through ``Session.trace``,
which keeps every tensor the plan stores under its ONNX name. The first tensor in graph order whose codes
differ is reported with how many codes differ and by how much. Needs onnx and onnxruntime (not torch).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np


@dataclass
class Difference:
    """The first tensor, in graph order, whose codes differ between the two engines on one sample."""

    tensor: str          # the ONNX name of the QuantizeLinear output
    differing: int       # how many of its codes differ
    size: int            # how many codes it has
    largest: int         # the largest difference, in codes
    compared: int        # tensors compared before and including this one


def first_differences(edge_path: str | os.PathLike, onnx_path: str | os.PathLike, x: np.ndarray,
                      optimized: bool = True, threads: int = 1) -> list[Difference | None]:
    """For each sample of ``x`` (float32 NCHW), the first tensor whose codes differ, or None when all agree.

    Tensors stored on the same grid compare exactly: ONNX Runtime's int8 codes are shifted by +128 onto the
    runtime's uint8 form. Tensors the plan does not store (codes that only moved, folded adds) are skipped.
    """
    import onnx
    from onnx import TensorProto, helper

    from lightning_edge.runtime.benchmark import onnxruntime_session
    from lightning_edge.runtime.session import load

    model = onnx.load(os.fspath(onnx_path))
    code_types = {item.name: item.data_type for item in model.graph.initializer}
    code_types.update({node.output[0]: attribute.t.data_type for node in model.graph.node if node.op_type == "Constant"
                       for attribute in node.attribute if attribute.name == "value"})
    quantize_nodes = [node for node in model.graph.node if node.op_type == "QuantizeLinear"]
    quantized = [node.output[0] for node in quantize_nodes]
    if not quantized:
        raise ValueError(f"{os.fspath(onnx_path)} has no QuantizeLinear: compare finds where int8 codes differ; "
                         "for a float file compare the outputs (lightning-edge run --output)")
    outputs = {output.name for output in model.graph.output}
    for node in quantize_nodes:  # a QuantizeLinear's codes have its zero point's type (uint8 without one)
        code_type = code_types.get(node.input[2], TensorProto.UINT8) if len(node.input) > 2 else TensorProto.UINT8
        if node.output[0] not in outputs:
            model.graph.output.append(helper.make_tensor_value_info(node.output[0], code_type, None))
    peer = onnxruntime_session(model.SerializeToString(), threads, optimized=optimized)  # nothing written to disk
    ours = load(edge_path, threads=threads)
    names = [output.name for output in peer.get_outputs()]
    input_name = peer.get_inputs()[0].name
    found: list[Difference | None] = []
    for sample in np.asarray(x, dtype=np.float32):
        theirs = dict(zip(names, peer.run(None, {input_name: sample[None]})))
        _, stored = ours.trace(sample[None])
        found.append(_first_difference(quantized, theirs, stored))
    return found


def _first_difference(order: list[str], theirs: dict[str, np.ndarray], ours: dict[str, np.ndarray]) -> Difference | None:
    compared = 0
    for name in order:
        if name not in ours or name not in theirs or ours[name].size != theirs[name].size:
            continue
        compared += 1
        expected = theirs[name].astype(np.int32).reshape(-1) + (128 if theirs[name].dtype == np.int8 else 0)
        delta = np.abs(ours[name].astype(np.int32).reshape(-1) - expected)
        if delta.any():
            return Difference(name, int(np.count_nonzero(delta)), int(delta.size), int(delta.max()), compared)
    return None
