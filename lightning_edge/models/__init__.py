"""Networks: our CIFAR ResNets and Wide-ResNets (registered in timm's registry) and one factory for all."""
from lightning_edge.models import cifar_resnet, cifar_wrn  # noqa: F401  (registers the models with timm)
from lightning_edge.models.cifar_resnet import CifarResNet
from lightning_edge.models.cifar_wrn import CifarWideResNet, register_wrn
from lightning_edge.models.block_spec import BlockSpec, parse_block_spec
from lightning_edge.models.factory import create_model, list_models, load_weights, read_state_dict, recorded_model_spec
from lightning_edge.models.moonshine import StudentReport, derive_student, residual_blocks
from lightning_edge.models.profile import ModelProfile, count_macs, count_parameters, macs_per_layer, model_bytes, profile_model

__all__ = [
    "BlockSpec",
    "StudentReport",
    "derive_student",
    "parse_block_spec",
    "residual_blocks",
    "CifarResNet",
    "CifarWideResNet",
    "ModelProfile",
    "count_macs",
    "count_parameters",
    "create_model",
    "list_models",
    "macs_per_layer",
    "load_weights",
    "model_bytes",
    "profile_model",
    "read_state_dict",
    "recorded_model_spec",
    "register_wrn",
]
