"""Math (SPEC §13a): math-verify equivalence, boxed answers, hedges, bad golds, and the pool.

``Math.score`` is a pure function of (span, truth text, options), so the rules are tested
in-process; the server tests send real requests, which the service scores in its worker pool.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import httpx
import pytest
from serving import running_server, server_process

from reward_server.rewards.errors import InvalidGroundTruth
from reward_server.rewards.families import math as math_family
from reward_server.rewards.families.math import Math, boxed_contents, is_bare_expression, parse_gold
from reward_server.rewards.family import Runs
from reward_server.rewards.options import ResolvedOptions

FAMILY = Math()
EXPLAIN = ResolvedOptions(explain=True)


def score(span: str, gold: str) -> float:
    return FAMILY.score(span, FAMILY.parse_truth(gold), EXPLAIN).accuracy


def test_traits() -> None:
    assert (FAMILY.runs, FAMILY.extra, FAMILY.binary) == (Runs.POOL, "math", True)


@pytest.mark.parametrize(
    ("span", "gold"),
    [
        ("\\boxed{5}", "5"),
        ("The answer is $\\boxed{\\frac{1}{2}}$.", "0.5"),
        ("$\\frac{1}{2}$", "\\frac12"),
        ("1/2", "\\frac{1}{2}"),
        ("0.5", "$\\frac{1}{2}$"),
        ("The answer is 5", "5"),
        ("2x = 10, so the answer is 5.", "5"),  # reasoning before an answer marker
        ("The answer is 5. I am 90% sure.", "5"),  # a number after the marker's sentence
        ("The final answer is $5$. I hope it is correct.", "5"),
        ("Answer: 10", "10"),
        ("x = 5", "5"),
        ("2 + 3 = 5", "5"),
        ("5 apples", "5"),
        ("1,000", "1000"),
        ("1 000", "1000"),
        ("50%", "50%"),
        ("2\\pi", "2\\pi"),  # a bare expression is read as LaTeX, on both sides
        ("x+1", "x+1"),
        ("\\boxed{x + 1}", "1 + x"),
        ("$x^2 + 2x + 1$", "(x+1)^2"),
        ("\\boxed{\\frac{\\sqrt3}{2}}", "\\frac{\\sqrt{3}}{2}"),
        ("\\boxed{\\dfrac{\\sqrt{3}}{2}}", "\\sqrt{3}/2"),
        ("(3, -1)", "(3,-1)"),
        ("$[-2, 7]$", "[-2,7]"),
        ("\\boxed{3, -3}", "\\pm 3"),  # several values as one LaTeX answer: a set
        ("$x = 3$ or $x = -3$", "\\{3, -3\\}"),  # math-verify reads LaTeX "or" as a set
        ("3, 4", "\\{3,4\\}"),  # a bare list is a set
        ("\\boxed{5} and \\boxed{\\frac{10}{2}}", "5"),  # several boxes, all equivalent
        ("\\boxed{\\boxed{5}}", "5"),  # a box in a box is one answer
        ("\\boxed{\\{1, 2\\}}", "\\{1,2\\}"),  # escaped braces inside a box
        ("\\text{Navin}", "\\text{Navin}"),
        ("$\\$32$", "\\$32"),
    ],
)
def test_equivalent(span: str, gold: str) -> None:
    assert score(span, gold) == 1.0


@pytest.mark.parametrize(
    ("span", "gold"),
    [
        ("\\boxed{6}", "5"),
        ("2\\pi", "2"),  # read as 2π, not as 2
        ("$\\sqrt{2}$", "1.41"),
        ("3, 4", "4"),  # a set is not one of its elements
        ("$3$ or $4$", "4"),
        ("", "5"),
        ("hello", "5"),
        ("\\boxed{}", "5"),
        ("\\boxed{5", "5"),  # an unclosed box is not an answer, nor is the rest of the span then
    ],
)
def test_not_equivalent(span: str, gold: str) -> None:
    assert score(span, gold) == 0.0


@pytest.mark.parametrize(
    ("span", "gold", "shown"),
    [
        ("3 or 4", "4", "3 | 4"),  # math-verify alone would read the rightmost: 4
        ("3 or 4", "3", "3 | 4"),
        ("either 2 or 5", "5", "2 | 5"),
        ("The answer is 3 or 4", "3", "3 | 4"),  # the marker's own sentence lists two
        ("Answer: 10 or 12", "10", "10 | 12"),
        ("x = 3 or x = -3", "3", "3 | -3"),  # plain text has no sets: write LaTeX for one
        ("\\boxed{5} or \\boxed{6}", "5", "5 | 6"),  # several boxes that disagree
        ("\\boxed{6} \\boxed{5}", "5", "6 | 5"),
        ("0 1 2 3", "3", "0 | 1 | 2 | 3"),  # numbers side by side
        ("\\boxed{0 1 2 3}", "6", "0 1 2 3"),  # LaTeX would add them up to 6
        ("Since 2x = 10, x = 5", "5", "2 | 10 | 5"),  # no marker, no box: every number is a candidate
    ],
)
def test_hedges_score_zero(span: str, gold: str, shown: str) -> None:
    result = FAMILY.score(span, gold, EXPLAIN)
    assert (result.accuracy, result.parsed) == (0.0, shown)


@pytest.mark.parametrize(
    ("span", "shown"),
    [("1 " * 300, "a list of 300 expressions"), ("$1$, " * 300, "a list of "),
     ("\\boxed{1}" * 300, "a list of 300 boxed answers")],
    ids=["numbers", "latex", "boxes"],
)
def test_a_long_list_is_a_hedge_without_verifying_each(span: str, shown: str) -> None:
    result = FAMILY.score(span, "1", EXPLAIN)
    assert result.accuracy == 0.0 and result.parsed.startswith(shown)


def test_long_bare_garbage_is_read_plainly() -> None:
    # Read as LaTeX, 5,000 nested brackets take sympy tens of seconds; read plainly, nothing.
    span = "[" * 5000 + "]" * 5000
    assert not is_bare_expression(span)
    assert FAMILY.score(span, "1", EXPLAIN).accuracy == 0.0


def test_gold_first() -> None:
    # verify(gold, prediction) is not symmetric: an equation gold accepts its value, and an
    # interval gold is not met by an element of it.
    assert score("5", "x = 5") == 1.0
    assert score("3", "[1, 5]") == 0.0


def test_parsed_is_the_prediction_as_text() -> None:
    assert FAMILY.score("So \\boxed{\\frac{1}{2}}.", "0.5", EXPLAIN).parsed == "\\frac{1}{2}"
    assert FAMILY.score("The answer is 5", "5", EXPLAIN).parsed == "5"
    assert FAMILY.score("nothing here", "5", EXPLAIN).parsed is None


@pytest.mark.parametrize(
    ("text", "contents"),
    [
        ("\\boxed{5}", ["5"]),
        ("a \\boxed{\\frac{1}{2}} b \\boxed {x}", ["\\frac{1}{2}", "x"]),
        ("\\boxed{\\{1, 2\\}}", ["\\{1, 2\\}"]),
        ("\\boxed{\\boxed{5}}", ["\\boxed{5}"]),
        ("\\boxed{5} \\boxed{6", ["5"]),  # the unclosed one is not an answer
        ("\\boxed{a\\\\}", ["a\\\\"]),  # a LaTeX line break before the closing brace
        ("no box", []),
    ],
)
def test_boxed_contents(text: str, contents: list[str]) -> None:
    assert boxed_contents(text) == contents


@pytest.mark.parametrize(
    ("text", "bare"),
    [("2\\pi", True), ("x^2+1", True), ("(3, -1)", True), ("\\text{Navin}", True), ("50%", True),
     ("5 cm", False), ("$5$", False), ("\\boxed{5}", False), ("3 or 4", False), ("1 000", False), ("\\$32", True)],
)
def test_bare_expression(text: str, bare: bool) -> None:
    assert is_bare_expression(text) is bare


@pytest.mark.parametrize("gold", ["hello", "Monday", "no number here"])
def test_gold_that_parses_to_nothing_is_a_client_error(gold: str) -> None:
    with pytest.raises(InvalidGroundTruth) as info:
        FAMILY.score("\\boxed{5}", FAMILY.parse_truth(gold), EXPLAIN)
    assert info.value.field == "ground_truth" and "math-verify" in info.value.message


def test_parse_truth_does_not_parse() -> None:
    # In the server: only whether the extra is installed, never math-verify itself (it may hang).
    assert FAMILY.parse_truth("\\boxed{9^{9^{9^{9}}}}") == "\\boxed{9^{9^{9^{9}}}}"
    assert parse_gold("\\frac12") == parse_gold("\\frac12")  # cached per worker


def test_missing_extra_is_a_422_naming_the_pip_install(server, monkeypatch: pytest.MonkeyPatch) -> None:
    """A server without math-verify answers math items with 422 missing_extra (a module set to
    None in sys.modules is how Python marks one as not importable)."""
    math_family.missing_modules.cache_clear()
    monkeypatch.setitem(sys.modules, "math_verify", None)
    try:
        items = [{"response": "<answer>\\boxed{7}</answer>", "ground_truth": "7 (missing-extra test)", "task_type": "math"}]
        r = httpx.post(server.url + "/score", json={"items": items}, timeout=60)
    finally:
        monkeypatch.undo()
        math_family.missing_modules.cache_clear()
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["type"] == "missing_extra"
    assert 'pip install "mixed-reward[math]"' in error["message"] and "math_verify" in error["message"]


def test_an_extra_that_is_installed_but_cannot_be_imported_is_a_422_saying_why(tmp_path: Path) -> None:
    """math-verify present but broken (say, an antlr4 runtime of another version): the server only
    checks that the modules exist, the worker's import fails, and the item is a 422 missing_extra
    with the import error, never a 500."""
    broken = tmp_path / "site" / "math_verify"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text('raise ImportError("antlr4 runtime 4.13 does not match 4.9.3")\n')
    path = os.pathsep.join(filter(None, [str(broken.parent), os.environ.get("PYTHONPATH")]))
    with server_process("--device", "cpu", env={"PYTHONPATH": path}) as server:
        items = [{"response": "<answer>\\boxed{7}</answer>", "ground_truth": "7", "task_type": "math"},
                 {"response": "<answer>yes</answer>", "ground_truth": "yes", "task_type": "yes_no"}]
        r = httpx.post(server.url + "/score", json={"items": items}, timeout=120)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["type"] == "missing_extra"
    assert "installed but cannot be imported (ImportError: antlr4 runtime 4.13 does not match 4.9.3)" in error["message"]
    assert 'pip install "mixed-reward[math]"' in error["message"]


@pytest.fixture(scope="module")
def math_server(default_table):
    """A server whose verifications may take 10 s. A fresh worker's first item imports math-verify
    and sympy and compiles its patterns inside the deadline; on a busy host, in a niced worker,
    that can approach the default 5 s, and these tests are about the verdicts, not the deadline."""
    with running_server(default_table, math_timeout_seconds=10.0, math_workers=2) as srv:
        yield srv


def test_through_the_server_pool(math_server) -> None:
    server = math_server
    items = [
        {"response": "<think>t</think><answer>\\boxed{\\frac{1}{2}}</answer>", "ground_truth": "0.5", "task_type": "math"},
        {"response": "<think>t</think><answer>3 or 4</answer>", "ground_truth": "4", "task_type": "latex", "id": "h"},
        {"response": "<answer>yes</answer>", "ground_truth": "yes", "task_type": "yes_no"},
        {"response": "<think>t</think><answer>$x^2+2x+1$</answer>", "ground_truth": "(x+1)^2",
         "task_type": "Math-Verify"},
    ]
    r = httpx.post(server.url + "/score", json={"items": items, "options": {"explain": True}}, timeout=120)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [(x["task_type"], x["accuracy"], x["format"]) for x in results] == [
        ("math", 1.0, 1.0), ("math", 0.0, 1.0), ("yes_no", 1.0, 0.0), ("math", 1.0, 1.0)
    ]
    assert results[1]["parsed"] == "3 | 4" and results[1]["id"] == "h"
    assert not any(x.get("timed_out") for x in results)


def test_gold_that_parses_to_nothing_is_a_422_through_the_server(math_server) -> None:
    server = math_server
    items = [
        {"response": "<answer>\\boxed{5}</answer>", "ground_truth": "5", "task_type": "math"},
        {"response": "<answer>\\boxed{5}</answer>", "ground_truth": "no number here", "task_type": "math", "id": "m1"},
    ]
    r = httpx.post(server.url + "/score", json={"items": items}, timeout=120)
    assert r.status_code == 422, r.text
    (detail,) = r.json()["error"]["details"]
    assert (detail["item"], detail["id"], detail["field"]) == (1, "m1", "ground_truth")
    assert "task_type math" in detail["message"]


def test_an_overrunning_verification_scores_zero_and_is_reported(math_server) -> None:
    """``9^(9^(9^9))`` sends sympy into an hours-long power: its worker is killed at the deadline,
    the item scores 0 with ``timed_out``, the other items of the request are scored, and the pool
    keeps serving with a replaced worker."""
    url = math_server.url
    before = _timeouts(url)
    items = [
        {"response": "<answer>\\boxed{9^{9^{9^{9}}}}</answer>", "ground_truth": "5", "task_type": "math"},
        {"response": "<answer>\\boxed{5}</answer>", "ground_truth": "5", "task_type": "math"},
    ]
    r = httpx.post(url + "/score", json={"items": items}, timeout=120)
    assert r.status_code == 200, r.text
    hung, fine = r.json()["results"]
    assert (hung["accuracy"], hung["reward"], hung["timed_out"]) == (0.0, 0.0, True)
    assert (fine["accuracy"], "timed_out" in fine) == (1.0, False)
    again = httpx.post(url + "/score", json={"items": items[1:] * 3}, timeout=120)
    assert again.status_code == 200 and [x["accuracy"] for x in again.json()["results"]] == [1.0] * 3
    assert _timeouts(url) == before + 1


def _timeouts(url: str) -> float:
    """``reward_item_timeouts_total`` summed over its labels, from /metrics."""
    lines = httpx.get(url + "/metrics", timeout=60).text.splitlines()
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith("reward_item_timeouts_total"))
