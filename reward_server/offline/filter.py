"""``reward-server filter``: the paper's data engine (Mixed-R1 §3.1, "Dataset Filter").

Sample k responses per prompt from the base model, score them, and drop every prompt whose
responses all got the same reward: GRPO's advantage (r - mean) / std is zero for the whole group,
so such a prompt is too easy or too hard and costs compute for no gradient.

The rule, per group (a row holding a list of responses, or the rows sharing a group id):

* ``zero_variance`` exactly as the service reports it: ``summarise_group(..., tolerance)``, i.e.
  ``max(reward) - min(reward) <= tolerance`` (default: the service's ``zero_variance_tolerance``,
  1e-6). Dropped with the reason ``all_correct`` / ``all_wrong`` (every accuracy 1 / 0) or
  ``all_equal`` (otherwise, e.g. equal IoUs or identical captions).
* continuous task types (every non-binary family of the registry: ``grounding``, ``open_ended``,
  ``temporal_grounding``, ``ocr``, a plug-in's) are also dropped when the group's sample
  std (n-1) is ``<= min_std`` (default 0.01, reason ``low_std``): rewards that differ in the third
  decimal give GRPO noise, not signal. Binary task types use the zero-variance rule only.
* a group of one response (``single_response``) carries no signal either and is dropped.

Two passes over a scored file. The first keeps, per group of one-response rows, only running
statistics (:class:`GroupStats`: count, mean and squared deviations by Welford's method, min,
max, and whether every accuracy is 1 / 0): about 300 bytes per group including a short id,
nothing per response. A row holding a whole group is decided on the spot and nothing is kept for it. The
second pass re-reads the file, recomputes each prompt row's decision, looks up each group's, and
writes the kept rows in input order.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reward_server.errors import DataError
from reward_server.offline.defaults import DEFAULT_MIN_STD
from reward_server.offline.rows import FieldMap, RowError, dump_row, iter_rows
from reward_server.offline.scored import ScoredRow, read_scored
from reward_server.offline.sink import atomic_output, atomic_write_json, sidecar
from reward_server.offline.tasks import continuous_tasks, judged, task_order
from reward_server.rewards.groups import GroupSummary, summarise_group

REASONS = ("all_correct", "all_wrong", "all_equal", "low_std", "single_response")


def _reason(task: str, size: int, zero_variance: bool, std: float, all_correct: bool, all_wrong: bool,
            min_std: float) -> str:
    """The rule itself, on a group's statistics (shared by prompt rows and grouped rows)."""
    if size < 2:
        return "single_response"
    if zero_variance:
        if judged(task) and all_correct:
            return "all_correct"
        if judged(task) and all_wrong:
            return "all_wrong"
        return "all_equal"
    if task in continuous_tasks() and std <= min_std:
        return "low_std"
    return "kept"


def _accuracy_flags(accuracies: Sequence[float | None]) -> tuple[bool, bool]:
    """(every accuracy is 1, every accuracy is 0); both False when any accuracy is unknown."""
    if any(a is None for a in accuracies):
        return False, False
    known = [a for a in accuracies if a is not None]
    return all(a >= 1.0 - 1e-9 for a in known), all(a <= 1e-9 for a in known)


def decide(
    task: str,
    rewards: Sequence[float],
    accuracies: Sequence[float | None],
    tolerance: float,
    min_std: float,
    group_id: Hashable = None,
) -> tuple[str, GroupSummary]:
    """``"kept"`` or the reason to drop one group; see the module docstring for the rule."""
    summary = summarise_group(group_id, rewards, tolerance)
    ones, zeros = _accuracy_flags(accuracies)
    return _reason(task, summary.size, summary.zero_variance, summary.std, ones, zeros, min_std), summary


class GroupStats:
    """Running statistics of one group of one-response rows: what :func:`decide` needs, in O(1)
    memory. ``max - min`` is exact (the zero-variance rule); the std is Welford's sample std (n-1),
    equal to :func:`summarise_group`'s up to rounding in the last bits."""

    __slots__ = ("all_correct", "all_wrong", "m2", "max", "mean", "min", "n", "reason", "rows", "task")

    def __init__(self, task: str) -> None:
        self.task = task
        self.n = 0
        self.rows = 0
        self.mean = 0.0
        self.m2 = 0.0
        self.min = float("inf")
        self.max = float("-inf")
        self.all_correct = True
        self.all_wrong = True
        self.reason: str | None = None

    def add(self, rewards: Sequence[float], accuracies: Sequence[float | None]) -> None:
        self.rows += 1
        for r in rewards:
            self.n += 1
            delta = r - self.mean
            self.mean += delta / self.n
            self.m2 += delta * (r - self.mean)
            self.min = min(self.min, r)
            self.max = max(self.max, r)
        ones, zeros = _accuracy_flags(accuracies)
        self.all_correct = self.all_correct and ones
        self.all_wrong = self.all_wrong and zeros

    @property
    def std(self) -> float:
        return math.sqrt(max(self.m2, 0.0) / (self.n - 1)) if self.n > 1 else 0.0

    def decide(self, tolerance: float, min_std: float) -> str:
        zero = self.n > 0 and (self.max - self.min) <= tolerance
        return _reason(self.task, self.n, zero, self.std, self.all_correct, self.all_wrong, min_std)


@dataclass
class FilterJob:
    input: Path
    output: Path
    fields: FieldMap = field(default_factory=FieldMap)
    tolerance: float = 1e-6
    min_std: float = DEFAULT_MIN_STD
    skip_bad: bool = False
    write_dropped: bool = False
    overwrite: bool = False


@dataclass
class FilterSummary:
    payload: dict[str, Any]

    def table(self) -> str:
        """The human summary printed by the command."""
        p = self.payload
        t = p["totals"]
        lines = [
            (f"filter: kept {t['kept']} of {t['groups']} prompts ({t['responses_kept']} of "
            f"{t['responses_kept'] + t['responses_dropped']} responses, {t['rows_kept']} rows) -> {p['output']}"),
            (f"rule: drop zero-variance groups (max-min <= {p['rule']['tolerance']:g}); for "
            f"{', '.join(p['rule']['min_std_applies_to'])} also std <= {p['rule']['min_std']:g}"),
        ]
        header = ["task", "prompts", "kept", "dropped", *REASONS]
        rows = [header]
        for task, s in p["by_task"].items():
            rows.append([task, s["groups"], s["kept"], s["dropped"], *(s["reasons"][r] for r in REASONS)])
        rows.append(["total", t["groups"], t["kept"], t["dropped"], *(t["reasons"][r] for r in REASONS)])
        widths = [max(len(str(r[i])) for r in rows) for i in range(len(header))]
        for r in rows:
            lines.append("  ".join(str(v).rjust(w) if i else str(v).ljust(w) for i, (v, w) in enumerate(zip(r, widths))))
        if p["bad_rows"]:
            lines.append(f"skipped {p['bad_rows']} bad rows (--skip-bad)")
        return "\n".join(lines)


class FilterError(DataError):
    """A bad row without ``--skip-bad``; carries the :class:`RowError`."""

    def __init__(self, error: RowError) -> None:
        super().__init__(error.message)
        self.error = error


class _Bad:
    """Bad rows skipped with ``--skip-bad``: the count, the first error and the first 20 lines."""

    def __init__(self) -> None:
        self.count = 0
        self.first: RowError | None = None
        self.lines: list[int] = []

    def add(self, err: RowError) -> None:
        self.count += 1
        self.first = self.first or err
        if len(self.lines) < 20:
            self.lines.append(err.line)

    def payload(self) -> dict[str, Any]:
        first = self.first
        return {
            "bad_rows": self.count,
            "bad_lines_first": self.lines,
            "first_bad_row": {"line": first.line, "field": first.field, "message": first.message} if first else None,
        }


def _read(job: FilterJob, source: Any, bad: _Bad | None) -> ScoredRow | None:
    """The scored row, or None for a bad row skipped with ``--skip-bad`` (counted in ``bad``)."""
    try:
        scored = read_scored(source, job.fields)
        if not scored.multi and scored.group is None:
            raise RowError(
                source.line,
                job.fields.group,
                "missing: filter needs the group of each response (a group field, or a list of responses per row)",
            )
    except RowError as err:
        if not job.skip_bad:
            raise FilterError(err) from None
        if bad is not None:
            bad.add(err)
        return None
    return scored


def run_filter(job: FilterJob, scored_path: Path, extra: dict[str, Any] | None = None) -> FilterSummary:
    """Filter the scored rows of ``scored_path`` into ``job.output`` (+ ``.summary.json``)."""
    if job.output.exists() and not job.overwrite:
        raise FileExistsError(f"{job.output} already exists; pass --overwrite to replace it")
    bad = _Bad()
    groups: dict[Hashable, GroupStats] = {}  # one-response rows: running statistics per group
    by_task: dict[str, dict[str, Any]] = {}

    def tally(task: str, reason: str, rows: int, responses: int) -> None:
        s = by_task.setdefault(
            task,
            {"groups": 0, "kept": 0, "dropped": 0, "reasons": dict.fromkeys(REASONS, 0),
             "rows_kept": 0, "rows_dropped": 0, "responses_kept": 0, "responses_dropped": 0},
        )
        s["groups"] += 1
        kept = reason == "kept"
        s["kept" if kept else "dropped"] += 1
        if not kept:
            s["reasons"][reason] += 1
        s["rows_kept" if kept else "rows_dropped"] += rows
        s["responses_kept" if kept else "responses_dropped"] += responses

    for source in iter_rows(scored_path):  # pass 1: statistics per group
        scored = _read(job, source, bad)
        if scored is None:
            continue
        if scored.multi:  # a whole group in one row: decided now, recomputed in pass 2
            reason, _ = decide(scored.task, scored.rewards, scored.values["accuracy"], job.tolerance, job.min_std)
            tally(scored.task, reason, 1, len(scored.rewards))
        else:
            g = groups.get(scored.group)
            if g is None:
                g = groups[scored.group] = GroupStats(scored.task)
            g.add(scored.rewards, scored.values["accuracy"])
    for g in groups.values():
        g.reason = g.decide(job.tolerance, job.min_std)
        tally(g.task, g.reason, g.rows, g.n)

    dropped_path = sidecar(job.output, ".dropped.jsonl")

    with ExitStack() as stack:  # pass 2: kept rows, in input order; both files appear only if it completes
        out = stack.enter_context(atomic_output(job.output))
        dropped = stack.enter_context(atomic_output(dropped_path)) if job.write_dropped else None
        for source in iter_rows(scored_path):
            scored = _read(job, source, None)
            if scored is None:
                continue
            if scored.multi:
                reason, _ = decide(scored.task, scored.rewards, scored.values["accuracy"], job.tolerance, job.min_std)
            else:
                reason = groups[scored.group].reason or "kept"  # always set after pass 1
            if reason == "kept":
                out.write(dump_row(source.data))
            elif dropped is not None:
                dropped.write(dump_row({**source.data, "filter_reason": reason}))
    groups.clear()

    totals: dict[str, Any] = {"reasons": dict.fromkeys(REASONS, 0)}
    for s in by_task.values():
        for key, value in s.items():
            if key == "reasons":
                for r, n in value.items():
                    totals["reasons"][r] += n
            else:
                totals[key] = totals.get(key, 0) + value
    for key in ("groups", "kept", "dropped", "rows_kept", "rows_dropped", "responses_kept", "responses_dropped"):
        totals.setdefault(key, 0)
    payload = {
        "input": str(job.input),
        "scored_file": str(scored_path),
        "output": str(job.output),
        "dropped_file": str(dropped_path) if job.write_dropped else None,
        "rule": {
            "tolerance": job.tolerance,
            "min_std": job.min_std,
            "min_std_applies_to": continuous_tasks(),
            "std": "sample std (n-1), as GRPO normalises advantages",
        },
        "totals": totals,
        "by_task": {t: by_task[t] for t in task_order(by_task)},
        **bad.payload(),
        **(extra or {}),
    }
    atomic_write_json(sidecar(job.output, ".summary.json"), payload)
    return FilterSummary(payload)


__all__ = [
    "DEFAULT_MIN_STD", "FilterError", "FilterJob", "FilterSummary", "GroupStats", "decide", "run_filter",
]
