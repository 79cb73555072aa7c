"""The mine stage: Queries -> image and GPS candidates with location text."""

from .stage import MineConfig, MineStage

__all__ = ["MineConfig", "MineStage"]
