"""What the single-sample adapters (AReaL, NeMo Gym, verifiers) share: reading a sample's ground
truth, task type and prompt id from a dataset row, removing trailing end-of-sequence text, and turning a
/score result into the same keys for every sample."""

from __future__ import annotations

import json
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
        # The fields the row has a value for: a row built from a schema (NeMo Gym's request model)
        # carries every declared field, set or not, and listing those would name the very fields
        # it lacks as the ones it has.
        fields = sorted(k for k, v in row.items() if v is not None and not k.startswith("_"))
        nulls = [k for k in GROUND_TRUTH_KEYS if k in row and row[k] is None]
        null_note = f"; {', '.join(nulls)} {'is' if len(nulls) == 1 else 'are'} null" if nulls else ""
        raise RewardClientError(f"{what} has no ground truth: it needs one of {list(GROUND_TRUTH_KEYS)}; "
                                f"it has {fields}{null_note}")
    task = row.get("task_type") or task_type or os.environ.get(ENV_TASK_TYPE)
    if not task:
        raise RewardClientError(f"{what} has no task type: add a 'task_type' field, pass task_type=..., "
                                f"or set {ENV_TASK_TYPE}")
    return row[key], str(task)


#: The keys of a /score result that are not one of its family's named sub-scores: the service
#: puts a family's sub-scores (``tiou``, ``bmas_forward``, a plug-in's own) beside these.
RESULT_FIELDS = frozenset({"id", "task_type", "reward", "accuracy", "format", "timed_out", "parsed",
                           "group_id", "prompt_id"})


def sub_scores_of(row: Mapping[str, Any]) -> dict[str, float]:
    """A result's named sub-scores, whatever its family: every number beside the standard fields
    (open_ended: ``bmas_forward``/``bmas_backward``; temporal_grounding: ``tiou``,
    ``boundary_penalty``; a plug-in family's own). Read from the result, not from a list of
    families, so a family the service learns needs no client release."""
    return {k: float(v) for k, v in row.items()
            if k not in RESULT_FIELDS and isinstance(v, (int, float)) and not isinstance(v, bool)}


def parsed_text(row: Mapping[str, Any]) -> str:
    """What the rule read (``parsed``, with ``explain``) as one string, for trainers whose logs hold
    text: a string as is, anything else (a number, boxes, segments, weakest tokens) as compact JSON,
    and "" when the rule read nothing (no answer word, no box...) or explain was off."""
    value = row.get("parsed")
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def result_keys(row: Mapping[str, Any]) -> dict[str, Any]:
    """One /score result as the same keys for every sample, whatever its task type:

    - ``reward``, ``accuracy``, ``format`` (floats) and ``task_type`` (canonical name);
    - ``bmas_forward``/``bmas_backward``: the open-ended terms, None for other tasks;
    - ``timed_out``: True when the service gave up verifying (math past its deadline: accuracy 0);
    - ``sub_scores``: the family's named sub-scores (``{"tiou": ..., "boundary_penalty": ...}`` for
      temporal grounding, the BMAS terms for open-ended, ``{}`` for most);
    - ``parsed``: what the rule read when ``explain`` was asked for, else None."""
    subs = sub_scores_of(row)
    out: dict[str, Any] = {
        "reward": float(row["reward"]),
        "accuracy": float(row["accuracy"]),
        "format": float(row["format"]),
        "task_type": str(row["task_type"]),
        "bmas_forward": subs.get("bmas_forward"),
        "bmas_backward": subs.get("bmas_backward"),
        "timed_out": bool(row.get("timed_out", False)),
        "sub_scores": subs,
        "parsed": row.get("parsed"),
    }
    numbers = [v for v in (out["reward"], out["accuracy"], out["format"], *subs.values())]
    if not all(math.isfinite(v) for v in numbers):
        raise RewardClientError(f"the server returned a non-finite score {row}")
    return out
