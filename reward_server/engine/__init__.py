"""Tokenization, the BMAS kernel, the batch scorer, the request batcher and the worker pool. No HTTP here.

The package itself imports nothing heavy: the pool's worker processes unpickle
``reward_server.engine.pool`` and must not pay for torch (seconds of imports and hundreds of MB per
worker, again at every replacement of a worker killed at its deadline)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from reward_server.engine.scorer import BatchReport, RewardEngine

__all__ = ["BatchReport", "RewardEngine"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from reward_server.engine import scorer

        return getattr(scorer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
