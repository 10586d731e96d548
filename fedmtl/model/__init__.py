"""Multi-task recommender: a shared encoder and personal parts (heads, user embeddings)."""

from .recommender import MultiTaskRecommender, build_model
from .parts import personal_names, shared_names, get_arrays, set_arrays

__all__ = ["MultiTaskRecommender", "build_model", "personal_names", "shared_names", "get_arrays", "set_arrays"]
