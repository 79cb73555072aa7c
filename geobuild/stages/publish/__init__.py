"""The publish stage: Candidates + distances + photos -> Hub dataset repositories (staged, validated, uploaded)."""

from .stage import PublishConfig, PublishStage, UploadConfig, UploadStage

__all__ = ["PublishConfig", "PublishStage", "UploadConfig", "UploadStage"]
