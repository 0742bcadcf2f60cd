"""pydantic's validation errors in the service's words: one detail per (item, field), with a
message a user can act on. Free of HTTP, shared by the service and the offline commands; the
error classes themselves are :mod:`reward_server.errors`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from reward_server.difficulty.ids import prompt_id_problem
from reward_server.errors import MAX_DETAILS

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
        elif field == "prompt_id" and (problem := prompt_id_problem(err.get("input"))) is not None:
            message = problem  # the same words as everywhere a prompt id is read
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
                # Only an id the schema allows (a string of at most 256 characters or a 64-bit
                # integer; JSON true is a Python int): a 10 MB id is never sent back.
                if isinstance(echoed, str) and len(echoed) <= 256 or (
                    isinstance(echoed, int) and not isinstance(echoed, bool) and -(2**63) <= echoed < 2**63
                ):
                    detail["id"] = echoed
        details[(item, field)] = detail
    return list(details.values())[:MAX_DETAILS]
