"""One error vocabulary (reward_server/errors.py): every place that reports an error derives from it,
and this file fails when one of them drifts (TEI's ErrorType: a new kind cannot be added without
its status, type, exit code and summary, and nothing else may invent one)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import httpx

from reward_server import errors
from reward_server.service.metrics import ERROR_REASONS

PACKAGE = Path(errors.__file__).resolve().parent


def test_every_kind_declares_a_unique_type_status_exit_code_and_summary() -> None:
    kinds = errors.error_kinds()
    assert len({kind.type for kind in kinds}) == len(kinds)
    for kind in kinds:
        assert re.fullmatch(r"[a-z][a-z_]{2,47}", kind.type), kind
        assert 400 <= kind.status <= 599, kind
        assert kind.exit_code in {errors.EXIT_DATA, errors.EXIT_USAGE, errors.EXIT_RAY_MISSING,
                                  errors.EXIT_CLUSTER_UNREACHABLE, errors.EXIT_NOT_READY,
                                  errors.EXIT_ADDRESS_IN_USE, errors.EXIT_INTERRUPTED}, kind
        assert kind.summary and kind.summary != errors.RewardServerError.summary or kind is errors.InternalError


def test_the_metrics_reasons_are_the_http_kinds() -> None:
    assert ERROR_REASONS == (*(kind.type for kind in errors.http_kinds()), "other")


def test_no_module_writes_an_error_type_or_body_by_hand() -> None:
    """A raise names a kind; only service/errors.py renders the JSON body (and connections.py,
    which answers before any app runs, from a kind)."""
    allowed = {PACKAGE / "errors.py", PACKAGE / "service" / "errors.py", PACKAGE / "service" / "connections.py"}
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path in allowed:
            continue
        text = path.read_text()
        if re.search(r"""["']error["']\s*:\s*\{\s*["']type["']""", text):
            offenders.append(f"{path}: builds an error body")
        for node in ast.walk(ast.parse(text)):
            # RequestRejected(422, "invalid_item", ...)-style: a status and a type literal in a call
            if isinstance(node, ast.Call) and len(node.args) >= 2 and all(
                isinstance(a, ast.Constant) for a in node.args[:2]
            ) and isinstance(node.args[0].value, int) and 400 <= node.args[0].value <= 599 and isinstance(
                node.args[1].value, str
            ):
                offenders.append(f"{path}:{node.lineno}: a status and a type written at a call")
    assert not offenders, offenders


def test_the_openapi_error_descriptions_name_only_known_types(server) -> None:
    document = httpx.get(server.url + "/openapi.json").json()
    known = {kind.type for kind in errors.http_kinds()}
    named = set()
    for operations in document["paths"].values():
        for operation in operations.values():
            for status, response in operation["responses"].items():
                if status.startswith(("4", "5")):
                    found = set(re.findall(r"`([a-z_]+)`:", response.get("description", "")))
                    named |= found
                    for type_ in found:
                        assert errors.kind_of(type_).status == int(status), (type_, status)
    assert named and named <= known
    # the scoring routes document the kinds they raise
    score = document["paths"]["/score"]["post"]["responses"]
    assert {"unauthorized", "too_many_items", "invalid_item", "overloaded"} <= set(
        re.findall(r"`([a-z_]+)`:", " ".join(r.get("description", "") for r in score.values()))
    )


def test_an_error_survives_a_worker_process() -> None:
    """A family's client error raised in a pool worker arrives in the server as the same error."""
    import pickle

    from reward_server.rewards.errors import InvalidGroundTruth

    error = pickle.loads(pickle.dumps(InvalidGroundTruth("no gold")))
    assert isinstance(error, InvalidGroundTruth) and (error.field, error.message, error.status) == (
        "ground_truth", "no gold", 422)
