"""The rule dispatcher the engine uses: parse a ground truth once, then score many responses.

A GRPO group shares one ground truth across many responses, so the truth is validated and parsed
once into a hashable :class:`PreparedTruth` (the caller caches it) and each response costs only its
own extraction. Only the ground truth may raise (it is the client's); a response is model output
and always gets a finite score, garbage included.
"""

from __future__ import annotations

from dataclasses import dataclass

from reward_server.rewards.chart import ChartTruth, chart_reward
from reward_server.rewards.errors import InvalidGroundTruth
from reward_server.rewards.grounding import grounding_reward, parse_truth_shapes
from reward_server.rewards.matching import McqTruth, extract_yes_no, mcq_reward, yes_no_reward
from reward_server.rewards.shapes import Shape
from reward_server.rewards.spans import answer_span
from reward_server.rewards.tasks import TaskType

Parsed = str | McqTruth | ChartTruth | tuple[Shape, ...] | None


@dataclass(frozen=True)
class PreparedTruth:
    """A validated ground truth. ``text`` is its unwrapped answer span (what BMAS embeds)."""

    task: TaskType
    text: str
    parsed: Parsed = None  # "yes"/"no", McqTruth, ChartTruth, or the truth shapes; None if open-ended


def _preview(text: str) -> str:
    return repr(text if len(text) <= 60 else text[:57] + "...")


def prepare_ground_truth(task: TaskType, ground_truth: str) -> PreparedTruth:
    """Validate and parse one ground truth for ``task``; raises :class:`InvalidGroundTruth`."""
    if not isinstance(ground_truth, str):
        raise InvalidGroundTruth(f"ground truth must be a string, got {type(ground_truth).__name__}")
    text = answer_span(ground_truth)
    if not text:
        raise InvalidGroundTruth(
            "ground truth is empty"
            + (" once <answer>/<think> tags are unwrapped" if ground_truth.strip() else "")
        )
    task = TaskType(task)
    parsed: Parsed
    if task is TaskType.YES_NO:
        parsed = extract_yes_no(text)
        if parsed is None:
            raise InvalidGroundTruth(
                "yes/no ground truth must answer with one whole word 'yes' or 'no' "
                f"(not none, not both, not negated): {_preview(text)}"
            )
    elif task is TaskType.MCQ:
        parsed = McqTruth.parse(text)
        if not parsed.full_text:
            raise InvalidGroundTruth(
                f"multiple-choice ground truth has no letter or option text: {_preview(text)}"
            )
    elif task is TaskType.CHART:
        parsed = ChartTruth.parse(text)
        if parsed.number is None and not parsed.text:
            raise InvalidGroundTruth(f"chart ground truth has no number or text: {_preview(text)}")
    elif task is TaskType.GROUNDING:
        parsed = parse_truth_shapes(text)
    else:
        parsed = None
    return PreparedTruth(task=task, text=text, parsed=parsed)


def rule_accuracy(task: TaskType, response: str, truth: PreparedTruth) -> float:
    """Accuracy of one response for a rule-scored task: 0/1, or IoU in [0, 1] for grounding.

    Raises ``ValueError`` only for programming errors (open-ended goes to BMAS; a truth prepared
    for another task), never because of what the response says.
    """
    task = TaskType(task)
    if task is TaskType.OPEN_ENDED:
        raise ValueError("open-ended items are scored by BMAS in the engine, not by a rule")
    if truth.task is not task:
        raise ValueError(f"ground truth was prepared for {truth.task.value}, not {task.value}")
    span = answer_span(response)
    parsed = truth.parsed
    if task is TaskType.YES_NO and isinstance(parsed, str):
        return yes_no_reward(span, parsed)
    if task is TaskType.MCQ and isinstance(parsed, McqTruth):
        return mcq_reward(span, parsed)
    if task is TaskType.CHART and isinstance(parsed, ChartTruth):
        return chart_reward(span, parsed)
    if task is TaskType.GROUNDING and isinstance(parsed, tuple):
        return grounding_reward(span, parsed)
    raise ValueError(f"ground truth for {task.value} was not prepared by prepare_ground_truth")


__all__ = ["PreparedTruth", "prepare_ground_truth", "rule_accuracy"]
