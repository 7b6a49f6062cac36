"""Lightning callbacks: thin adapters over lightning_edge's pure-torch algorithms."""
from lightning_edge.callbacks.exact_resume import ExactResume
from lightning_edge.callbacks.knowledge_distillation import KnowledgeDistillation

__all__ = ["ExactResume", "KnowledgeDistillation"]
