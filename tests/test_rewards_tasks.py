"""Task routing (SPEC §1): canonical names, every alias, spelling variants, and the error."""

import pytest

from reward_server.rewards.errors import ItemFieldError, UnknownTaskType
from reward_server.rewards.tasks import TASK_ALIASES, TaskType, normalise_task_name, parse_task_type

SPEC_ALIASES = {
    TaskType.YES_NO: ["yes_no", "yorn", "binary"],
    TaskType.MCQ: ["mcq", "multiple_choice", "choice"],
    TaskType.CHART: ["chart", "numeric", "numerical", "chartqa", "doc", "ocr_number"],
    TaskType.GROUNDING: ["grounding", "iou", "rec", "bbox", "detection"],
    TaskType.OPEN_ENDED: ["open_ended", "open", "caption", "free_form", "bmas"],
}


@pytest.mark.parametrize(
    ("name", "task"), [(name, task) for task, names in SPEC_ALIASES.items() for name in names]
)
def test_every_spec_name_resolves(name: str, task: TaskType) -> None:
    assert parse_task_type(name) is task
    assert TASK_ALIASES[name] is task


def test_alias_table_is_exactly_the_spec() -> None:
    expected = {name for names in SPEC_ALIASES.values() for name in names}
    assert set(TASK_ALIASES) == expected


@pytest.mark.parametrize(
    ("name", "task"),
    [
        ("YES_NO", TaskType.YES_NO),
        ("Yes-No", TaskType.YES_NO),
        ("yes no", TaskType.YES_NO),
        ("  mcq\n", TaskType.MCQ),
        ("Multiple-Choice", TaskType.MCQ),
        ("multiple choice", TaskType.MCQ),
        ("OCR-Number", TaskType.CHART),
        ("ChartQA", TaskType.CHART),
        ("Free Form", TaskType.OPEN_ENDED),
        ("open-ended", TaskType.OPEN_ENDED),
        ("BBOX", TaskType.GROUNDING),
    ],
)
def test_case_and_separators_are_folded(name: str, task: TaskType) -> None:
    assert parse_task_type(name) is task


def test_task_type_is_a_str_enum_with_wire_values() -> None:
    assert [t.value for t in TaskType] == ["yes_no", "mcq", "chart", "grounding", "open_ended"]
    assert TaskType.MCQ == "mcq"
    assert parse_task_type(TaskType.CHART) is TaskType.CHART


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
    for canonical in ("yes_no", "mcq", "chart", "grounding", "open_ended"):
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
