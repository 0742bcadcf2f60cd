"""Tokenization, the BMAS kernel, the batch scorer and the request batcher. No HTTP here."""

from reward_server.engine.scorer import BatchReport, ItemScore, RewardEngine, ScoreOptions, ScoringItem

__all__ = ["BatchReport", "ItemScore", "RewardEngine", "ScoreOptions", "ScoringItem"]
