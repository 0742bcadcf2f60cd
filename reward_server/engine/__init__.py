"""Tokenization, the BMAS kernel, the batch scorer, the request batcher and the worker pool. No HTTP here."""

from reward_server.engine.scorer import BatchReport, RewardEngine

__all__ = ["BatchReport", "RewardEngine"]
