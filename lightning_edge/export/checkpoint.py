"""Rebuild the network a train.py checkpoint holds, quantized if it was trained with QAT, for export."""
from __future__ import annotations

import os
from collections.abc import Mapping

from torch import nn

from lightning_edge.models.factory import create_model, load_weights, read_checkpoint, recorded_model_spec
from lightning_edge.quant.prepare import QuantConfig, prepare_qat

# Lightning stores a callback's state under its class name.
QAT_STATE_KEY = "QuantizationAwareTraining"


def recorded_quant_config(checkpoint_path: str | os.PathLike) -> QuantConfig | None:
    """The quantization settings of a checkpoint written with ``QuantizationAwareTraining``, else None."""
    checkpoint = read_checkpoint(checkpoint_path)
    callbacks = checkpoint.get("callbacks") if isinstance(checkpoint, Mapping) else None
    state = callbacks.get(QAT_STATE_KEY) if isinstance(callbacks, Mapping) else None
    return QuantConfig.create(state["config"]) if isinstance(state, Mapping) and "config" in state else None


def network_from_checkpoint(checkpoint_path: str | os.PathLike) -> nn.Module:
    """The network of a train.py checkpoint (its ``hyper_parameters.net`` spec), weights and quantization loaded."""
    path = os.fspath(checkpoint_path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    spec = recorded_model_spec(path)
    if spec is None:
        raise ValueError(
            f"checkpoint {path!r} does not record its network (no hyper_parameters.net); it must come from train.py "
            "or ClassificationModule. For other weights, build the model in Python and call lightning_edge.export.to_onnx"
        )
    spec.pop("pretrained", None)
    network = create_model(**spec)
    config = recorded_quant_config(path)
    if config is not None:
        prepare_qat(network, config, inplace=True)
    load_weights(network, path)
    return network.eval()
