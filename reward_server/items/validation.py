"""From a parsed request to engine items: limits, task types and ground truths, every error named.

All items are checked before any is scored, and every bad item is reported (up to a cap), so a
client fixes a batch in one round trip instead of one error at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from reward_server.difficulty.ids import prompt_id_problem
from reward_server.errors import (
    MAX_DETAILS,
    InvalidItem,
    InvalidRequest,
    ItemFieldError,
    TooManyItems,
    summarise,
)
from reward_server.items.json_values import value_problem
from reward_server.items.models import RequestItem, RequestOptions
from reward_server.items.settings import Settings
from reward_server.rewards.family import RewardFamily
from reward_server.rewards.options import ResolvedOptions
from reward_server.rewards.profiles import parse_profile
from reward_server.rewards.registry import FamilyRegistry, default_registry
from reward_server.rewards.rules import PreparedTruth, prepare_ground_truth
from reward_server.rewards.scoring import PreparedItem

CACHED_TRUTH_MAX_CHARS = 4096
CACHED_LONG_TRUTH_MAX_CHARS = 65536


@lru_cache(maxsize=8192)
def _prepared_short(family: RewardFamily, ground_truth: str) -> PreparedTruth:
    return prepare_ground_truth(family, ground_truth)


@lru_cache(maxsize=128)
def _prepared_long(family: RewardFamily, ground_truth: str) -> PreparedTruth:
    return prepare_ground_truth(family, ground_truth)


def _prepared(family: RewardFamily, ground_truth: str) -> PreparedTruth:
    """A group's truth is parsed once, not once per response: a trainer that sends one request per
    sample repeats each truth group-size times. Short truths (boxes, numbers, short answers) get a
    large cache, at most ~8192 x 4096 characters; long ones (open-ended descriptions, whose answer
    spans cost ~70 µs of regex a time at 5,000 characters) a small one, at most 128 x 65,536
    characters. Longer truths are prepared every time."""
    if len(ground_truth) <= CACHED_TRUTH_MAX_CHARS:
        return _prepared_short(family, ground_truth)
    if len(ground_truth) <= CACHED_LONG_TRUTH_MAX_CHARS:
        return _prepared_long(family, ground_truth)
    return prepare_ground_truth(family, ground_truth)


def _is_valid_unicode(text: str) -> bool:
    """JSON may carry lone surrogates ("\\ud800") that no tokenizer accepts; catch them here, per item."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def resolve_profile(name: str | None, settings: Settings, field: str = "options.profile") -> str:
    """The profile a request asked for, else the server's; an unknown name is a 422 listing the valid ones."""
    if name is None:
        return settings.profile
    try:
        return parse_profile(name).name
    except ItemFieldError as exc:
        raise InvalidRequest.for_field(field, exc.message) from exc


def resolve_options(options: RequestOptions | None, settings: Settings) -> ResolvedOptions:
    """The request's options, each unset one from the server's settings."""
    given = options or RequestOptions()

    def pick(name: str) -> Any:
        value = getattr(given, name)
        return getattr(settings, name) if value is None else value

    return ResolvedOptions(
        format_weight=pick("format_weight"),
        bmas_reduction=pick("bmas_reduction"),
        profile=resolve_profile(given.profile, settings),
        explain=bool(given.explain),
        tiou_boundary_penalty=pick("tiou_boundary_penalty"),
    )


def check_item_count(count: int, settings: Settings) -> None:
    if count > settings.max_items_per_request:
        raise TooManyItems(
            f"items: {count} items in one request; the limit is {settings.max_items_per_request} "
            "(split the batch or raise REWARD_MAX_ITEMS_PER_REQUEST)",
            [{"item": None, "field": "items", "message": f"at most {settings.max_items_per_request} items"}],
        )


def build_items(
    items: Sequence[RequestItem], options: ResolvedOptions, settings: Settings,
    registry: FamilyRegistry | None = None,
) -> list[PreparedItem]:
    """Validate every item; raise one 422 listing each bad (item, field), or return engine items.
    Task types are resolved in ``registry`` (default: the built-ins and installed plug-ins)."""
    families = registry or default_registry()
    check_item_count(len(items), settings)
    limit = settings.max_chars_per_text
    errors: list[dict[str, Any]] = []
    built: list[PreparedItem] = []

    def fail(index: int, item: RequestItem, field: str, message: str) -> None:
        detail: dict[str, Any] = {"item": index, "field": field, "message": message}
        if item.id is not None:
            detail["id"] = item.id
        errors.append(detail)

    for index, item in enumerate(items):
        if len(errors) >= MAX_DETAILS:
            break
        # A list or object truth must be finite and shallow before it is turned into JSON text:
        # a NaN inside a box would be read as text, a hostile depth would overflow json.dumps.
        problem = None if isinstance(item.ground_truth, str) else value_problem(item.ground_truth)
        unusable = problem is not None
        if problem is not None:
            fail(index, item, "ground_truth", problem)
        truth_text = "" if unusable else item.ground_truth_text()
        for field, text in (("response", item.response), ("ground_truth", truth_text)):
            if len(text) > limit:
                fail(index, item, field, f"is {len(text)} characters; the limit is {limit}")
                unusable = True
            elif not _is_valid_unicode(text):
                fail(index, item, field, "is not valid Unicode: it holds a lone surrogate such as \\ud800")
                unusable = True
        if item.prompt_id is not None and (problem := prompt_id_problem(item.prompt_id)) is not None:
            fail(index, item, "prompt_id", problem)
            unusable = True
        try:
            family = families.resolve(item.task_type)
        except ItemFieldError as exc:
            fail(index, item, exc.field, exc.message)
            continue
        if unusable:
            continue
        try:
            truth = _prepared(family, truth_text)
            family.check_options(truth.parsed, options)
        except ItemFieldError as exc:
            fail(index, item, exc.field, f"{exc.message} (task_type {family.name})")
            continue
        built.append(PreparedItem(response=item.response, truth=truth, options=options))
    if errors:
        raise InvalidItem(summarise(errors), errors)
    return built
