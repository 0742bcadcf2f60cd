"""``reward-server score``: a rollout file in, the same rows with their reward components out.

The input is streamed; rows are validated one by one (with their line numbers), gathered into
batches of about ``batch_size`` responses, scored, and appended to the output in input order.
Memory is bounded by one batch, whatever the file size. Each batch is a checkpoint (see
:mod:`reward_server.offline.sink`), so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reward_server.errors import DataError
from reward_server.items.settings import Settings
from reward_server.offline.backends import ItemsRejected, Scorer
from reward_server.offline.defaults import DEFAULT_BATCH_SIZE
from reward_server.offline.rows import (
    MISSING,
    PLURAL,
    TASK_OUTPUT_FIELD,
    FieldMap,
    ParsedRow,
    RowError,
    dump_row,
    get_field,
    input_identity,
    iter_rows,
    offline_settings,
    parse_row,
    progress_total,
    raw_text,
)
from reward_server.offline.sink import ResumableSink
from reward_server.rewards.options import ResolvedOptions
from reward_server.rewards.scoring import ItemReward


class BadRowStop(DataError):
    """The first bad row of a run without ``--skip-bad``; rows before it are scored and kept."""

    def __init__(self, error: RowError, done_rows: int) -> None:
        super().__init__(error.message)
        self.error = error
        self.done_rows = done_rows


@dataclass
class ScoreJob:
    input: Path
    output: Path
    fields: FieldMap = field(default_factory=FieldMap)
    options: ResolvedOptions = field(default_factory=ResolvedOptions)
    settings: Settings = field(default_factory=Settings)
    batch_size: int = DEFAULT_BATCH_SIZE
    skip_bad: bool = False
    restart: bool = False
    overwrite: bool = False
    progress: bool | None = None  # None: a bar only when stderr is a terminal
    output_fields: tuple[str, ...] | None = None  # None: keep every input field

    def fingerprint(self, scorer: Scorer) -> dict[str, Any]:
        """What must match for a resume: the input's content, the mapping, the options, the table.
        Not the batch size (scores do not depend on batching), not the mode (local or --url)."""
        return {
            "input": input_identity(self.input),
            "fields": self.fields.describe(),
            "options": {"format_weight": self.options.format_weight, "bmas_reduction": self.options.bmas_reduction,
                        "profile": self.options.profile},
            "table": scorer.identity().get("table_hash"),
            # robust scores depend on the token weights too (mixed-r1 ignores them)
            "idf": scorer.identity().get("idf_hash") if self.options.profile == "robust" else None,
            "max_chars_per_text": self.settings.max_chars_per_text,
            "output_fields": list(self.output_fields) if self.output_fields else None,
        }


@dataclass
class ScoreResult:
    output: Path
    rows: int
    items: int
    rejected: int
    resumed: bool
    already_done: bool
    by_task: dict[str, dict[str, float]]
    rejected_path: Path | None
    seconds: float


def output_row(parsed: ParsedRow, scores: list[ItemReward], output_fields: tuple[str, ...] | None) -> dict[str, Any]:
    """The input row (or the chosen fields) followed by the canonical task type and every component."""
    data = parsed.source.data or {}
    if output_fields:
        row = {name: value for name in output_fields if (value := get_field(data, name)) is not MISSING}
    else:
        row = dict(data)
    row[TASK_OUTPUT_FIELD] = parsed.task.name
    names = [*PLURAL, *(name for name in parsed.task.sub_scores if name not in PLURAL)]

    def value(score: ItemReward, name: str) -> float | None:
        return getattr(score, name) if name in ("reward", "accuracy", "format") else score.sub_scores.get(name)

    if parsed.multi:
        for name in names:
            row[PLURAL.get(name, name + "s")] = [value(s, name) for s in scores]
    else:
        for name in names:
            row[name] = value(scores[0], name)
    if any(s.timed_out for s in scores):  # a pooled family's scorer overran its deadline: scored 0
        row["timed_out"] = [s.timed_out for s in scores] if parsed.multi else True
    return row



def _bar(job: ScoreJob, initial: int) -> Any:
    enabled = sys.stderr.isatty() if job.progress is None else job.progress
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # the optional `offline` extra; scoring does not need it
        if job.progress:
            print("reward-server: no progress bar: tqdm is not installed (pip install 'mixed-reward[offline]')",
                  file=sys.stderr)
        return None

    total, unit = progress_total(job.input)
    return tqdm(
        total=total, initial=initial, unit=unit, unit_scale=unit == "B", desc="score", file=sys.stderr, dynamic_ncols=True
    )


def service_row_error(parsed: ParsedRow, fields: FieldMap, item: int, api_field: str, message: str) -> RowError:
    """A row the service refused (422) although it passed the local checks, as a :class:`RowError`
    naming the file's own field (``responses[2]`` for the third response of a prompt row)."""
    data = parsed.source.data or {}
    if api_field == "response":
        name = fields.response if get_field(data, fields.response) is not MISSING else fields.responses
        field_name = f"{name}[{item}]" if parsed.multi else name
    else:
        field_name = {"ground_truth": fields.ground_truth, "task_type": fields.task_type}.get(api_field, api_field)
    return RowError(parsed.source.line, field_name, f"{message} (rejected by the service)", raw_text(data))


def run_score(job: ScoreJob, scorer: Scorer) -> ScoreResult:
    """Score ``job.input`` into ``job.output``; resumes a matching partial run. Raises
    :class:`BadRowStop` on the first bad row unless ``skip_bad``, KeyboardInterrupt passes through
    (the checkpoint is already on disk)."""
    started = time.perf_counter()
    settings = offline_settings(job.settings)
    sink = ResumableSink(job.output, job.fingerprint(scorer))
    meta = sink.finished_meta()
    if meta is not None and not job.restart:  # rerunning a finished command is a no-op
        return ScoreResult(
            job.output, meta["rows"], meta["items"], meta["rejected"], False, True, meta.get("by_task", {}),
            sink.rejected_path if meta["rejected"] else None, 0.0,
        )
    cp = sink.start(restart=job.restart, overwrite=job.overwrite)
    resumed = sink.resumed
    counts: dict[str, dict[str, float]] = {k: dict(v) for k, v in cp.counts.items()}
    state = {"position": cp.position, "lines": cp.lines, "rows": cp.rows, "items": cp.items, "rejected": cp.rejected}
    pending: list[ParsedRow] = []
    pending_items = 0
    rejected: list[tuple[int, bytes]] = []  # (line, record): sorted by line when written
    bar = _bar(job, cp.position)
    reported = cp.position

    def score_pending() -> list[ItemReward]:
        """Score ``pending``; rows the service refuses are skipped (``--skip-bad``) or stop the run
        after the rows before the first of them are committed."""
        nonlocal pending, pending_items
        while True:
            try:
                return scorer.score(pending) if pending else []
            except ItemsRejected as exc:
                errors = [(i, service_row_error(pending[i], job.fields, *exc.rows[i])) for i in sorted(exc.rows)]
            if not job.skip_bad:
                first, err = errors[0]
                pending = pending[:first]
                pending_items = sum(len(r.items) for r in pending)
                last = pending[-1].source if pending else None
                state["position"] = last.position if last else sink.checkpoint.position
                state["lines"] = last.line if last else sink.checkpoint.lines
                flush()
                raise BadRowStop(err, state["rows"])
            for _, err in errors:
                rejected.append((err.line, dump_row(err.record())))
            state["rejected"] += len(errors)
            refused = {i for i, _ in errors}
            pending = [row for i, row in enumerate(pending) if i not in refused]
            pending_items = sum(len(r.items) for r in pending)

    def flush() -> None:
        nonlocal pending, pending_items, rejected, reported
        scores = score_pending()
        chunks = []
        offset = 0
        for parsed in pending:
            n = len(parsed.items)
            mine = scores[offset : offset + n]
            offset += n
            chunks.append(dump_row(output_row(parsed, mine, job.output_fields)))
            tally = counts.setdefault(parsed.task.name, {"rows": 0, "items": 0, "reward_sum": 0.0})
            tally["rows"] += 1
            tally["items"] += n
            tally["reward_sum"] += sum(s.reward for s in mine)
        state["rows"] += len(pending)
        state["items"] += pending_items
        rejected.sort(key=lambda entry: entry[0])
        sink.commit(b"".join(chunks), b"".join(r for _, r in rejected), {**state, "counts": counts})
        if bar is not None:
            bar.update(state["position"] - reported)
            bar.set_postfix(rows=state["rows"], bad=state["rejected"], refresh=False)
            reported = state["position"]
        pending, pending_items, rejected = [], 0, []

    try:
        for source in iter_rows(job.input, cp.position, cp.lines):
            try:
                parsed = parse_row(source, job.fields, job.options, settings)
            except RowError as err:
                if not job.skip_bad:
                    flush()  # keep the good rows before it: a rerun with --skip-bad continues here
                    raise BadRowStop(err, state["rows"]) from None
                rejected.append((err.line, dump_row(err.record())))
                state["rejected"] += 1
                state["position"], state["lines"] = source.position, source.line
                if len(rejected) >= job.batch_size:
                    flush()
                continue
            pending.append(parsed)
            pending_items += len(parsed.items)
            state["position"], state["lines"] = source.position, source.line
            if pending_items >= job.batch_size:
                flush()
        flush()
        by_task = {
            task: {"rows": int(t["rows"]), "items": int(t["items"]), "mean_reward": t["reward_sum"] / max(1, t["items"])}
            for task, t in sorted(counts.items())
        }
        sink.finish(
            {
                "input": str(job.input),
                "output": str(job.output),
                "rows": state["rows"],
                "items": state["items"],
                "rejected": state["rejected"],
                "by_task": by_task,
                "scorer": scorer.identity(),
                "fields": job.fields.describe(),
                "options": {"format_weight": job.options.format_weight, "bmas_reduction": job.options.bmas_reduction,
                            "profile": job.options.profile},
                "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
        )
    finally:
        sink.close()
        if bar is not None:
            bar.close()
    return ScoreResult(
        job.output,
        state["rows"],
        state["items"],
        state["rejected"],
        resumed,
        False,
        by_task,
        sink.rejected_path if state["rejected"] else None,
        time.perf_counter() - started,
    )


__all__ = ["BadRowStop", "ScoreJob", "ScoreResult", "output_row", "run_score", "service_row_error"]
