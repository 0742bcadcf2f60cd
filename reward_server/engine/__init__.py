"""Tokenization, the BMAS kernel, the batch scorer and the request batcher. No HTTP here."""

from reward_server.engine.scorer import BatchReport, ItemReward, PreparedItem, ResolvedOptions, RewardEngine

__all__ = ["BatchReport", "ItemReward", "PreparedItem", "ResolvedOptions", "RewardEngine"]
