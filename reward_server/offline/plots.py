"""PNG plots for ``reward-server report``: what a broken reward configuration looks like at a glance.

* ``rewards_by_task.png``: one reward histogram per task type. A healthy run shows spread; a
  broken one shows a single spike (every mcq reward 0: wrong ground-truth field; every reward
  exactly 1.0 more than accuracy: the format weight is doing all the work).
* ``components_by_task.png``: one row per task type, one column per component (reward,
  accuracy, format), so a component that never fires stands out.
* ``group_std.png``: per task type, the distribution of each GRPO group's reward std; the bar at
  0 is the share of prompts with no learning signal (what ``filter`` drops).

Every figure records its panel titles in the PNG's ``Description`` text chunk (JSON), so tests and
scripts can check what was drawn without image recognition.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from reward_server.offline.tasks import accuracy_label, families

#: Colours in the registry's order (seaborn "deep", then "muted"): the same family, the same colour.
PALETTE = ("#4C72B0", "#DD8452", "#55A868", "#937860", "#8172B3", "#C44E52", "#DA8BC3", "#8C8C8C", "#CCB974",
           "#64B5CD", "#4878D0", "#EE854A")


def task_color(task: str) -> str:
    names = families().names()
    return PALETTE[names.index(task) % len(PALETTE)] if task in names else "#555555"

DEGENERATE = "#B00020"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)  # files only, never a window; works without a display
    import matplotlib.pyplot as plt

    return plt


def _grid(n: int, max_cols: int = 3) -> tuple[int, int]:
    cols = min(max_cols, max(1, n))
    return math.ceil(max(1, n) / cols), cols


def _histogram(ax, values: np.ndarray, color: str, xlabel: str, ylabel: str) -> bool:
    """Discrete values get labelled bars (binary rewards read as 'how many 0, 1, 2'); continuous
    values a 40-bin histogram. Returns True when every value is the same (drawn in red)."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    if values.size == 0:
        ax.text(0.5, 0.5, "no values", ha="center", va="center", transform=ax.transAxes, color="gray")
        return False
    unique, counts = np.unique(np.round(values, 9), return_counts=True)
    degenerate = unique.size == 1
    if unique.size <= 12:
        span = float(unique[-1] - unique[0]) if unique.size > 1 else 1.0
        gaps = np.diff(unique) if unique.size > 1 else np.array([span])
        width = float(min(gaps.min() * 0.8, span * 0.15)) or 0.5
        bars = ax.bar(unique, counts, width=width, color=DEGENERATE if degenerate else color, edgecolor="black", linewidth=0.5)
        ax.bar_label(bars, labels=[f"{c:,}" for c in counts], fontsize=8, padding=2)
        ax.set_xticks(unique, [f"{u:g}" for u in unique], fontsize=8)
        ax.set_ylim(0, counts.max() * 1.18)
        if unique.size == 1:
            ax.set_xlim(unique[0] - 1, unique[0] + 1)
    else:
        ax.hist(values, bins=40, color=color, edgecolor="black", linewidth=0.3)
    if degenerate:
        ax.text(
            0.5, 0.88, f"all {values.size:,} values = {unique[0]:g}", ha="center", transform=ax.transAxes,
            color=DEGENERATE, fontsize=9, fontweight="bold",
        )
    return degenerate


def _save(fig, path: Path, title: str, panels: list[str]) -> dict[str, object]:
    """Save atomically (temporary name, then rename) with the panel list in the PNG metadata."""
    from reward_server.offline.sink import atomic_output

    fig.suptitle(title, fontsize=12, fontweight="bold")
    meta = {"Title": title, "Description": json.dumps({"panels": panels}), "Software": "reward-server report"}
    with atomic_output(path) as f:
        fig.savefig(f, format="png", dpi=100, metadata=meta)
    _pyplot().close(fig)
    return {"path": path.name, "panels": panels}


def _stats_line(values: np.ndarray) -> str:
    if values.size == 0:
        return "n=0"
    return f"n={values.size:,}  mean={values.mean():.3f}  std={values.std():.3f}"


def plot_rewards(rewards: Mapping[str, np.ndarray], path: Path, source: str) -> dict[str, object]:
    """One reward-histogram panel per task type."""
    plt = _pyplot()
    tasks = list(rewards)
    rows, cols = _grid(len(tasks))
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.9 * rows), squeeze=False, layout="constrained")
    panels = []
    for i, ax in enumerate(axes.flat):
        if i >= len(tasks):
            ax.remove()
            continue
        task = tasks[i]
        values = rewards[task]
        bad = _histogram(ax, values, task_color(task), "reward", "responses")
        ax.set_title(f"{task}\n{_stats_line(values)}", fontsize=10, color=DEGENERATE if bad else "black")
        panels.append(task)
    return _save(fig, path, f"Reward per task type: {source}", panels)


def plot_components(
    components: Mapping[str, Mapping[str, np.ndarray]], names: Sequence[str], path: Path, source: str
) -> dict[str, object]:
    """A task-type x component grid of histograms."""
    plt = _pyplot()
    tasks = list(components)
    fig, axes = plt.subplots(
        max(1, len(tasks)), len(names), figsize=(4.3 * len(names), 3.0 * max(1, len(tasks))), squeeze=False, layout="constrained"
    )
    panels = []
    for r, task in enumerate(tasks):
        for c, name in enumerate(names):
            ax = axes[r][c]
            values = components[task].get(name, np.zeros(0))
            label = accuracy_label(task) if name == "accuracy" else name
            bad = _histogram(ax, values, task_color(task), label, "responses")
            ax.set_title(f"{task} / {label}\n{_stats_line(values)}", fontsize=9, color=DEGENERATE if bad else "black")
            panels.append(f"{task}/{name}")
    return _save(fig, path, f"Reward components per task type: {source}", panels)


def plot_group_std(
    stds: Mapping[str, np.ndarray],
    zero_variance: Mapping[str, int],
    min_std: float | None,
    continuous: Sequence[str],
    path: Path,
    source: str,
) -> dict[str, object]:
    """One panel per task type: the distribution of group reward std, zero-variance share in the title."""
    plt = _pyplot()
    tasks = list(stds)
    rows, cols = _grid(len(tasks))
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.9 * rows), squeeze=False, layout="constrained")
    panels = []
    for i, ax in enumerate(axes.flat):
        if i >= len(tasks):
            ax.remove()
            continue
        task = tasks[i]
        values = stds[task]
        ax.set_xlabel("group reward std (n-1)")
        ax.set_ylabel("groups (prompts)")
        ax.grid(axis="y", alpha=0.3)
        if values.size == 0:
            ax.text(0.5, 0.5, "no groups of 2+ responses\n(no group field?)", ha="center", va="center",
                    transform=ax.transAxes, color="gray")
            ax.set_title(task, fontsize=10)
        else:
            zero = zero_variance.get(task, 0)
            top = max(float(values.max()), 1e-3)
            bins = np.linspace(0.0, top * 1.02, 31)
            ax.hist(values, bins=bins, color=task_color(task), edgecolor="black", linewidth=0.3)
            if zero:
                ax.bar([0.0], [zero], width=bins[1] - bins[0], align="edge", color=DEGENERATE, edgecolor="black",
                       linewidth=0.3, label=f"zero variance: {zero:,}")
                ax.legend(fontsize=8, loc="upper right")
            if min_std and task in continuous:
                ax.axvline(min_std, color="black", linestyle="--", linewidth=1)
                ax.text(min_std, ax.get_ylim()[1] * 0.95, f" min std {min_std:g}", fontsize=8, va="top")
            share = zero / values.size
            ax.set_title(
                f"{task}\n{values.size:,} groups, zero-variance {zero:,} ({share:.0%})",
                fontsize=10, color=DEGENERATE if share > 0.9 else "black",
            )
        panels.append(task)
    return _save(fig, path, f"GRPO group reward std per task type: {source}", panels)


__all__ = ["plot_components", "plot_group_std", "plot_rewards"]
