"""``reward-server``: the command line. ``serve`` starts the HTTP service; each flag mirrors a
``REWARD_*`` environment variable (flags win), generated from :class:`Settings` so they cannot drift."""

from __future__ import annotations

import argparse
import logging
import sys
import time
import typing
from collections.abc import Callable, Sequence

from reward_server.items.settings import Settings

Command = Callable[[argparse.Namespace], int]


def _flag_type(annotation: object) -> tuple[Callable[[str], object] | None, Sequence[str] | None]:
    """argparse type and choices for a Settings annotation (``int | None``, ``Literal[...]``)."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)] or [annotation]
    first = args[0]
    if typing.get_origin(first) is typing.Literal:
        return str, [str(c) for c in typing.get_args(first)]
    if first in (int, float):
        return first, None
    return str, None


def add_settings_flags(parser: argparse.ArgumentParser) -> None:
    for name, info in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        help_text = f"{info.description} [env REWARD_{name.upper()}; default {info.default!r}]"
        if info.annotation is bool:
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
            continue
        kind, choices = _flag_type(info.annotation)
        parser.add_argument(flag, dest=name, type=kind, choices=choices, default=None, help=help_text)


def settings_from_args(args: argparse.Namespace) -> Settings:
    overrides = {name: getattr(args, name) for name in Settings.model_fields if getattr(args, name, None) is not None}
    return Settings(**overrides)


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from reward_server.embeddings.loader import TableLoadError, load_table
    from reward_server.engine.idf import IdfFileError
    from reward_server.service.app import create_app, load_configured_idf
    from reward_server.service.shutdown import SHUTDOWN_GRACE_SECONDS, DrainingServer

    settings = settings_from_args(args)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if settings.ray:  # replicas on a Ray cluster: reward_server/ray_serve/launch.py (its exit codes too)
        from reward_server.ray_serve.launch import serve_on_ray

        return serve_on_ray(settings)
    log = logging.getLogger("reward_server")
    started = time.perf_counter()
    try:
        table = load_table(settings.model_path, device=settings.device, dtype=settings.dtype)
    except (TableLoadError, ValueError, OSError) as exc:
        print(f"reward-server: cannot load the embedding table: {exc}", file=sys.stderr)
        return 2
    try:
        idf = load_configured_idf(settings, table)
    except IdfFileError as exc:
        print(f"reward-server: cannot use the idf file: {exc}", file=sys.stderr)
        return 2
    info = table.info()
    log.info(
        "table %s (%s, %dx%d, %s on %s, hash %s) loaded in %.1fs",
        info["source"], info["tensor_key"], info["vocab_size"], info["dim"], info["dtype"], info["device"],
        info["content_hash"], time.perf_counter() - started,
    )
    if idf is not None:
        log.info("idf %s: %d documents, %d tokens", settings.idf_path, idf.documents, len(idf.df))
    elif settings.profile == "robust":
        log.warning("profile robust without --idf-path: every token weighs 1 (see docs/rewards.md)")
    app = create_app(table, settings, idf)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=settings.access_log,
        timeout_graceful_shutdown=SHUTDOWN_GRACE_SECONDS,
    )
    DrainingServer(config, drain_seconds=settings.drain_seconds, on_drain=app.state.service.begin_drain).run()
    return 0


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, Command]]:
    parser = argparse.ArgumentParser(prog="reward-server", description="Mixed-R1 reward service.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands: dict[str, Command] = {}
    serve = sub.add_parser("serve", help="start the HTTP service", description="Start the HTTP reward service.")
    add_settings_flags(serve)
    commands["serve"] = _serve
    from reward_server.offline.cli import register as register_offline  # score / filter / report

    register_offline(sub, commands)
    return parser, commands


def main(argv: Sequence[str] | None = None) -> int:
    parser, commands = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return commands[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
