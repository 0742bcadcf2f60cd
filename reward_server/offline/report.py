"""``reward-server report``: a human summary of a scored file, before GPU hours are spent on it.

Streams the scored rows once. Memory: the exact quantiles and the plots need every component
value, so it keeps 8 bytes per response and component present (24 bytes per response; 40 for
open-ended rows, which add the two BMAS directions), plus per group of one-response rows only
running statistics (:class:`~reward_server.offline.filter.GroupStats`, ~300 bytes with its id)
and 8 bytes per group for its std. Computing quantiles and plots briefly copies one array at a
time. Never the texts. It writes into one directory:

* ``REPORT.md``: per task type and component the count, mean, std and quantiles; per task type
  the number of GRPO groups and the fraction with zero variance; warnings for patterns that mean
  a broken configuration; the plots inline.
* ``report.json``: the same numbers for scripts.
* ``rewards_by_task.png``, ``components_by_task.png``, ``group_std.png`` (see :mod:`.plots`).
"""

from __future__ import annotations

import json
from array import array
from collections.abc import Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from reward_server.errors import DataError, MissingExtra
from reward_server.offline.defaults import DEFAULT_MIN_STD
from reward_server.offline.filter import GroupStats
from reward_server.offline.rows import FieldMap, RowError, iter_rows
from reward_server.offline.scored import COMPONENTS, read_scored
from reward_server.offline.sink import atomic_write_bytes, atomic_write_json, sidecar
from reward_server.offline.tasks import continuous_tasks, judged, task_order
from reward_server.rewards.groups import summarise_group

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
PLOT_COMPONENTS = ("reward", "accuracy", "format")


def check_plotting() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise MissingExtra(
            "report: the plots need matplotlib, which is not installed: "
            "pip install \"mixed-reward[offline]\", or pass --no-plots for the statistics only"
        ) from None


class ReportError(DataError):
    def __init__(self, error: RowError) -> None:
        super().__init__(error.message)
        self.error = error


@dataclass
class ReportJob:
    input: Path
    out_dir: Path
    fields: FieldMap = field(default_factory=FieldMap)
    tolerance: float = 1e-6
    min_std: float = DEFAULT_MIN_STD
    skip_bad: bool = False
    plots: bool = True


def describe(values: np.ndarray) -> dict[str, float | int | None]:
    """count, mean, std (population), min, p5..p95, max; None-valued when empty."""
    if values.size == 0:
        return {"count": 0, "mean": None, "std": None, "min": None, **{f"p{int(q * 100):02d}": None for q in QUANTILES}, "max": None}
    qs = np.quantile(values, QUANTILES)
    return {
        "count": int(values.size),
        "mean": float(values.mean()),
        "std": float(values.std()),
        "min": float(values.min()),
        **{f"p{int(q * 100):02d}": float(v) for q, v in zip(QUANTILES, qs)},
        "max": float(values.max()),
    }


def _ordered(tasks: Any) -> list[str]:
    return task_order(tasks)


def collect(
    job: ReportJob,
) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, dict[str, Any]], dict[str, Any]]:
    """One pass: component values per task, group summaries per task, row counts (with where the
    first bad rows are, when ``skip_bad``)."""
    values: dict[str, dict[str, array]] = {}
    open_groups: dict[Hashable, GroupStats] = {}  # one-response rows: running statistics per group id
    group_std: dict[str, array] = {}
    zero: dict[str, int] = {}
    singletons: dict[str, int] = {}
    counts: dict[str, Any] = {"rows": 0, "responses": 0, "bad_rows": 0, "rows_without_group": 0,
                              "bad_lines_first": [], "first_bad_row": None}

    def add_group(task: str, size: int, std: float, zero_variance: bool) -> None:
        if size < 2:
            singletons[task] = singletons.get(task, 0) + 1
            return
        group_std.setdefault(task, array("d")).append(std)
        zero[task] = zero.get(task, 0) + int(zero_variance)

    for source in iter_rows(job.input):
        try:
            scored = read_scored(source, job.fields)
        except RowError as err:
            if not job.skip_bad:
                raise ReportError(err) from None
            counts["bad_rows"] += 1
            if counts["first_bad_row"] is None:
                counts["first_bad_row"] = {"line": err.line, "field": err.field, "message": err.message}
            if len(counts["bad_lines_first"]) < 20:
                counts["bad_lines_first"].append(err.line)
            continue
        counts["rows"] += 1
        counts["responses"] += len(scored.values["reward"])
        per_task = values.setdefault(scored.task, {name: array("d") for name in COMPONENTS})
        for name in COMPONENTS:
            per_task[name].extend(v for v in scored.values[name] if v is not None)
        if scored.multi:
            s = summarise_group(None, scored.rewards, job.tolerance)
            add_group(scored.task, s.size, s.std, s.zero_variance)
        elif scored.group is not None:
            g = open_groups.get(scored.group)
            if g is None:
                g = open_groups[scored.group] = GroupStats(scored.task)
            g.add(scored.rewards, scored.values["accuracy"])
        else:
            counts["rows_without_group"] += 1
    for g in open_groups.values():
        add_group(g.task, g.n, g.std, g.n > 0 and g.max - g.min <= job.tolerance)
    open_groups.clear()
    arrays = {t: {n: np.frombuffer(a, dtype=np.float64) if len(a) else np.zeros(0) for n, a in values[t].items()}
              for t in _ordered(values)}
    groups = {}
    for task in arrays:
        stds = np.frombuffer(group_std[task], dtype=np.float64) if task in group_std and len(group_std[task]) else np.zeros(0)
        groups[task] = {
            "stds": stds,
            "count": int(stds.size),
            "zero_variance": zero.get(task, 0),
            "singletons": singletons.get(task, 0),
        }
    return arrays, groups, counts


def warnings_for(arrays: dict[str, dict[str, np.ndarray]], groups: dict[str, dict[str, Any]]) -> list[str]:
    """Patterns that almost always mean a wrong field mapping, task type or weight, not a bad model."""
    out = []
    for task, comps in arrays.items():
        rewards, acc, fmt = comps["reward"], comps["accuracy"], comps["format"]
        if rewards.size >= 2 and np.ptp(rewards) == 0:
            out.append(f"{task}: every reward is {rewards[0]:g}: the reward carries no information")
        if judged(task) and acc.size >= 10 and acc.max() == 0:
            out.append(f"{task}: accuracy is 0 for all {acc.size:,} responses: check --ground-truth-field, "
                       "--response-field and the task type")
        if judged(task) and acc.size >= 10 and acc.min() >= 1:
            out.append(f"{task}: accuracy is 1 for all {acc.size:,} responses: is the ground truth leaking into the response?")
        if fmt.size >= 10 and fmt.max() == 0:
            out.append(f"{task}: no response passes the format check (<think>...</think><answer>...</answer>): "
                       "check the prompt template, or set --format-weight 0")
        g = groups.get(task)
        if g and g["count"] >= 10 and g["zero_variance"] / g["count"] > 0.9:
            out.append(f"{task}: {g['zero_variance'] / g['count']:.0%} of groups have zero variance: "
                       "almost no GRPO signal (see `reward-server filter`)")
    return out


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.4g}"


def render_markdown(payload: dict[str, Any]) -> str:
    lines = [f"# Reward report: `{payload['input']}`", ""]
    c = payload["counts"]
    lines.append(
        f"{c['rows']:,} rows, {c['responses']:,} responses"
        + (f", {c['bad_rows']:,} bad rows skipped" if c["bad_rows"] else "")
        + (f", {c['rows_without_group']:,} rows without a group" if c["rows_without_group"] else "")
        + "."
    )
    if c["bad_rows"] and c.get("first_bad_row"):
        first = c["first_bad_row"]
        more = ", ..." if c["bad_rows"] > len(c["bad_lines_first"]) else ""
        lines.append(
            f"First bad row: line {first['line']}, field `{first['field']}`: {first['message']}. "
            f"Bad lines: {', '.join(str(n) for n in c['bad_lines_first'])}{more}."
        )
    if payload.get("scored_with"):
        s = payload["scored_with"]
        lines.append(f"Scored with table `{(s.get('scorer') or {}).get('table_source')}` "
                     f"(hash `{(s.get('scorer') or {}).get('table_hash')}`), options `{json.dumps(s.get('options'))}`.")
    lines.append("")
    if payload["warnings"]:
        lines += ["## Warnings", ""] + [f"- **{w}**" for w in payload["warnings"]] + [""]
    lines += [
        "## GRPO groups",
        "",
        (f"Zero variance: rewards span at most {payload['tolerance']:g} (the service's rule); "
        "std is the sample std (n-1). Groups of one response are listed apart."),
        "",
        "| task | groups | zero-variance | fraction | single-response | median std |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for task, g in payload["tasks"].items():
        gr = g["groups"]
        frac = f"{gr['zero_variance_fraction']:.1%}" if gr["zero_variance_fraction"] is not None else "-"
        lines.append(f"| {task} | {gr['count']:,} | {gr['zero_variance']:,} | {frac} | {gr['singletons']:,} | "
                     f"{_fmt(gr['std']['p50'])} |")
    lines.append("")
    keys = ["count", "mean", "std", "min", *(f"p{int(q * 100):02d}" for q in QUANTILES), "max"]
    for name in COMPONENTS:
        rows = [(t, g["components"][name]) for t, g in payload["tasks"].items() if g["components"][name]["count"]]
        if not rows:
            continue
        lines += [f"## {name}", "", "| task | " + " | ".join(keys) + " |", "|---|" + "---:|" * len(keys)]
        lines += [f"| {t} | " + " | ".join(_fmt(s[k]) for k in keys) + " |" for t, s in rows]
        lines.append("")
    if payload["plots"]:
        lines += ["## Plots", ""]
        for name, plot in payload["plots"].items():
            lines += [f"![{name}]({plot['path']})", ""]
    return "\n".join(lines)


def run_report(job: ReportJob) -> dict[str, Any]:
    """Collect, write ``REPORT.md``/``report.json`` and the PNGs into ``job.out_dir``; return the payload.
    Raises :class:`MissingExtra` (plots without matplotlib) before reading or writing anything."""
    if job.plots:
        check_plotting()
    arrays, groups, counts = collect(job)
    tasks: dict[str, Any] = {}
    for task, comps in arrays.items():
        g = groups[task]
        tasks[task] = {
            "responses": int(comps["reward"].size),
            "components": {name: describe(comps[name]) for name in COMPONENTS},
            "groups": {
                "count": g["count"],
                "zero_variance": g["zero_variance"],
                "zero_variance_fraction": g["zero_variance"] / g["count"] if g["count"] else None,
                "singletons": g["singletons"],
                "std": describe(g["stds"]),
            },
        }
    meta_path = sidecar(job.input, ".meta.json")
    scored_with = None
    if meta_path.exists():
        try:
            scored_with = json.loads(meta_path.read_text())
            scored_with.pop("fingerprint", None)
        except (OSError, ValueError):
            scored_with = None
    job.out_dir.mkdir(parents=True, exist_ok=True)
    plots: dict[str, Any] = {}
    if job.plots and arrays:
        from reward_server.offline import plots as p

        source = job.input.name
        plots["rewards_by_task"] = p.plot_rewards(
            {t: c["reward"] for t, c in arrays.items()}, job.out_dir / "rewards_by_task.png", source
        )
        plots["components_by_task"] = p.plot_components(
            arrays, PLOT_COMPONENTS, job.out_dir / "components_by_task.png", source
        )
        plots["group_std"] = p.plot_group_std(
            {t: g["stds"] for t, g in groups.items()},
            {t: g["zero_variance"] for t, g in groups.items()},
            job.min_std,
            continuous_tasks(),
            job.out_dir / "group_std.png",
            source,
        )
    payload = {
        "input": str(job.input),
        "counts": counts,
        "tolerance": job.tolerance,
        "min_std": job.min_std,
        "tasks": tasks,
        "warnings": warnings_for(arrays, groups),
        "plots": plots,
        "scored_with": scored_with,
    }
    atomic_write_json(job.out_dir / "report.json", payload)
    atomic_write_bytes(job.out_dir / "REPORT.md", render_markdown(payload).encode("utf-8"))
    return payload


__all__ = ["MissingExtra", "ReportError", "ReportJob", "collect", "describe", "render_markdown", "run_report"]
