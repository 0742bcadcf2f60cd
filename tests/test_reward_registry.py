"""The reward-family registry (SPEC §1, §14): canonical names, every alias, spelling variants,
the error, and the families' declarations."""

import pytest

from reward_server.rewards.errors import ItemFieldError, UnknownTaskType
from reward_server.rewards.families import BUILTINS
from reward_server.rewards.registry import default_registry, normalise_task_name

SPEC_ALIASES = {
    "yes_no": ["yes_no", "yorn", "binary"],
    "mcq": ["mcq", "multiple_choice", "choice"],
    "chart": ["chart", "numeric", "numerical", "chartqa", "doc", "ocr_number"],
    "grounding": ["grounding", "iou", "rec", "bbox", "detection"],
    "open_ended": ["open_ended", "open", "caption", "free_form", "bmas"],
    "math": ["math", "math_verify", "latex", "free_form_math"],
    "temporal_grounding": ["temporal_grounding", "tiou", "tvg", "video_grounding", "moment"],
    "ocr": ["ocr", "anls", "docvqa", "text_vqa"],
    "counting": ["counting", "count"],
    "point": ["point", "click", "pointing", "gui_click"],
}


def parse_task_type(name: object):
    return default_registry().resolve(name)


@pytest.mark.parametrize(
    ("name", "task"), [(name, task) for task, names in SPEC_ALIASES.items() for name in names]
)
def test_every_spec_name_resolves(name: str, task: str) -> None:
    assert parse_task_type(name).name == task


def test_alias_table_is_exactly_the_spec() -> None:
    expected = [name for names in SPEC_ALIASES.values() for name in names]
    assert sorted(default_registry().accepted_names()) == sorted(expected)
    assert default_registry().names() == list(SPEC_ALIASES)


@pytest.mark.parametrize(("name", "aliases", "target"), BUILTINS, ids=[b[0] for b in BUILTINS])
def test_each_builtin_declares_what_it_is_registered_as(name: str, aliases: tuple[str, ...], target: str) -> None:
    family = default_registry()[name]
    assert (family.name, tuple(family.aliases)) == (name, aliases)
    assert family.summary and family.accuracy_range[0] < family.accuracy_range[1]


@pytest.mark.parametrize(
    ("name", "task"),
    [
        ("YES_NO", "yes_no"),
        ("Yes-No", "yes_no"),
        ("yes no", "yes_no"),
        ("  mcq\n", "mcq"),
        ("Multiple-Choice", "mcq"),
        ("multiple choice", "mcq"),
        ("OCR-Number", "chart"),
        ("ChartQA", "chart"),
        ("Free Form", "open_ended"),
        ("open-ended", "open_ended"),
        ("BBOX", "grounding"),
        ("Math-Verify", "math"),
        ("Free Form Math", "math"),
        ("Video-Grounding", "temporal_grounding"),
        ("TIoU", "temporal_grounding"),
        ("Text VQA", "ocr"),
        ("DocVQA", "ocr"),
        ("COUNT", "counting"),
        ("gui-click", "point"),
    ],
)
def test_case_and_separators_are_folded(name: str, task: str) -> None:
    assert parse_task_type(name).name == task


def test_a_family_resolves_to_itself() -> None:
    chart = parse_task_type("chart")
    assert parse_task_type(chart) is chart


def test_normalise_task_name() -> None:
    assert normalise_task_name("  Free - Form ") == "free_form"


@pytest.mark.parametrize("name", ["foo", "", "   ", "yesno", "mcq2", "grounding!", "caption_x", "numbers"])
def test_unknown_names_raise_with_the_valid_list(name: str) -> None:
    with pytest.raises(UnknownTaskType) as info:
        parse_task_type(name)
    error = info.value
    assert isinstance(error, ItemFieldError) and (error.status, error.type) == (422, "invalid_item")
    assert error.field == "task_type"
    assert str(error) == error.message
    for canonical in SPEC_ALIASES:
        assert canonical in error.message
    assert "aliases" in error.message


def test_error_message_names_the_bad_value() -> None:
    with pytest.raises(UnknownTaskType, match=r"unknown task type 'foo'; valid: yes_no, mcq, chart"):
        parse_task_type("foo")


def test_huge_unknown_name_is_shortened_in_the_message() -> None:
    with pytest.raises(UnknownTaskType) as info:
        parse_task_type("x" * 10_000)
    assert len(info.value.message) < 1_000


def test_non_string_is_a_client_error_not_a_crash() -> None:
    with pytest.raises(UnknownTaskType):
        parse_task_type(None)  # type: ignore[arg-type]
