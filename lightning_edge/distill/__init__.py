"""Distillation losses, pure torch: logit KD, attention transfer and FitNets feature hints."""
from lightning_edge.distill.attention import AttentionTransferLoss, attention_map
from lightning_edge.distill.hint import FeatureHintLoss
from lightning_edge.distill.kd import KDLoss
from lightning_edge.distill.registry import DEFAULT_LOSSES, LOSSES, build_losses, create_loss

__all__ = [
    "DEFAULT_LOSSES",
    "LOSSES",
    "AttentionTransferLoss",
    "FeatureHintLoss",
    "KDLoss",
    "attention_map",
    "build_losses",
    "create_loss",
]
