"""Lightning callbacks: thin adapters over lightning_edge's pure-torch algorithms (one callback a file)."""
from lightning_edge.callbacks.channel_pruning import ChannelPruning
from lightning_edge.callbacks.exact_resume import ExactResume
from lightning_edge.callbacks.export_int8 import ExportInt8
from lightning_edge.callbacks.gradual_magnitude_pruning import GradualMagnitudePruning
from lightning_edge.callbacks.knowledge_distillation import KnowledgeDistillation
from lightning_edge.callbacks.post_training_quantization import PostTrainingQuantization
from lightning_edge.callbacks.quantization_aware_training import QuantizationAwareTraining

__all__ = ["ChannelPruning", "ExactResume", "ExportInt8", "GradualMagnitudePruning", "KnowledgeDistillation", "PostTrainingQuantization", "QuantizationAwareTraining"]
