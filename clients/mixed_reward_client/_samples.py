"""What the single-sample adapters (AReaL, NeMo Gym, verifiers) share: reading a sample's ground
truth, task type and prompt id from a dataset row, removing trailing end-of-sequence text, and turning a
/score result into the same keys for every sample."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

from mixed_reward_client.errors import RewardClientError

ENV_TASK_TYPE = "MIXED_REWARD_TASK_TYPE"
ENV_EOS = "MIXED_REWARD_EOS"
GROUND_TRUTH_KEYS = ("ground_truth", "answer", "solution")
# The row field naming the prompt across epochs: sent as the item's prompt_id, which the service's
# difficulty posterior (and so the VADE sampler) is keyed by. Rows without it are scored the same.
PROMPT_ID_KEY = "prompt_id"
# Trainers that decode with special tokens kept (AReaL) leave the end-of-sequence text on the
# completion, which the format rule would count against it. The server's /get_reward and /slime
# strip the same strings (reward_server.service.openrlhf.DEFAULT_EOS).
DEFAULT_EOS: tuple[str, ...] = (
    "<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>", "<|eom_id|>", "</s>", "<|end|>",
    "<end_of_turn>", "<eos>", "<|end▁of▁sentence|>", "[SEP]", "<pad>", "[PAD]",
)

def eos_strings(eos: str | Sequence[str] | None = None) -> tuple[str, ...]:
    """``eos`` (a comma-separated string or a list), else ``$MIXED_REWARD_EOS``, else the defaults."""
    raw: str | Sequence[str] | None = eos if eos is not None else os.environ.get(ENV_EOS)
    if raw is None:
        return DEFAULT_EOS
    return tuple(s for s in (raw.split(",") if isinstance(raw, str) else raw) if s)


def strip_eos(text: str, eos: Sequence[str]) -> str:
    """Remove trailing end-of-sequence strings, repeatedly, with whitespace between them."""
    end = len(text)
    while True:
        head = text[:end].rstrip()
        marker = next((m for m in eos if m and head.endswith(m)), None)
        if marker is None:
            return text[:end]
        end = len(head) - len(marker)


def truth_and_task(row: Mapping[str, Any], task_type: str | None, what: str) -> tuple[Any, str]:
    """The ground truth (``ground_truth``, ``answer`` or ``solution``) and the task type (the row's
    ``task_type``, else ``task_type``, else ``$MIXED_REWARD_TASK_TYPE``) of one dataset row."""
    key = next((k for k in GROUND_TRUTH_KEYS if row.get(k) is not None), None)
    if key is None:
        fields = sorted(k for k in row if not k.startswith("_"))
        raise RewardClientError(f"{what} has no ground truth: it needs one of {list(GROUND_TRUTH_KEYS)}; "
                                f"it has {fields}")
    task = row.get("task_type") or task_type or os.environ.get(ENV_TASK_TYPE)
    if not task:
        raise RewardClientError(f"{what} has no task type: add a 'task_type' field, pass task_type=..., "
                                f"or set {ENV_TASK_TYPE}")
    return row[key], str(task)


def result_keys(row: Mapping[str, Any]) -> dict[str, Any]:
    """One /score result as the same keys for every sample: reward, accuracy, format and task_type,
    and ``bmas_forward``/``bmas_backward``, which are None for tasks other than open-ended."""
    out: dict[str, Any] = {
        "reward": float(row["reward"]),
        "accuracy": float(row["accuracy"]),
        "format": float(row["format"]),
        "task_type": str(row["task_type"]),
        "bmas_forward": None if row.get("bmas_forward") is None else float(row["bmas_forward"]),
        "bmas_backward": None if row.get("bmas_backward") is None else float(row["bmas_backward"]),
    }
    numbers = [v for v in out.values() if isinstance(v, float)]
    if not all(math.isfinite(v) for v in numbers):
        raise RewardClientError(f"the server returned a non-finite score {out}")
    return out
