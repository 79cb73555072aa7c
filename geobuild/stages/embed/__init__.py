"""The embed stage: Shards -> L2-normalised embeddings with aligned metadata."""

from .config import EmbedConfig
from .stage import EmbedStage

__all__ = ["EmbedConfig", "EmbedStage"]
