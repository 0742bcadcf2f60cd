"""``reward-server idf DATASET -o FILE``: the robust profile's token weights, from a training set.

Every row's ground truth (unwrapped to its answer span, as the service reads it) is a document;
rows whose task type is not open-ended are skipped, since only the open-ended reward uses the
weights, and a row without a task type counts (a caption file often has none). Repeated truths
count once (see :func:`reward_server.engine.idf.count_documents`). Tokenized with the policy's own
tokenizer, the one the service will serve.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reward_server.engine.idf import IdfTable, count_documents, tokenizer_hash
from reward_server.errors import ItemFieldError
from reward_server.offline.rows import MISSING, FieldMap, RowError, get_field, iter_rows, progress_total
from reward_server.offline.tasks import families
from reward_server.rewards.family import Runs
from reward_server.rewards.spans import answer_span


@dataclass
class IdfJob:
    input: Path
    output: Path
    fields: FieldMap
    model_path: str | None = None
    skip_bad: bool = False
    progress: bool | None = None  # None: a bar only when stderr is a terminal


@dataclass
class IdfSummary:
    rows: int = 0
    documents: int = 0
    skipped_tasks: dict[str, int] = field(default_factory=dict)
    bad_rows: int = 0
    tokens: int = 0

    def describe(self, job: IdfJob) -> str:
        head = (f"idf: {self.documents:,} distinct ground truths from {self.rows:,} rows, "
                f"{self.tokens:,} distinct tokens -> {job.output}")
        lines = [head]
        for task, count in sorted(self.skipped_tasks.items()):
            lines.append(f"  skipped {count:,} {task} rows (only open-ended truths are documents)")
        if self.bad_rows:
            lines.append(f"  skipped {self.bad_rows:,} bad rows")
        return "\n".join(lines)


def _truth_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _documents(job: IdfJob, summary: IdfSummary, bar: Any) -> Iterator[str]:
    """The answer span of each open-ended row's ground truth; raises RowError on a bad row."""
    position = 0
    for source in iter_rows(job.input):
        if bar is not None:
            bar.update(source.position - position)
            position = source.position
        summary.rows += 1
        try:
            if source.data is None:
                assert source.error is not None
                raise source.error
            data = source.data
            truth = get_field(data, job.fields.ground_truth)
            if truth is MISSING or truth is None:
                raise RowError(source.line, job.fields.ground_truth, "missing: every row needs a ground truth")
            task_value = get_field(data, job.fields.task_type)
            if task_value is MISSING or task_value is None:
                task_value = job.fields.default_task_type
            if task_value is not None:
                try:
                    task = families().resolve(str(task_value))
                except ItemFieldError as exc:
                    raise RowError(source.line, job.fields.task_type, exc.message) from exc
                if task.runs is not Runs.TABLE:  # only the table-scored (open-ended) truths weigh tokens
                    summary.skipped_tasks[task.name] = summary.skipped_tasks.get(task.name, 0) + 1
                    continue
        except RowError:
            if not job.skip_bad:
                raise
            summary.bad_rows += 1
            continue
        text = answer_span(_truth_text(truth))
        if text:
            yield text


def _bar(job: IdfJob) -> Any:
    enabled = sys.stderr.isatty() if job.progress is None else job.progress
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        if job.progress:
            print("reward-server: no progress bar: tqdm is not installed (pip install 'mixed-reward[offline]')",
                  file=sys.stderr)
        return None
    total, unit = progress_total(job.input)
    if unit != "B":  # Parquet positions are row indices
        return tqdm(total=total, unit="rows", desc="idf", file=sys.stderr, dynamic_ncols=True)
    return tqdm(total=total, unit="B", unit_scale=True, desc="idf", file=sys.stderr, dynamic_ncols=True)


def run_idf(job: IdfJob) -> IdfSummary:
    """Count document frequencies over ``job.input`` and write the idf file."""
    from reward_server.offline.backends import _cached_table

    table = _cached_table(job.model_path, None, None)
    summary = IdfSummary()
    bar = _bar(job)
    try:
        documents, df = count_documents(_documents(job, summary, bar), table.tokenizer)
    finally:
        if bar is not None:
            bar.close()
    if documents == 0:
        raise ValueError(
            f"{job.input}: no open-ended ground truths ({summary.rows} rows read); "
            "pass --task-type open_ended for a file without task types"
        )
    summary.documents = documents
    summary.tokens = len(df)
    IdfTable(
        documents=documents, df=df, tokenizer_hash=tokenizer_hash(table.tokenizer), tokenizer_source=table.source
    ).save(job.output)
    return summary


__all__ = ["IdfJob", "IdfSummary", "run_idf"]
