"""Defaults shared by the offline commands, in a module light enough for the CLI parser to import
(building ``reward-server --help`` must not import torch)."""

from __future__ import annotations

#: Task types whose rewards are continuous (IoU, BMAS): ``filter`` also needs their group std above
#: ``DEFAULT_MIN_STD``; a spread in the third decimal is noise to GRPO, not signal.
CONTINUOUS_TASKS = ("grounding", "open_ended")
DEFAULT_MIN_STD = 0.01
#: Responses per scoring batch and per checkpoint: bounds memory and the work lost to a kill.
DEFAULT_BATCH_SIZE = 512

__all__ = ["CONTINUOUS_TASKS", "DEFAULT_BATCH_SIZE", "DEFAULT_MIN_STD"]
