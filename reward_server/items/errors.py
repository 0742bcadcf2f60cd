"""Rejections of client input, named by item and field, free of HTTP (SPEC §11).

    {"error": {"type": "invalid_item", "message": "...",
               "details": [{"item": 3, "id": "r3", "field": "task_type", "message": "..."}]}}

The HTTP service renders a :class:`RequestRejected` as that JSON shape with its status; the
offline commands turn its first detail into a line-and-field message.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

MAX_DETAILS = 50

_EXPECTED = {
    "response": "a string",
    "task_type": "a string",
    "ground_truth": "a string, number, list or object",
    "id": "a string or an integer",
    "group_id": "a string or an integer",
    "prompt_id": "a string or an integer",
    "items": "a list of items",
    "options.format_weight": "a number",
    "format_weight": "a number",
}
_JSON_TYPES = {dict: "object", list: "array", str: "string", int: "integer", float: "number", bool: "boolean"}


class RequestRejected(Exception):
    """A client mistake: the HTTP status it is answered with, a type, a message, per-field details."""

    def __init__(self, status: int, type_: str, message: str, details: Sequence[dict[str, Any]] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.type = type_
        self.message = message
        self.details = list(details)[:MAX_DETAILS]


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return _JSON_TYPES.get(type(value), type(value).__name__)


def validation_details(errors: Sequence[dict[str, Any]], body: Any) -> list[dict[str, Any]]:
    """Turn pydantic's error list into one detail per (item, field), with a message a user can act on."""
    details: dict[tuple[int | None, str], dict[str, Any]] = {}
    for err in errors:
        loc = [part for part in err.get("loc", ()) if part != "body"]
        item: int | None = None
        if len(loc) >= 2 and loc[0] == "items" and isinstance(loc[1], int):
            item = loc[1]
            field = str(loc[2]) if len(loc) > 2 else "item"
        elif loc and loc[0] == "options" and len(loc) > 1:
            field = f"options.{loc[1]}"
        else:
            field = str(loc[0]) if loc and not isinstance(loc[0], int) else "body"
        if (item, field) in details:
            continue  # a union reports one error per member; one line per field is enough
        kind = err.get("type", "")
        if kind == "missing":
            message = "field required"
        elif kind == "json_invalid":
            message = f"body is not valid JSON: {err.get('ctx', {}).get('error', err.get('msg'))}"
        elif field == "body" and isinstance(err.get("input"), (bytes, str)):
            message = "body was not read as JSON: send it with 'Content-Type: application/json'"
        elif field == "body":
            message = "body must be a JSON object like {\"items\": [...], \"options\": {...}}"
        elif field == "item":
            message = f"each item must be a JSON object, got {_json_type(err.get('input'))}"
        elif isinstance(err.get("input"), float) and not math.isfinite(err["input"]):
            message = f"must be a finite number, got {err['input']}"
        elif field in _EXPECTED and kind.endswith("_type"):  # a wrong JSON type, not a bad value
            message = f"must be {_EXPECTED[field]}, got {_json_type(err.get('input'))}"
        else:
            message = str(err.get("msg", "invalid value"))
        detail: dict[str, Any] = {"item": item, "field": field, "message": message}
        if item is not None and isinstance(body, dict):
            items = body.get("items")
            if isinstance(items, list) and item < len(items) and isinstance(items[item], dict):
                echoed = items[item].get("id")
                # Only an id the schema allows (string or integer; JSON true is a Python int).
                if isinstance(echoed, (str, int)) and not isinstance(echoed, bool):
                    detail["id"] = echoed
        details[(item, field)] = detail
    return list(details.values())[:MAX_DETAILS]


def summarise(details: Sequence[dict[str, Any]]) -> str:
    first = details[0]
    where = f"item {first['item']}: " if first.get("item") is not None else ""
    more = f" (and {len(details) - 1} more)" if len(details) > 1 else ""
    return f"{where}{first['field']}: {first['message']}{more}"
