"""Chart reward (SPEC §4): number parsing, 1 % tolerance, percentages, text fallback."""

import math

import pytest

from reward_server.rewards.chart import (
    ChartTruth,
    chart_reward,
    find_numbers,
    numbers_match,
    parse_number,
    parse_numeric_truth,
)


@pytest.mark.parametrize(
    ("text", "value", "percent"),
    [
        ("12,000", 12000.0, False),
        ("1,234,567.89", 1234567.89, False),
        ("$1,234.50", 1234.5, False),
        ("-$5", -5.0, False),
        ("$-5", -5.0, False),
        ("€3.20", 3.2, False),
        ("£7", 7.0, False),
        ("¥1000", 1000.0, False),
        ("-3.2e3", -3200.0, False),
        ("+4.5", 4.5, False),
        ("\u22127", -7.0, False),  # unicode minus
        ("1E-3", 0.001, False),
        (".5", 0.5, False),
        ("45%", 45.0, True),
        ("45 %", 45.0, True),
        ("12.5 percent", 12.5, True),
        ("12 cm", 12.0, False),
        ("3.5 million", 3.5, False),  # unit words are ignored, never multiplied
        ("The value is 12,000.", 12000.0, False),
        ("In 2019 the value was 45", 45.0, False),  # the last number is the answer
        ("COVID-19 cases: 12", 12.0, False),
        ("COVID-19", 19.0, False),  # a hyphen after a word is a dash, not a minus
        ("1,2345", 2345.0, False),  # not a thousands group
        ("５０", 50.0, False),  # full-width digits
    ],
)
def test_parse_number(text: str, value: float, percent: bool) -> None:
    number = parse_number(text)
    assert number is not None
    assert number.value == pytest.approx(value)
    assert number.percent is percent


@pytest.mark.parametrize(
    "text", ["", "nan", "inf", "-inf", "Infinity", "1e999", "-1e999", "no number", "$", "%", "-"]
)
def test_no_finite_number(text: str) -> None:
    assert parse_number(text) is None


def test_non_finite_candidates_are_skipped_not_returned() -> None:
    assert parse_number("5 or 1e999").value == 5.0
    assert all(math.isfinite(n.value) for n in find_numbers("1e999 2e308 3 9" + "9" * 400))


@pytest.mark.parametrize(
    ("truth", "numeric"),
    [
        ("12", 12.0),
        ("12 cm", 12.0),
        ("$1,234.50", 1234.5),
        ("45%", 45.0),
        ("-3.2e3", -3200.0),
        ("3.5 million dollars", 3.5),
        ('"12"', 12.0),  # a JSON-dumped string ground truth
        ("'-3'", -3.0),
        ("Q3 2019", None),
        ("2019-2020", None),
        ("1/2", None),
        ("Paris", None),
        ("about 12", None),
        ("1e999", None),
    ],
)
def test_numeric_truth_detection(truth: str, numeric: float | None) -> None:
    parsed = parse_numeric_truth(truth)
    assert (parsed.value if parsed else None) == numeric


@pytest.mark.parametrize(
    ("span", "truth", "expected"),
    [
        ("12000", "12,000", 1.0),
        ("12,000", "12000", 1.0),
        ("The value is 12,000.", "12000", 1.0),
        ("$1,234.50", "1234.5", 1.0),
        ("1234.5", "$1,234.50", 1.0),
        ("-3.2e3", "-3200", 1.0),
        ("3200", "-3200", 0.0),
        ("100.9", "100", 1.0),  # 0.9 % relative error
        ("101", "100", 0.0),  # exactly 1 %: not strictly below the tolerance
        ("98.99", "100", 0.0),
        ("0.009", "0", 1.0),  # t == 0 uses |p| < 1e-2
        ("-0.009", "0", 1.0),
        ("0.01", "0", 0.0),
        ("45%", "45", 1.0),
        ("45%", "0.45", 1.0),
        ("45", "45%", 1.0),
        ("0.45", "45%", 1.0),
        ("0.45%", "45%", 0.0),  # both carry %: compared as written
        ("45%", "45%", 1.0),
        ("4.5", "45%", 0.0),
        ("12 cm", "12", 1.0),
        ("3.5 million", "3.5", 1.0),
        ("3.5 million", "3500000", 0.0),
        ("twelve", "12", 0.0),
        ("", "12", 0.0),
        ("1e999", "1e308", 0.0),
        ("nan", "0", 0.0),
        ("1e308", "-1e308", 0.0),  # difference overflows to inf: still a clean 0
        ("Paris", "paris", 1.0),  # non-numeric truth: normalised exact match
        ("Paris.", "Paris", 1.0),
        ("  Q3   2019 ", "Q3 2019", 1.0),
        ("2019", "Q3 2019", 0.0),
        ("Paris, France", "Paris", 0.0),
    ],
)
def test_chart_reward(span: str, truth: str, expected: float) -> None:
    assert chart_reward(span, ChartTruth.parse(truth)) == expected


def test_numbers_match_is_symmetric_in_percent_reading() -> None:
    pct, plain = parse_number("45%"), parse_number("0.45")
    assert numbers_match(pct, plain) and numbers_match(plain, pct)
