"""The shard stage: Photos + metadata -> WebDataset shards, a ledger row per input, sizes.json."""

from .stage import ShardConfig, ShardStage

__all__ = ["ShardConfig", "ShardStage"]
