"""Splitting a large batch into requests, and putting the answers back together, in order.

A GRPO group (items with the same ``group_id``) is kept in one request whenever it fits, so the
server's group statistics (mean, std, zero variance) are computed over the whole group.
"""

from __future__ import annotations

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


def plan_chunks(items: Sequence[Mapping[str, Any]], max_items: int) -> list[list[int]]:
    """Item indices per request: whole groups packed first-fit in order of first appearance,
    at most ``max_items`` per request (a group larger than that is split)."""
    if max_items < 1:
        raise ValueError("max_batch_items must be at least 1")
    if len(items) <= max_items:
        return [list(range(len(items)))] if items else []
    groups: dict[Any, list[int]] = {}
    for index, item in enumerate(items):
        gid = item.get("group_id")
        key = ("group", _key(gid)) if gid is not None else ("item", index)
        groups.setdefault(key, []).append(index)
    chunks: list[list[int]] = []
    current: list[int] = []
    for members in groups.values():
        for start in range(0, len(members), max_items):
            part = members[start : start + max_items]
            if len(current) + len(part) > max_items:
                chunks.append(current)
                current = []
            current.extend(part)
    if current:
        chunks.append(current)
    return chunks


@dataclass
class ScoreBatch:
    """The answer to one (possibly split) scoring call.

    ``results`` has one dict per item, in the order given: ``reward``, ``accuracy``, ``format``,
    ``task_type``, and ``bmas_forward``/``bmas_backward`` for open-ended items. ``groups`` holds the
    server's group statistics; ``requests`` says how many HTTP requests it took.
    """

    results: list[dict[str, Any]]
    groups: list[dict[str, Any]] = field(default_factory=list)
    table: dict[str, Any] = field(default_factory=dict)
    requests: int = 0

    @property
    def rewards(self) -> list[float]:
        return [float(r["reward"]) for r in self.results]


def merge(count: int, chunks: list[list[int]], answers: list[dict[str, Any]]) -> ScoreBatch:
    results: list[dict[str, Any] | None] = [None] * count
    groups: list[dict[str, Any]] = []
    table: dict[str, Any] = {}
    for indices, answer in zip(chunks, answers):
        rows = answer.get("results")
        if not isinstance(rows, list) or len(rows) != len(indices):
            got = len(rows) if isinstance(rows, list) else type(rows).__name__
            raise ValueError(f"the server returned {got} results for {len(indices)} items")
        for index, row in zip(indices, rows):
            results[index] = row
        groups.extend(answer.get("groups") or [])
        table = answer.get("table") or table
    return ScoreBatch(results=[r for r in results if r is not None], groups=groups, table=table,
                      requests=len(chunks))


def item_payload(item: Mapping[str, Any]) -> dict[str, Any]:
    """The wire form of one item: only the fields /score reads, so callers may pass richer dicts."""
    for name in ("response", "ground_truth", "task_type"):
        if name not in item:
            raise KeyError(f"every item needs {name!r}; got keys {sorted(item)}")
    out = {name: item[name] for name in ("response", "ground_truth", "task_type")}
    for name in ("id", "group_id"):
        if item.get(name) is not None:
            out[name] = item[name]
    return out
