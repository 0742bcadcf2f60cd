"""``reward-server score | filter | report | idf``: offline scoring, the data engine, idf weights.

Exit codes are the error kinds' (reward_server/errors.py, docs/offline.md): 0 done (also: the same
run had already finished), 1 a bad row or a failing service, 2 a usage problem (missing input,
output in the way, a partial run made with other options, the output being written by another run:
``OUT.lock``, a table or idf file that cannot be used), 130 interrupted (the checkpoint is on disk:
rerun the same command to resume).
"""

from __future__ import annotations

import argparse
import functools
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from reward_server.errors import (
    EXIT_DATA,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    RewardServerError,
    UsageError,
)
from reward_server.offline.defaults import DEFAULT_BATCH_SIZE, DEFAULT_MIN_STD
from reward_server.rewards.profiles import PROFILE_NAMES

Command = Callable[[argparse.Namespace], int]



def _err(message: str) -> None:
    print(f"reward-server: {message}", file=sys.stderr)


def _add_field_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("field mapping (dotted names reach into nested objects: reward_model.ground_truth)")
    g.add_argument("--response-field", default="response", help="one response per row (default: %(default)s)")
    g.add_argument(
        "--responses-field", default="responses",
        help="a list of responses per row, used when the response field is absent (default: %(default)s)",
    )
    g.add_argument("--ground-truth-field", default="ground_truth", help="default: %(default)s")
    g.add_argument("--task-type-field", default="task_type", help="default: %(default)s")
    g.add_argument("--task-type", default=None, help="task type for rows without one (a single-task file)")
    g.add_argument("--group-field", default="group_id", help="GRPO group of one-response rows (default: %(default)s)")
    g.add_argument("--rewards-module", action="append", default=None, metavar="FILE.py",
                   help="a Python file of extra reward families, as for `serve` (repeatable)")


def _add_scoring_flags(p: argparse.ArgumentParser, *, output_flags: bool = True) -> None:
    g = p.add_argument_group("scoring (defaults from REWARD_* environment variables, as for `serve`)")
    g.add_argument("--url", default=None, help="score with a running service (POST /score) instead of in-process")
    g.add_argument("--api-token", default=None, help="bearer token for --url [env REWARD_API_TOKEN]")
    g.add_argument("--model-path", default=None, help="policy checkpoint directory (default: the embedded table)")
    g.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    g.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"])
    g.add_argument("--format-weight", type=float, default=None, help="reward = accuracy + w * format (default 1.0; with --url the service's default)")
    g.add_argument("--bmas-reduction", default=None, choices=["sum", "mean"])
    g.add_argument("--profile", default=None, choices=list(PROFILE_NAMES),
                   help="reward profile (default mixed-r1 [env REWARD_PROFILE]; with --url the service's default)")
    g.add_argument("--idf-path", default=None,
                   help="idf file for the robust profile, from `reward-server idf` [env REWARD_IDF_PATH]")
    g.add_argument("--memory-budget-mb", type=int, default=None, help="bound on the BMAS similarity buffers")
    g.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="responses per scoring batch and checkpoint (default: %(default)s)")
    r = p.add_argument_group("run control")
    r.add_argument("--skip-bad", action="store_true", help="skip (and count) bad rows instead of stopping at the first")
    r.add_argument("--restart", action="store_true",
                   help="score from scratch: discard a partial run, and rescore even a finished identical one")
    r.add_argument("--overwrite", action="store_true",
                   help="replace an existing output that is not a finished run of this input and options")
    r.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=None,
        help="progress bar on stderr (default: only when stderr is a terminal)",
    )
    if output_flags:
        r.add_argument("--output-fields", default=None,
                       help="comma-separated input fields to keep in the output (default: all)")


def _add_rule_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("zero-variance rule (the same as the service's group statistics)")
    g.add_argument("--tolerance", type=float, default=None,
                   help="a group whose rewards span at most this much has zero variance "
                        "[env REWARD_ZERO_VARIANCE_TOLERANCE; default 1e-06]")
    g.add_argument("--min-std", type=float, default=DEFAULT_MIN_STD,
                   help="grounding/open_ended groups also need a sample std above this (default: %(default)s; 0 disables)")


@contextmanager
def _sigint_interrupts() -> Iterator[None]:
    """Make SIGINT raise KeyboardInterrupt for the block, even in a process started with it ignored.

    A shell starts background jobs (``cmd &``, a CI runner's steps) with SIGINT ignored, and Python
    keeps an inherited SIG_IGN instead of installing its KeyboardInterrupt handler: SIGINT and Ctrl-C
    then did nothing to ``score``, whose clean stop (checkpoint on disk, exit 130) is the
    KeyboardInterrupt path. So an ignored or default SIGINT becomes Python's handler; any other
    handler (one an embedding program installed) is kept. The previous disposition comes back
    afterwards, for in-process callers of ``main``. Only the main thread may set handlers: from
    another thread nothing changes.
    """
    previous = signal.getsignal(signal.SIGINT)
    if previous not in (signal.SIG_IGN, signal.SIG_DFL) or threading.current_thread() is not threading.main_thread():
        yield
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _interruptible(command: Command) -> Command:
    """``command`` run under :func:`_sigint_interrupts`: every offline command stops on SIGINT."""

    @functools.wraps(command)
    def run(args: argparse.Namespace) -> int:
        from reward_server.offline.tasks import use_modules

        use_modules(getattr(args, "rewards_module", None) or [])  # the task types this run knows
        with _sigint_interrupts():
            return command(args)

    return run


def register(sub: argparse._SubParsersAction, commands: dict[str, Command]) -> None:
    """Add score / filter / report parsers to ``sub`` and their handlers to ``commands``."""
    score = sub.add_parser(
        "score", help="score a JSONL/Parquet file of rollouts (resumable)",
        description="Score every row of IN with the service's engine (in-process, or --url) and write the rows "
        "with their reward components to OUT (JSONL), in input order. Interrupted runs resume when rerun.",
    )
    score.add_argument("input", type=Path, metavar="IN", help="JSONL or Parquet (.parquet) file")
    score.add_argument("output", type=Path, metavar="OUT", help="JSONL file to write")
    _add_field_flags(score)
    _add_scoring_flags(score)
    commands["score"] = _interruptible(score_command)

    filt = sub.add_parser(
        "filter", help="the data engine: keep prompts whose sampled responses' rewards differ",
        description="Drop every prompt (GRPO group) whose responses all get the same reward. IN holds either a "
        "list of responses per row, or one response per row with a group field; it is scored first unless it "
        "already has rewards. Writes the kept rows to OUT and a summary to OUT.summary.json.",
    )
    filt.add_argument("input", type=Path, metavar="IN")
    filt.add_argument("output", type=Path, metavar="OUT")
    _add_field_flags(filt)
    _add_scoring_flags(filt, output_flags=False)
    _add_rule_flags(filt)
    filt.add_argument("--scored", type=Path, default=None,
                      help="where to keep the scored rows when IN is not scored yet (default: OUT.scored.jsonl)")
    filt.add_argument("--rescore", action="store_true", help="score IN even if it already has a reward field")
    filt.add_argument("--write-dropped", action="store_true",
                      help="also write the dropped rows, with filter_reason, to OUT.dropped.jsonl")
    commands["filter"] = _interruptible(filter_command)

    rep = sub.add_parser(
        "report", help="summarise a scored file: statistics, zero-variance groups, PNG plots",
        description="Per task type and component: count, mean, std, quantiles; the fraction of zero-variance "
        "groups; warnings; and PNG plots. Writes REPORT.md, report.json and the PNGs to --out-dir.",
    )
    rep.add_argument(
        "input", type=Path, metavar="IN", help="a scored JSONL or Parquet file, or a difficulty-state export (GET /v1/prompts)",
    )
    rep.add_argument("--out-dir", type=Path, default=None, help="default: IN's name + _report, next to IN")
    rep.add_argument("--skip-bad", action="store_true", help="skip (and count) bad rows")
    rep.add_argument("--no-plots", action="store_true", help="statistics only")
    _add_field_flags(rep)
    _add_rule_flags(rep)
    commands["report"] = _interruptible(report_command)

    idf = sub.add_parser(
        "idf", help="build the robust profile's idf file from a training set's ground truths",
        description="Count, over the distinct open-ended ground truths of DATASET (JSONL or Parquet), how many "
        "contain each token of the policy's tokenizer, and write the idf file that `serve --idf-path` and "
        "`score --idf-path` read. Rows of other task types are skipped; rows without one count.",
    )
    idf.add_argument("input", type=Path, metavar="DATASET", help="JSONL or Parquet (.parquet) file")
    idf.add_argument("-o", "--output", type=Path, required=True, metavar="FILE", help="idf file to write (JSON)")
    idf.add_argument("--model-path", default=None, help="policy checkpoint whose tokenizer to use (default: the embedded table)")
    idf.add_argument("--ground-truth-field", default="ground_truth", help="default: %(default)s")
    idf.add_argument("--task-type-field", default="task_type", help="default: %(default)s")
    idf.add_argument("--task-type", default=None, help="task type for rows without one")
    idf.add_argument("--skip-bad", action="store_true", help="skip (and count) bad rows instead of stopping")
    idf.add_argument("--overwrite", action="store_true", help="replace an existing FILE")
    idf.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                     help="progress bar on stderr (default: only when stderr is a terminal)")
    commands["idf"] = _interruptible(idf_command)


# -- shared helpers -----------------------------------------------------------------------------


def _fields(args: argparse.Namespace) -> Any:
    from reward_server.offline.rows import FieldMap

    return FieldMap(
        response=args.response_field,
        responses=args.responses_field,
        ground_truth=args.ground_truth_field,
        task_type=args.task_type_field,
        group=args.group_field,
        default_task_type=args.task_type,
    )


def _settings(args: argparse.Namespace) -> Any:
    from reward_server.items.settings import load_settings

    names = ("model_path", "device", "dtype", "format_weight", "bmas_reduction", "profile", "idf_path",
             "memory_budget_mb", "rewards_module")
    overrides = {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}
    if getattr(args, "tolerance", None) is not None:
        overrides["zero_variance_tolerance"] = args.tolerance
    return load_settings(**overrides)


def _check_input(path: Path) -> bool:
    if not path.is_file():
        _err(f"{path}: no such file")
        return False
    if str(path).lower().endswith((".parquet", ".pq")):
        try:
            import pyarrow.parquet  # noqa: F401
        except ImportError:
            _err(f"{path}: reading Parquet needs pyarrow: pip install 'mixed-reward[offline]'")
            return False
    return True


def _scorer(args: argparse.Namespace, job: Any) -> Any:
    """The scorer for ``job``. With ``--url`` the service's own defaults (format weight, BMAS
    reduction) and limits replace the local ones, except for options given as flags; ``job`` is
    updated to match, so validation and the run's fingerprint use what the service will apply."""
    if args.url:
        from reward_server.offline.backends import RemoteScorer

        scorer = RemoteScorer(
            args.url,
            format_weight=args.format_weight,
            bmas_reduction=args.bmas_reduction,
            profile=args.profile,
            token=args.api_token or job.settings.api_token,
        )
        job.options = scorer.score_options()
        limits = {k: v for k, v in scorer.limits.items() if k in ("max_chars_per_text", "max_body_bytes")}
        job.settings = job.settings.model_copy(update={**limits, "format_weight": job.options.format_weight,
                                                       "bmas_reduction": job.options.bmas_reduction,
                                                       "profile": job.options.profile})
        return scorer
    from reward_server.offline.backends import LocalScorer

    return LocalScorer(job.settings)


def _score_job(args: argparse.Namespace, input_: Path, output: Path) -> Any:
    from reward_server.offline.score import ScoreJob
    from reward_server.rewards.options import ResolvedOptions

    settings = _settings(args)
    options = ResolvedOptions(
        format_weight=settings.format_weight, bmas_reduction=settings.bmas_reduction, profile=settings.profile
    )
    output_fields = getattr(args, "output_fields", None)
    return ScoreJob(
        input=input_,
        output=output,
        fields=_fields(args),
        options=options,
        settings=settings,
        batch_size=max(1, args.batch_size),
        skip_bad=args.skip_bad,
        restart=args.restart,
        overwrite=args.overwrite,
        progress=args.progress,
        output_fields=tuple(f.strip() for f in output_fields.split(",") if f.strip()) if output_fields else None,
    )


def _run_scoring(args: argparse.Namespace, input_: Path, output: Path) -> tuple[int, Any]:
    """Run one score job with every failure mapped to a message and an exit code."""
    from pydantic import ValidationError

    from reward_server.offline.score import BadRowStop, run_score
    from reward_server.offline.sink import output_lock

    try:
        job = _score_job(args, input_, output)
    except ValidationError as exc:
        _err(f"invalid option: {exc.errors()[0]['loc'][0]}: {exc.errors()[0]['msg']}")
        return EXIT_USAGE, None
    scorer = None
    lock = ExitStack()  # released last: the output stays ours until the scorer is closed too
    try:
        # Before the scorer: a refused second run must not first spend seconds loading the table.
        lock.enter_context(output_lock(output, getattr(args, "command", None) or "score"))
        scorer = _scorer(args, job)
        result = run_score(job, scorer)
    except KeyboardInterrupt:
        _err(f"interrupted; scored rows are kept in {output}.partial. Rerun the same command to resume.")
        return EXIT_INTERRUPTED, None
    except BadRowStop as exc:
        _err(exc.error.describe(input_))
        _err(
            f"stopped at the first bad row ({exc.done_rows} rows before it are scored and kept in {output}.partial); "
            "fix the row (then --restart), or rerun with --skip-bad to skip and count bad rows"
        )
        return EXIT_DATA, None
    except RewardServerError as exc:  # output in the way or busy, resume refused, table, idf, service
        _err(exc.message)
        return exc.exit_code, None
    except OSError as exc:
        _err(str(exc))
        return EXIT_DATA, None
    finally:
        try:
            if scorer is not None:
                scorer.close()
        finally:
            lock.close()
    return EXIT_OK, result


def _describe_result(result: Any) -> str:
    if result.already_done:
        head = f"score: {result.output} is already complete ({result.rows:,} rows); nothing to do"
    else:
        how = "resumed, " if result.resumed else ""
        head = f"score: {result.rows:,} rows ({result.items:,} responses) -> {result.output} ({how}{result.seconds:.1f}s)"
    lines = [head]
    if result.rejected:
        lines.append(f"skipped {result.rejected:,} bad rows -> {result.rejected_path}")
    width = max((len(task) for task in result.by_task), default=0)
    for task, t in result.by_task.items():
        lines.append(f"  {task:<{width}} {t['items']:>9,} responses  mean reward {t['mean_reward']:.4f}")
    return "\n".join(lines)


# -- commands -----------------------------------------------------------------------------------


def score_command(args: argparse.Namespace) -> int:
    if not _check_input(args.input):
        return EXIT_USAGE
    code, result = _run_scoring(args, args.input, args.output)
    if result is not None:
        print(_describe_result(result))
    return code


def filter_command(args: argparse.Namespace) -> int:
    """``filter`` holds ``OUT``'s lock from its first check to its last write: two runs on one output
    would otherwise both pass the "OUT exists" check, and the loser would crash on the winner's file
    (its scoring step into ``OUT.scored.jsonl`` takes that file's own lock, as ``score`` does)."""
    from reward_server.offline.sink import output_lock

    if not _check_input(args.input):
        return EXIT_USAGE
    with ExitStack() as held:
        try:
            held.enter_context(output_lock(args.output, "filter"))
        except UsageError as exc:  # another run holds it (OutputBusy), or it cannot be written there
            _err(str(exc))
            return EXIT_USAGE
        return _filter_locked(args)


def _filter_locked(args: argparse.Namespace) -> int:
    """The body of ``filter``, run while ``OUT``'s lock is held."""
    from reward_server.offline.filter import FilterError, FilterJob, run_filter
    from reward_server.offline.scored import is_scored
    from reward_server.offline.sink import sidecar

    if args.output.exists() and not args.overwrite:
        _err(f"{args.output} already exists; pass --overwrite to replace it")
        return EXIT_USAGE
    extra: dict[str, Any] = {}
    scored_path = args.input
    if args.rescore or not is_scored(args.input):
        scored_path = args.scored or sidecar(args.output, ".scored.jsonl")
        if Path(scored_path).resolve() == args.output.resolve():
            _err(f"--scored {scored_path} is OUT itself; the scored rows need a file of their own")
            return EXIT_USAGE
        code, result = _run_scoring(args, args.input, scored_path)
        if result is None:
            return code
        print(_describe_result(result))
        extra["scoring"] = {"scored_file": str(scored_path), "rows": result.rows, "rejected": result.rejected}
    job = FilterJob(
        input=args.input,
        output=args.output,
        fields=_fields(args),
        tolerance=_settings(args).zero_variance_tolerance,
        min_std=args.min_std,
        skip_bad=args.skip_bad,
        write_dropped=args.write_dropped,
        overwrite=args.overwrite,
    )
    try:
        summary = run_filter(job, Path(scored_path), extra)
    except FilterError as exc:
        _err(exc.error.describe(scored_path))
        _err("nothing was written; fix the row or rerun with --skip-bad")
        return EXIT_DATA
    except KeyboardInterrupt:
        _err("interrupted; nothing was written (the scored file is kept, so a rerun only filters)")
        return EXIT_INTERRUPTED
    print(summary.table())
    print(f"summary -> {sidecar(args.output, '.summary.json')}")
    return EXIT_OK


def report_command(args: argparse.Namespace) -> int:
    from reward_server.offline.report import (
        MissingExtra,
        ReportError,
        ReportJob,
        check_plotting,
        render_markdown,
        run_report,
    )

    if not _check_input(args.input):
        return EXIT_USAGE
    out_dir = args.out_dir or args.input.parent / f"{args.input.name.split('.')[0]}_report"
    from reward_server.offline.difficulty_report import (
        ExportError,
        difficulty_report,
        looks_like_export,
        render,
    )

    if looks_like_export(args.input):  # a difficulty-state export (GET /v1/prompts), not scored rows
        if not args.no_plots:
            try:
                check_plotting()
            except MissingExtra as exc:
                _err(str(exc))
                return EXIT_USAGE
        try:
            payload = difficulty_report(args.input, out_dir, plots=not args.no_plots)
        except ExportError as exc:
            _err(str(exc))
            return EXIT_DATA
        print(render(payload))
        print(f"report -> {out_dir / 'DIFFICULTY.md'} (+ difficulty.json, {len(payload['plots'])} PNG plot)")
        return EXIT_OK
    job = ReportJob(
        input=args.input,
        out_dir=out_dir,
        fields=_fields(args),
        tolerance=_settings(args).zero_variance_tolerance,
        min_std=args.min_std,
        skip_bad=args.skip_bad,
        plots=not args.no_plots,
    )
    try:
        payload = run_report(job)
    except MissingExtra as exc:
        _err(str(exc))
        return EXIT_USAGE
    except ReportError as exc:
        _err(exc.error.describe(args.input))
        _err("no report written; rerun with --skip-bad to skip and count bad rows")
        return EXIT_DATA
    print(render_markdown(payload))
    print(f"\nreport -> {out_dir / 'REPORT.md'} (+ report.json, {len(payload['plots'])} PNG plots)")
    return EXIT_OK

def idf_command(args: argparse.Namespace) -> int:
    from reward_server.embeddings.errors import TableLoadError
    from reward_server.offline.idf_build import IdfJob, run_idf
    from reward_server.offline.rows import FieldMap, RowError

    if not _check_input(args.input):
        return EXIT_USAGE
    if args.output.exists() and not args.overwrite:
        _err(f"{args.output} already exists; pass --overwrite to replace it")
        return EXIT_USAGE
    job = IdfJob(
        input=args.input,
        output=args.output,
        fields=FieldMap(ground_truth=args.ground_truth_field, task_type=args.task_type_field,
                        default_task_type=args.task_type),
        model_path=args.model_path,
        skip_bad=args.skip_bad,
        progress=args.progress,
    )
    try:
        summary = run_idf(job)
    except RowError as exc:
        _err(exc.describe(args.input))
        _err("nothing was written; fix the row or rerun with --skip-bad")
        return EXIT_DATA
    except ValueError as exc:
        _err(str(exc))
        return EXIT_DATA
    except (TableLoadError, OSError) as exc:
        _err(str(exc))
        return EXIT_USAGE
    except KeyboardInterrupt:
        _err("interrupted; nothing was written")
        return EXIT_INTERRUPTED
    print(summary.describe(job))
    return EXIT_OK


__all__ = ["filter_command", "idf_command", "register", "report_command", "score_command"]
