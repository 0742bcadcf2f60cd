"""Synthetic GRPO rollouts with known answers, for tests, demos and checking a setup end to end.

Each prompt gets ``k`` responses whose correctness is decided here (all right, all wrong, mixed,
or k copies of one response), so the expected accuracy and format of every rule-scored response
are known without running the scorer: a test can compare the scorer with an independent answer.
Open-ended rows carry no expected accuracy (BMAS depends on the embedding table), but a group of
identical responses is known to have zero variance.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

TASK_SPELLINGS = {
    "yes_no": ("yes_no", "YORN", "binary"),
    "mcq": ("mcq", "Multiple-Choice", "choice"),
    "chart": ("chart", "ChartQA", "numeric"),
    "grounding": ("grounding", "IoU", "bbox"),
    "open_ended": ("open_ended", "caption", "free form"),
}
TASKS = tuple(TASK_SPELLINGS)
MODES = ("all_correct", "all_wrong", "mixed", "mixed", "same")  # "same": k copies of one response
CAPTIONS = (
    "a brown dog runs across a green field chasing a red ball",
    "two people sit on a bench in a park next to a lake",
    "a bowl of fruit with apples bananas and grapes on a wooden table",
    "a city street at night with cars and bright shop signs",
    "a small boat floating on calm water under a cloudy sky",
)


def box_iou(a: list[float], b: list[float]) -> float:
    """Plain continuous IoU of two [x1, y1, x2, y2] boxes (the spec's rule, no +1 pixel)."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _wrap(answer: str, formatted: bool) -> str:
    return f"<think>Let me look at the image.</think>\n<answer>{answer}</answer>" if formatted else answer


def _prompt(task: str, rng: random.Random) -> tuple[Any, Any, Any]:
    """(ground truth as stored in the file, a correct answer maker, a wrong answer maker)."""
    if task == "yes_no":
        truth = rng.choice(["yes", "no"])
        other = "no" if truth == "yes" else "yes"
        return truth, lambda: f"{truth.capitalize()}, I think so.", lambda: f"{other.capitalize()}."
    if task == "mcq":
        letter = rng.choice("ABCD")
        wrong = rng.choice([c for c in "ABCD" if c != letter])
        truth = rng.choice([letter, f"({letter}) {rng.randint(2, 9)} cm"])
        return truth, lambda: f"The answer is ({letter}).", lambda: wrong
    if task == "chart":
        value = round(rng.uniform(10, 5000), 1)
        truth: Any = rng.choice([value, f"{value:,}"])
        return truth, lambda: rng.choice([f"{value}", f"{value:,} units"]), lambda: f"{value * 2 + 7}"
    if task == "grounding":
        x, y = rng.randint(40, 300), rng.randint(40, 300)
        box = [x, y, x + rng.randint(40, 200), y + rng.randint(40, 200)]
        truth = rng.choice([box, json.dumps(box)])

        def near() -> list[int]:
            dx, dy = rng.randint(-30, 30), rng.randint(-30, 30)
            return [box[0] + dx, box[1] + dy, box[2] + dx, box[3] + dy]

        far = [box[2] + 50, box[3] + 50, box[2] + 120, box[3] + 90]
        return truth, lambda: box if rng.random() < 0.3 else near(), lambda: far
    caption = rng.choice(CAPTIONS)
    others = [c for c in CAPTIONS if c != caption]
    return caption, lambda: caption if rng.random() < 0.3 else rng.choice(others), lambda: rng.choice(others)


def synthetic_prompts(n_prompts: int, k: int = 8, seed: int = 0) -> Iterator[dict[str, Any]]:
    """Prompt rows: ``{prompt_id, task_type, ground_truth, responses: [k], expected_*: [k]}``."""
    rng = random.Random(seed)
    for p in range(n_prompts):
        task = TASKS[p % len(TASKS)]
        mode = rng.choice(MODES)
        truth, right, wrong = _prompt(task, rng)
        fmt_mode = rng.choice(["all", "all", "none", "mixed"]) if mode != "same" else rng.choice(["all", "none"])
        answers: list[Any] = []
        correct: list[bool] = []
        for i in range(k):
            if mode == "same" and answers:
                ok = correct[0]
                answers.append(answers[0])
            else:
                ok = {"all_correct": True, "all_wrong": False}.get(mode, i % 2 == 0 or rng.random() < 0.3)
                if mode == "same":
                    ok = rng.random() < 0.5
                answers.append(right() if ok else wrong())
            correct.append(ok)
        formats = [1.0 if fmt_mode == "all" or (fmt_mode == "mixed" and rng.random() < 0.5) else 0.0 for _ in answers]
        responses = [
            _wrap(json.dumps(a) if isinstance(a, list) else a, f == 1.0) for a, f in zip(answers, formats)
        ]
        accuracies: list[float | None]
        if task == "grounding":
            gt_box = truth if isinstance(truth, list) else json.loads(truth)
            accuracies = [box_iou(a, gt_box) for a in answers]
        elif task == "open_ended":
            accuracies = [None] * k
        else:
            accuracies = [1.0 if ok else 0.0 for ok in correct]
        yield {
            "prompt_id": f"p{p:05d}",
            "prompt": f"Question {p} about the image ({task}).",
            "task_type": rng.choice(TASK_SPELLINGS[task]),
            "ground_truth": truth,
            "responses": responses,
            "expected_accuracies": accuracies,
            "expected_formats": formats,
            "mode": mode,
        }


def synthetic_rows(n_prompts: int, k: int = 8, seed: int = 0, shuffle: bool = False) -> Iterator[dict[str, Any]]:
    """One row per response with ``group_id`` (the per-response layout); ``shuffle`` interleaves
    the groups so that grouping cannot rely on adjacency."""
    rows = []
    for prompt in synthetic_prompts(n_prompts, k, seed):
        for i, response in enumerate(prompt["responses"]):
            row = {
                "id": f"{prompt['prompt_id']}-{i}",
                "group_id": prompt["prompt_id"],
                "task_type": prompt["task_type"],
                "ground_truth": prompt["ground_truth"],
                "response": response,
                "expected_accuracy": prompt["expected_accuracies"][i],
                "expected_format": prompt["expected_formats"][i],
            }
            if not shuffle:
                yield row
            else:
                rows.append(row)
    if shuffle:
        random.Random(seed + 1).shuffle(rows)
        yield from rows


def write_jsonl(path: str | Path, rows: Iterator[dict[str, Any]] | list[dict[str, Any]]) -> int:
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
            n += 1
    return n


def write_synthetic(
    path: str | Path, n_prompts: int, k: int = 8, seed: int = 0, layout: Literal["rows", "prompts"] = "rows"
) -> int:
    rows = synthetic_rows(n_prompts, k, seed) if layout == "rows" else synthetic_prompts(n_prompts, k, seed)
    return write_jsonl(path, rows)


__all__ = ["box_iou", "synthetic_prompts", "synthetic_rows", "write_jsonl", "write_synthetic"]
