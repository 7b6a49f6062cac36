"""Lightning callbacks: thin adapters over lightning_edge's pure-torch algorithms."""
from lightning_edge.callbacks.exact_resume import ExactResume

__all__ = ["ExactResume"]
