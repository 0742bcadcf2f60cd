"""Defaults shared by the offline commands, in a module light enough for the CLI parser to import
(building ``reward-server --help`` must not import torch)."""

from __future__ import annotations

#: ``filter`` also needs a continuous family's group std above this (IoU, BMAS, tIoU, ANLS: the
#: families that are not binary); a spread in the third decimal is noise to GRPO, not signal.
DEFAULT_MIN_STD = 0.01
#: Responses per scoring batch and per checkpoint: bounds memory and the work lost to a kill.
DEFAULT_BATCH_SIZE = 512

__all__ = ["DEFAULT_BATCH_SIZE", "DEFAULT_MIN_STD"]
