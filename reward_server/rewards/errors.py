"""Client mistakes the pure reward rules find while reading one item.

The rules cannot answer HTTP, so they raise :class:`~reward_server.errors.ItemFieldError` (or one of
these refinements of it), naming the request field; validation adds the item's index and the HTTP
layer renders it as a 422. Everything else a rule raises is a bug on our side, which is why model
output (the response) never raises: only what the client controls (task type, ground truth,
options) does.
"""

from __future__ import annotations

from reward_server.errors import ItemFieldError


class UnknownTaskType(ItemFieldError):
    """The task type is not one we route; the message lists what is accepted."""

    def __init__(self, message: str) -> None:
        super().__init__("task_type", message)


class InvalidGroundTruth(ItemFieldError):
    """The ground truth cannot be scored against (empty, no box, malformed box, ...)."""

    def __init__(self, message: str) -> None:
        super().__init__("ground_truth", message)


__all__ = ["InvalidGroundTruth", "ItemFieldError", "UnknownTaskType"]
