"""``reward-server filter``: the paper's data engine (Mixed-R1 §3.1, "Dataset Filter").

Sample k responses per prompt from the base model, score them, and drop every prompt whose
responses all got the same reward: GRPO's advantage (r - mean) / std is zero for the whole group,
so such a prompt is too easy or too hard and costs compute for no gradient.

The rule, per group (a row holding a list of responses, or the rows sharing a group id):

* ``zero_variance`` exactly as the service reports it: ``summarise_group(..., tolerance)``, i.e.
  ``max(reward) - min(reward) <= tolerance`` (default: the service's ``zero_variance_tolerance``,
  1e-6). Dropped with the reason ``all_correct`` / ``all_wrong`` (every accuracy 1 / 0) or
  ``all_equal`` (otherwise, e.g. equal IoUs or identical captions).
* continuous task types (``grounding``, ``open_ended``) are also dropped when the group's sample
  std (n-1) is ``<= min_std`` (default 0.01, reason ``low_std``): rewards that differ in the third
  decimal give GRPO noise, not signal. Binary task types use the zero-variance rule only.
* a group of one response (``single_response``) carries no signal either and is dropped.

Two passes over a scored file: the first collects each group's rewards (memory: one float per
response, never the text), the second writes the kept rows in input order.
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reward_server.offline.defaults import CONTINUOUS_TASKS, DEFAULT_MIN_STD
from reward_server.offline.rows import FieldMap, RowError, dump_row, iter_rows
from reward_server.offline.scored import ScoredRow, read_scored
from reward_server.offline.sink import atomic_output, atomic_write_json, sidecar
from reward_server.rewards.groups import GroupSummary, summarise_group

REASONS = ("all_correct", "all_wrong", "all_equal", "low_std", "single_response")


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
    if summary.size < 2:
        return "single_response", summary
    if summary.zero_variance:
        known = [a for a in accuracies if a is not None]
        if task != "open_ended" and len(known) == len(accuracies):
            if all(a >= 1.0 - 1e-9 for a in known):
                return "all_correct", summary
            if all(a <= 1e-9 for a in known):
                return "all_wrong", summary
        return "all_equal", summary
    if task in CONTINUOUS_TASKS and summary.std <= min_std:
        return "low_std", summary
    return "kept", summary


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
class _Group:
    task: str
    rewards: list[float] = field(default_factory=list)
    accuracies: list[float | None] = field(default_factory=list)
    rows: int = 0


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
            f"{', '.join(CONTINUOUS_TASKS)} also std <= {p['rule']['min_std']:g}"),
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


class FilterError(Exception):
    """A bad row without ``--skip-bad``; carries the :class:`RowError`."""

    def __init__(self, error: RowError) -> None:
        super().__init__(error.message)
        self.error = error


def _read(job: FilterJob, source: Any, bad: set[int]) -> ScoredRow | None:
    try:
        scored = read_scored(source, job.fields)
    except RowError as err:
        if not job.skip_bad:
            raise FilterError(err) from None
        bad.add(source.line)
        return None
    if not scored.multi and scored.group is None:
        err = RowError(
            source.line,
            job.fields.group,
            "missing: filter needs the group of each response (a group field, or a list of responses per row)",
        )
        if not job.skip_bad:
            raise FilterError(err)
        bad.add(source.line)
        return None
    return scored


def run_filter(job: FilterJob, scored_path: Path, extra: dict[str, Any] | None = None) -> FilterSummary:
    """Filter the scored rows of ``scored_path`` into ``job.output`` (+ ``.summary.json``)."""
    if job.output.exists() and not job.overwrite:
        raise FileExistsError(f"{job.output} already exists; pass --overwrite to replace it")
    bad: set[int] = set()
    groups: dict[Hashable, _Group] = {}
    row_decisions: dict[int, str] = {}  # multi rows: line -> decision (one entry per prompt row)
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

    for source in iter_rows(scored_path):  # pass 1: rewards per group
        scored = _read(job, source, bad)
        if scored is None:
            continue
        if scored.multi:
            reason, _ = decide(
                scored.task, scored.rewards, scored.values["accuracy"], job.tolerance, job.min_std, source.line
            )
            row_decisions[source.line] = reason
            tally(scored.task, reason, 1, len(scored.rewards))
        else:
            g = groups.setdefault(scored.group, _Group(scored.task))
            g.rewards.extend(scored.rewards)
            g.accuracies.extend(scored.values["accuracy"])
            g.rows += 1
    group_decisions: dict[Hashable, str] = {}
    for key, g in groups.items():
        reason, _ = decide(g.task, g.rewards, g.accuracies, job.tolerance, job.min_std, key)
        group_decisions[key] = reason
        tally(g.task, reason, g.rows, len(g.rewards))
    groups.clear()

    dropped_path = sidecar(job.output, ".dropped.jsonl")

    with ExitStack() as stack:  # pass 2: kept rows, in input order; both files appear only if it completes
        out = stack.enter_context(atomic_output(job.output))
        dropped = stack.enter_context(atomic_output(dropped_path)) if job.write_dropped else None
        for source in iter_rows(scored_path):
            if source.line in bad or source.data is None:
                continue
            if source.line in row_decisions:
                reason = row_decisions[source.line]
            else:
                reason = group_decisions[read_scored(source, job.fields).group]
            if reason == "kept":
                out.write(dump_row(source.data))
            elif dropped is not None:
                dropped.write(dump_row({**source.data, "filter_reason": reason}))

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
    order = ["yes_no", "mcq", "chart", "grounding", "open_ended"]
    payload = {
        "input": str(job.input),
        "scored_file": str(scored_path),
        "output": str(job.output),
        "dropped_file": str(dropped_path) if job.write_dropped else None,
        "rule": {
            "tolerance": job.tolerance,
            "min_std": job.min_std,
            "min_std_applies_to": list(CONTINUOUS_TASKS),
            "std": "sample std (n-1), as GRPO normalises advantages",
        },
        "totals": totals,
        "by_task": {t: by_task[t] for t in sorted(by_task, key=lambda t: order.index(t) if t in order else 99)},
        "bad_rows": len(bad),
        "bad_lines_first": sorted(bad)[:20],
        **(extra or {}),
    }
    atomic_write_json(sidecar(job.output, ".summary.json"), payload)
    return FilterSummary(payload)


def summary_json(summary: FilterSummary) -> str:
    return json.dumps(summary.payload, indent=2)


__all__ = ["CONTINUOUS_TASKS", "DEFAULT_MIN_STD", "FilterError", "FilterJob", "FilterSummary", "decide", "run_filter"]
