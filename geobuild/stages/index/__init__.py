"""The index stage: Embeddings -> the faiss gallery index and the GPS gallery."""

from .stage import IndexConfig, IndexStage

__all__ = ["IndexConfig", "IndexStage"]
