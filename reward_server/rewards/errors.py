"""Client mistakes found while reading one item.

The rules are pure functions, so they cannot answer HTTP themselves; they raise these instead and
the HTTP layer turns each into a 422 naming the item and ``field``. Everything else a rule raises
is a bug on our side, which is why model output (the response) never raises: only what the client
controls (task type, ground truth, options) does.
"""

from __future__ import annotations


class RewardInputError(ValueError):
    """A client error in one item; ``field`` names the request field to fix."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message

    def __str__(self) -> str:
        return self.message


class UnknownTaskType(RewardInputError):
    """The task type is not one we route; the message lists what is accepted."""

    def __init__(self, message: str) -> None:
        super().__init__("task_type", message)


class InvalidGroundTruth(RewardInputError):
    """The ground truth cannot be scored against (empty, no box, malformed box, ...)."""

    def __init__(self, message: str) -> None:
        super().__init__("ground_truth", message)


__all__ = ["InvalidGroundTruth", "RewardInputError", "UnknownTaskType"]
