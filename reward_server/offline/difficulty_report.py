"""``reward-server report STATE.jsonl``: the difficulty distribution of a state export.

The export is ``GET /v1/prompts`` of a server run with ``--state-path``: one prompt per line with
``job``, ``prompt_id``, ``alpha``, ``beta``, ``n``, ``estimated_p``. The report says how many prompts are
tracked, how their estimated success probabilities are spread, and what share is *informative*
(estimated p in [0.1, 0.9]: a GRPO group there has reward variance most of the time), and plots
the histogram of estimated p with the informative band shaded. Writes ``DIFFICULTY.md``,
``difficulty.json`` and ``difficulty_p.png`` into the output directory.

State is kept per training job and one export holds one job; the report says which. Exports of
several jobs concatenated into one file are reported per job as well as together (the same prompt
id in two jobs is two posteriors, never merged). An export from before per-job state has no
``job`` field; its rows are reported without one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from reward_server.difficulty.store import INFORMATIVE_RANGE, summarise_means
from reward_server.errors import DataError
from reward_server.offline.sink import atomic_write_bytes, atomic_write_json

REQUIRED = ("prompt_id", "alpha", "beta", "n")
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


class ExportError(DataError):
    """A state export (GET /v1/prompts) that cannot be read."""


def looks_like_export(path: Path) -> bool:
    """True when the first non-blank line of ``path`` is a state-export row (not a scored row)."""
    if path.suffix not in (".jsonl", ".json", ".ndjson"):
        return False
    with path.open("rb") as f:
        for line in f:
            if line.strip():
                try:
                    row = json.loads(line)
                except ValueError:
                    return False
                return isinstance(row, dict) and all(k in row for k in REQUIRED) and "response" not in row
    return False


def read_export(path: Path) -> list[dict[str, Any]]:
    rows = []
    with path.open("rb") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise ExportError(f"{path}:{number}: not JSON ({exc})") from exc
            missing = [k for k in REQUIRED if not isinstance(row, dict) or k not in row]
            if missing:
                raise ExportError(f"{path}:{number}: a state-export row needs {missing}")
            alpha, beta = float(row["alpha"]), float(row["beta"])
            if not (alpha > 0 and beta > 0 and np.isfinite(alpha) and np.isfinite(beta)):
                raise ExportError(f"{path}:{number}: alpha and beta must be finite and > 0")
            rows.append(row)
    return rows


def _estimated_p(rows: list[dict[str, Any]]) -> np.ndarray:
    return np.array([float(r["alpha"]) / (float(r["alpha"]) + float(r["beta"])) for r in rows])


def summarise_rows(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Prompts, rollouts, informative share, and the spread of estimated p of some export rows."""
    p = _estimated_p(rows)
    n = np.array([int(r["n"]) for r in rows])
    summary = summarise_means(p.tolist())
    return {
        "prompts": len(rows),
        "observations": int(n.sum()),
        "informative_share": summary["informative_share"],
        "estimated_p_buckets": {f"({i / 10:.1f}, {(i + 1) / 10:.1f}]": c for i, c in enumerate(summary["buckets"])},
        "estimated_p_quantiles": {str(q): float(np.quantile(p, q)) for q in QUANTILES} if p.size else {},
        "observations_per_prompt_quantiles": {str(q): float(np.quantile(n, q)) for q in QUANTILES} if n.size else {},
    }


def by_job(rows: list[dict[str, Any]]) -> dict[str | None, list[dict[str, Any]]]:
    """Rows per job, jobs sorted (None: rows without a ``job`` field, an export from before jobs)."""
    groups: dict[str | None, list[dict[str, Any]]] = {}
    for row in rows:
        job = row.get("job")
        groups.setdefault(None if job is None else str(job), []).append(row)
    return dict(sorted(groups.items(), key=lambda item: (item[0] is not None, item[0] or "")))


def difficulty_report(path: Path, out_dir: Path, plots: bool = True) -> dict[str, Any]:
    rows = read_export(path)
    groups = by_job(rows)
    named = [job for job in groups if job is not None]
    payload: dict[str, Any] = {
        "input": str(path),
        "jobs": named,  # [] for an export from before per-job state
        **summarise_rows(rows),
        "informative_range": list(INFORMATIVE_RANGE),
        "plots": [],
    }
    if len(groups) > 1:  # several jobs in one file: each on its own as well (never merged per prompt)
        payload["by_job"] = {("(no job)" if job is None else job): summarise_rows(part) for job, part in groups.items()}
    out_dir.mkdir(parents=True, exist_ok=True)
    if plots:
        per_job = {("(no job)" if job is None else job): _estimated_p(part) for job, part in groups.items()}
        payload["plots"].append(plot_p(per_job, out_dir / "difficulty_p.png", path.name))
    atomic_write_json(out_dir / "difficulty.json", payload)
    atomic_write_bytes(out_dir / "DIFFICULTY.md", render(payload).encode())
    return payload


def plot_p(per_job: dict[str, np.ndarray], target: Path, source: str) -> str:
    """Histogram of estimated p: filled for one job, one outline per job for several."""
    from reward_server.offline.plots import _pyplot, _save

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    lo, hi = INFORMATIVE_RANGE
    ax.axvspan(lo, hi, color="tab:green", alpha=0.12, label=f"informative [{lo}, {hi}]")
    bins = np.linspace(0, 1, 41)
    if len(per_job) == 1:
        ax.hist(next(iter(per_job.values())), bins=bins, color="tab:blue", edgecolor="black", linewidth=0.3)
    else:
        for job, p in per_job.items():
            ax.hist(p, bins=bins, histtype="step", linewidth=1.5, label=f"job {job}")
    p = np.concatenate(list(per_job.values())) if per_job else np.array([])
    ax.set_xlim(0, 1)
    ax.set_xlabel("estimated success probability (posterior mean)")
    ax.set_ylabel("prompts")
    ax.legend(loc="upper center")
    ax.grid(axis="y", alpha=0.3)
    _save(fig, target, f"Prompt difficulty: {source} ({p.size:,} prompts)", ["estimated_p"])
    return target.name


def render(payload: dict[str, Any]) -> str:
    jobs = payload.get("jobs", [])
    if "by_job" in payload:
        whose = f" ({len(payload['by_job'])} jobs)"
    else:
        whose = f" (job {jobs[0]})" if jobs else ""
    lines = [
        f"# Prompt difficulty: {payload['input']}{whose}", "",
        (f"{payload['prompts']:,} prompts tracked, {payload['observations']:,} rollouts observed; "
         f"{payload['informative_share']:.1%} informative (estimated p in "
         f"[{payload['informative_range'][0]}, {payload['informative_range'][1]}])."), "",
        "| estimated p | prompts |", "|---|---:|",
        *[f"| {bucket} | {count:,} |" for bucket, count in payload["estimated_p_buckets"].items()], "",
    ]
    if payload["estimated_p_quantiles"]:
        qs = ", ".join(f"q{float(q) * 100:g}={v:.3f}" for q, v in payload["estimated_p_quantiles"].items())
        lines += [f"Quantiles of estimated p: {qs}.", ""]
    if "by_job" in payload:
        lines += ["Per job (each job's posteriors are its own; a prompt id in two jobs is two prompts):", "",
                  "| job | prompts | rollouts | informative | median estimated p |", "|---|---:|---:|---:|---:|"]
        for job, part in payload["by_job"].items():
            median = part["estimated_p_quantiles"].get("0.5")
            lines.append(f"| {job} | {part['prompts']:,} | {part['observations']:,} | "
                         f"{part['informative_share']:.1%} | {'' if median is None else f'{median:.3f}'} |")
        lines.append("")
    lines += [f"![estimated p]({name})" for name in payload["plots"]]
    return "\n".join(lines) + "\n"
