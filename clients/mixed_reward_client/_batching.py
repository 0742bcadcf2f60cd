"""Splitting a large batch into requests, and putting the answers back together, in order.

A request holds at most ``max_items`` items and about ``max_bytes`` bytes of encoded items. A GRPO
group (items with the same ``group_id``) is kept in one request whenever it fits, so the server's
group statistics (mean, std, zero variance) are computed over the whole group. When a group had to
be split, its statistics are recomputed here over all its results, with the server's rule (sample
std, zero variance when max - min <= 1e-6, the server's default tolerance).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mixed_reward_client._policy import _plain


def _key(value: Any) -> Any:
    """A hashable group key; numpy integers and plain ints for the same id are the same group."""
    try:
        hash(value)
    except TypeError:
        return repr(value)
    return _plain(value) if hasattr(value, "item") else value


def plan_chunks(
    items: Sequence[Mapping[str, Any]],
    max_items: int,
    sizes: Sequence[int] | None = None,
    max_bytes: int | None = None,
) -> list[list[int]]:
    """Item indices per request: whole groups packed in order of first appearance, at most
    ``max_items`` items and (given each item's encoded ``sizes``) about ``max_bytes`` bytes per
    request. A group larger than that is split; an item larger than ``max_bytes`` goes alone."""
    if max_items < 1:
        raise ValueError("max_batch_items must be at least 1")
    if not items:
        return []
    cost = [s + 1 for s in sizes] if sizes is not None else [0] * len(items)  # +1: the comma
    limit = max_bytes if max_bytes is not None else math.inf
    if len(items) <= max_items and sum(cost) <= limit:
        return [list(range(len(items)))]
    groups: dict[Any, list[int]] = {}
    for index, item in enumerate(items):
        gid = item.get("group_id")
        key = ("group", _key(gid)) if gid is not None else ("item", index)
        groups.setdefault(key, []).append(index)
    chunks: list[list[int]] = []
    current: list[int] = []
    current_bytes = 0
    for members in groups.values():
        for part in _fit(members, cost, max_items, limit):
            part_bytes = sum(cost[i] for i in part)
            if current and (len(current) + len(part) > max_items or current_bytes + part_bytes > limit):
                chunks.append(current)
                current, current_bytes = [], 0
            current.extend(part)
            current_bytes += part_bytes
    if current:
        chunks.append(current)
    return chunks


def _fit(members: list[int], cost: list[int], max_items: int, limit: float) -> list[list[int]]:
    """One group as consecutive parts that each fit a request on their own."""
    parts: list[list[int]] = []
    part: list[int] = []
    size = 0
    for index in members:
        if part and (len(part) >= max_items or size + cost[index] > limit):
            parts.append(part)
            part, size = [], 0
        part.append(index)
        size += cost[index]
    parts.append(part)
    return parts


@dataclass
class ScoreBatch:
    """The answer to one (possibly split) scoring call.

    ``results`` has one dict per item, in the order given: ``reward``, ``accuracy``, ``format``,
    ``task_type``, the family's named sub-scores (``bmas_forward``/``bmas_backward`` for open-ended
    items, ``tiou``/``boundary_penalty`` for temporal grounding), ``"timed_out": true`` for an item
    the service gave up verifying, and ``parsed`` when the call asked to ``explain``. ``groups`` holds one
    entry per group: the server's statistics, or for a group split across requests the same
    statistics recomputed here over all its results. ``requests`` says how many HTTP requests it took.
    ``table`` names the table that scored the batch (``name``, ``content_hash``, ...) and ``job`` the
    training job the service counted it under: what it made of the call's ``model`` and ``job``;
    ``profile`` the reward profile that scored it.
    """

    results: list[dict[str, Any]]
    groups: list[dict[str, Any]] = field(default_factory=list)
    table: dict[str, Any] = field(default_factory=dict)
    requests: int = 0
    job: str | None = None
    profile: str | None = None

    @property
    def rewards(self) -> list[float]:
        return [float(r["reward"]) for r in self.results]


ZERO_VARIANCE_TOLERANCE = 1e-6  # the server's default (REWARD_ZERO_VARIANCE_TOLERANCE)


def group_stats(group_id: Any, rewards: Sequence[float], tolerance: float = ZERO_VARIANCE_TOLERANCE) -> dict[str, Any]:
    """The server's group statistics (``reward_server.rewards.groups.summarise_group``): mean,
    sample std (n-1; 0 for one item), min, max, zero variance when max - min <= tolerance."""
    n = len(rewards)
    mean = math.fsum(rewards) / n
    var = math.fsum((r - mean) ** 2 for r in rewards) / (n - 1) if n > 1 else 0.0
    lo, hi = min(rewards), max(rewards)
    return {"group_id": group_id, "size": n, "mean": mean, "std": math.sqrt(var), "min": lo, "max": hi,
            "zero_variance": (hi - lo) <= tolerance}


def merge(count: int, chunks: list[list[int]], answers: list[dict[str, Any]]) -> ScoreBatch:
    """Results back in the caller's order. Group statistics: the server's entry for a group that
    went out in one request; recomputed over all its results for a group split across requests."""
    results: list[dict[str, Any] | None] = [None] * count
    table: dict[str, Any] = {}
    job: str | None = None
    profile: str | None = None
    chunks_of: dict[Any, set[int]] = {}
    for number, (indices, answer) in enumerate(zip(chunks, answers)):
        rows = answer.get("results")
        if not isinstance(rows, list) or len(rows) != len(indices):
            got = len(rows) if isinstance(rows, list) else type(rows).__name__
            raise ValueError(f"the server returned {got} results for {len(indices)} items")
        for index, row in zip(indices, rows):
            results[index] = row
            if isinstance(row, dict) and row.get("group_id") is not None:
                chunks_of.setdefault(_key(row["group_id"]), set()).add(number)
        table = answer.get("table") or table
        job = answer.get("job") or job
        profile = answer.get("profile") or profile
    split = {key for key, numbers in chunks_of.items() if len(numbers) > 1}
    members: dict[Any, list[float]] = {}
    for row in results:
        if row is not None and row.get("group_id") is not None and _key(row["group_id"]) in split:
            members.setdefault(_key(row["group_id"]), []).append(float(row["reward"]))
    groups: list[dict[str, Any]] = []
    done: set[Any] = set()
    for answer in answers:
        for entry in answer.get("groups") or []:
            key = _key(entry.get("group_id")) if isinstance(entry, dict) else None
            if key not in split:
                groups.append(entry)
            elif key not in done:
                done.add(key)
                groups.append(group_stats(entry["group_id"], members[key]))
    return ScoreBatch(results=[r for r in results if r is not None], groups=groups, table=table,
                      requests=len(chunks), job=job, profile=profile)


#: The item fields ``POST /score`` reads (the server's ``RequestItem``), and so the whole wire form of
#: an item: callers and adapters may pass richer dicts, and anything else on them stays here. This is
#: the client's only list of them; ``tests/test_clients_core.py`` fails when it drifts from the
#: server's model, so a field the server learns to read is not silently dropped (as ``prompt_id``,
#: which feeds the difficulty posterior, once was).
REQUIRED_ITEM_FIELDS: tuple[str, ...] = ("response", "ground_truth", "task_type")
OPTIONAL_ITEM_FIELDS: tuple[str, ...] = ("id", "group_id", "prompt_id")
ITEM_FIELDS: tuple[str, ...] = REQUIRED_ITEM_FIELDS + OPTIONAL_ITEM_FIELDS


def item_payload(item: Mapping[str, Any]) -> dict[str, Any]:
    """The wire form of one item: the fields /score reads (:data:`ITEM_FIELDS`), optional ones only
    when set, so adapters can fill ``prompt_id`` from a row that may not have one."""
    for name in REQUIRED_ITEM_FIELDS:
        if name not in item:
            raise KeyError(f"every item needs {name!r}; got keys {sorted(item)}")
    out = {name: item[name] for name in REQUIRED_ITEM_FIELDS}
    for name in OPTIONAL_ITEM_FIELDS:
        if item.get(name) is not None:
            out[name] = item[name]
    return out
