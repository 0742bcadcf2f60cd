"""The tables of the docs that are generated from the code, so that the docs cannot drift:

* ``docs/configuration.md`` ``settings-table``: every setting (Settings), its flag and variable;
* ``docs/api.md`` ``error-table``: every error kind (reward_server/errors.py): type, status, meaning;
* ``docs/offline.md`` and ``docs/configuration.md`` ``exit-codes``: the commands' exit codes;
* ``docs/rewards.md`` ``task-types``: every built-in reward family: names, range, where it runs.

Each sits between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->``; ``tests/test_docs.py`` fails
when one differs from what this module generates. After changing the code, rewrite them with::

    python -m reward_server.docs_tables
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path

from reward_server import errors
from reward_server.items.settings import Settings
from reward_server.rewards.family import RewardFamily

DOCS = Path(__file__).resolve().parent.parent / "docs"


def settings_table() -> str:
    rows = ["| Environment variable | Flag | Default | Meaning |", "|---|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        shown = "unset" if default is None or default == [] else f"`{default}`"
        rows.append(f"| `REWARD_{name.upper()}` | `--{name.replace('_', '-')}` | {shown} | {field.description} |")
    return "\n".join(rows)


def error_table() -> str:
    rows = ["| `error.type` | status | when |", "|---|---|---|"]
    for kind in errors.http_kinds():
        rows.append(f"| `{kind.type}` | {kind.status} | {kind.summary} |")
    return "\n".join(rows)


def exit_codes_table() -> str:
    """0, 1 and 2 in words (many kinds share them); every other code from its command-only kind."""
    codes: dict[int, list[str]] = {
        errors.EXIT_OK: ["done (also: the same offline run had already finished)"],
        errors.EXIT_DATA: ["a bad row (without --skip-bad), a service that kept failing, or a bug"],
        errors.EXIT_USAGE: [("a bad flag or setting (one line naming it and its valid values), a missing input, an "
                            "output in the way or held by another run, a table or idf file that cannot be used, a "
                            "reward plug-in that clashes or does not load")],
    }
    for kind in errors.COMMAND_ONLY:
        if kind.exit_code not in (errors.EXIT_DATA, errors.EXIT_USAGE):
            codes.setdefault(kind.exit_code, []).append(kind.summary)
    rows = ["| exit code | meaning |", "|---|---|"]
    rows += [f"| {code} | {'; '.join(codes[code])} |" for code in sorted(codes)]
    return "\n".join(rows)


def _families() -> list[RewardFamily]:
    from reward_server.rewards.registry import default_registry

    return default_registry().families()


def _accuracy(family: RewardFamily) -> str:
    low, high = family.accuracy_range
    return "0 or 1" if family.binary else f"[{low:g}, {high:g}]"


def task_types_table() -> str:
    rows = ["| task type | aliases | reward | accuracy | runs |", "|---|---|---|---|---|"]
    for family in _families():
        aliases = ", ".join(f"`{alias}`" for alias in family.aliases)
        runs = family.runs.value + (f" (extra `[{family.extra}]`)" if family.extra else "")
        rows.append(f"| `{family.name}` | {aliases} | {family.summary} | {_accuracy(family)} | {runs} |")
    return "\n".join(rows)


def readme_task_types_table() -> str:
    rows = ["| task type | reward | accuracy |", "|---|---|---|"]
    rows += [f"| `{family.name}` | {family.summary} | {_accuracy(family)} |" for family in _families()]
    rows.append("| every item | format: `<think>…</think><answer>…</answer>` | 0 or 1 |")
    return "\n".join(rows)


#: marker name -> (generator, the pages that carry it; relative to docs/)
TABLES: dict[str, tuple[Callable[[], str], tuple[str, ...]]] = {
    "settings-table": (settings_table, ("configuration.md",)),
    "error-table": (error_table, ("api.md",)),
    "exit-codes": (exit_codes_table, ("offline.md", "configuration.md")),
    "task-types": (task_types_table, ("rewards.md",)),
    "readme-task-types": (readme_task_types_table, ("../README.md",)),
}


def block(name: str) -> re.Pattern[str]:
    return re.compile(rf"(<!-- {name}:start -->\n)(.*?)\n?(<!-- {name}:end -->)", re.DOTALL)


def current(page: str, name: str) -> str | None:
    """The table now in ``docs/page`` between the markers, or None without markers."""
    match = block(name).search((DOCS / page).read_text())
    return None if match is None else match.group(2)


def rewrite() -> tuple[list[str], list[str]]:
    """Regenerate every table in place; returns the pages changed and the (page, table) markers missing."""
    changed, missing = [], []
    for name, (generate, pages) in TABLES.items():
        table = generate()
        for page in pages:
            path = DOCS / page
            text = path.read_text()
            if not block(name).search(text):
                missing.append(f"docs/{page}: <!-- {name}:start --> / <!-- {name}:end -->")
                continue
            new = block(name).sub(lambda m, t=table: m.group(1) + t + "\n" + m.group(3), text)
            if new != text:
                path.write_text(new)
                changed.append(page)
    return changed, missing


if __name__ == "__main__":
    pages, absent = rewrite()
    shown = [str((DOCS / page).resolve().relative_to(DOCS.parent)) for page in pages]
    print("rewrote " + ", ".join(shown) if shown else "every generated table is current")
    for marker in absent:
        print(f"missing markers: {marker}", file=sys.stderr)
    sys.exit(1 if absent else 0)
