"""One vocabulary of errors for the whole service: HTTP, the offline commands and ``serve``.

Each kind is a class that carries, once, everything a failure needs to be reported (TEI's
``ErrorType`` is the model): its HTTP ``status``, its ``type`` (the JSON body's ``error.type`` and
the ``reason`` label of ``reward_errors_total``), the ``exit_code`` a command ends with, and a
one-line ``summary`` that the OpenAPI document and docs/api.md show. Nothing else in the code
writes a status, a type string or an exit code next to a raise: the metrics' reason labels, the
OpenAPI error table, the docs' error table and the commands' exit codes are all read from
:func:`error_kinds`, and ``tests/test_errors.py`` fails when any of them drifts.

The body every HTTP error is rendered as (``reward_server/service/errors.py``)::

    {"error": {"type": "invalid_item", "message": "...",
               "details": [{"item": 3, "id": "r3", "field": "task_type", "message": "..."}]}}

This module is pure (no HTTP, no torch), so the reward rules, the engine and the offline commands
raise the same classes the service renders.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

MAX_DETAILS = 50  # a response lists at most this many (item, field) problems

# Exit codes of ``reward-server`` commands (docs/offline.md, docs/configuration.md).
EXIT_OK = 0
EXIT_DATA = 1  # a bad row, a failing service, a server bug
EXIT_USAGE = 2  # a bad setting or flag, a table or idf file that cannot be used, an output in the way
EXIT_RAY_MISSING = 3
EXIT_CLUSTER_UNREACHABLE = 4
EXIT_NOT_READY = 5  # Ray mode: the application did not become ready
EXIT_ADDRESS_IN_USE = 6  # the host:port to listen on is taken
EXIT_INTERRUPTED = 130  # SIGINT/SIGTERM during an offline run: rerun the same command to resume

_KINDS: dict[str, type[RewardServerError]] = {}


class RewardServerError(Exception):
    """Base of every error the service reports. Subclasses that define their own ``type`` are the
    kinds of the vocabulary; subclasses without one (``UnknownTaskType``) are refinements of their
    parent's kind, reported exactly as it is."""

    status: ClassVar[int] = 500
    type: ClassVar[str] = "internal_error"
    exit_code: ClassVar[int] = EXIT_DATA
    summary: ClassVar[str] = "A bug in the service; the message names the exception."
    retry_after: ClassVar[float | None] = None  # seconds, sent as Retry-After

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "type" in cls.__dict__:
            clash = _KINDS.get(cls.type)
            if clash is not None and clash.__qualname__ != cls.__qualname__:
                raise TypeError(f"error type {cls.type!r} is defined twice: {clash.__qualname__}, {cls.__qualname__}")
            _KINDS[cls.type] = cls

    def __init__(
        self,
        message: str,
        details: Sequence[Mapping[str, Any]] = (),
        *,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details = [dict(d) for d in list(details)[:MAX_DETAILS]]
        self.headers = dict(headers or {})
        if self.retry_after is not None:
            self.headers.setdefault("Retry-After", f"{max(1, round(self.retry_after))}")

    def __str__(self) -> str:
        return self.message

    def body(self) -> dict[str, Any]:
        """The JSON body every answer of this error has, whoever sends it."""
        return {"error": {"type": self.type, "message": self.message, "details": self.details}}

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled by state, not by constructor arguments (refinements take other ones): a family's
        error raised in a worker process arrives in the server as the same error."""
        return (_rebuild, (type(self), self.message, dict(self.__dict__)))

    def restated(self, message: str, details: Sequence[Mapping[str, Any]]) -> RewardServerError:
        """The same error (same kind, status, headers) in other words: a trainer protocol's field
        names instead of ``/score``'s."""
        clone = copy.copy(self)
        clone.args = (message,)
        clone.message = message
        clone.details = [dict(d) for d in list(details)[:MAX_DETAILS]]
        return clone

    @classmethod
    def for_field(cls, field: str, message: str, *, item: int | None = None, prefix: bool = True) -> RewardServerError:
        """The error for one field: ``field: message`` with one detail naming it."""
        text = f"{field}: {message}" if prefix else message
        return cls(text, [{"item": item, "field": field, "message": message}])


def _rebuild(cls: type[RewardServerError], message: str, state: dict[str, Any]) -> RewardServerError:
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    error.__dict__.update(state)
    return error


def error_kinds() -> list[type[RewardServerError]]:
    """Every kind, in the order defined (the vocabulary)."""
    return list(_KINDS.values())


def kind_of(type_: str) -> type[RewardServerError] | None:
    return _KINDS.get(type_)


# --- the request ---------------------------------------------------------------------------------


class InvalidRequest(RewardServerError):
    status, type, exit_code = 422, "invalid_request", EXIT_USAGE
    summary = ("The body as a whole (field `body`): not JSON, not UTF-8, nested more than 200 levels, an integer "
               "of more than 4,300 digits, or sent without `Content-Type: application/json`; a missing field, a "
               "wrong type (`format_weight: true` or `\"2\"`: numbers only), a NaN or Infinity where the schema "
               "has a number (an id, a bare-number ground truth, an option), or a bad option or query parameter; "
               "`details` name the item and field when there is one.")


class InvalidItem(RewardServerError):
    """One or more items cannot be scored; ``details`` name each (item, field)."""

    status, type, exit_code = 422, "invalid_item", EXIT_DATA
    summary = ("An item cannot be scored: unknown task type, malformed ground truth (no valid box, zero-area box, "
               "yes/no truth without yes or no, empty, NaN or Infinity inside a box list or an object), a text longer than "
               "REWARD_MAX_CHARS_PER_TEXT or not Unicode. Every bad item is listed (up to 50).")


class ItemFieldError(InvalidItem):
    """A client mistake found while reading one item, before the item's index is known: the pure
    reward rules raise it (they cannot answer HTTP), and validation adds the index. ``field``
    names the request field to fix. A response is model output and never raises."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message, [{"item": None, "field": field, "message": message}])
        self.field = field


class TooManyItems(RewardServerError):
    status, type, exit_code = 413, "too_many_items", EXIT_USAGE
    summary = "More items in one request than REWARD_MAX_ITEMS_PER_REQUEST."


class BodyTooLarge(RewardServerError):
    status, type, exit_code = 413, "body_too_large", EXIT_USAGE
    summary = "The request body is larger than REWARD_MAX_BODY_BYTES (checked on Content-Length and on the bytes received)."


class Unauthorized(RewardServerError):
    status, type, exit_code = 401, "unauthorized", EXIT_USAGE
    summary = ("REWARD_API_TOKEN (or REWARD_ADMIN_TOKEN for /admin/reload) is set and the bearer token is missing "
               "or wrong; checked before the body is read.")


class Forbidden(RewardServerError):
    status, type, exit_code = 403, "forbidden", EXIT_USAGE
    summary = "The token is valid but may not do this: another job's work, or a scope it lacks."


class NotFound(RewardServerError):
    status, type, exit_code = 404, "not_found", EXIT_USAGE
    summary = "No such route."


class MethodNotAllowed(RewardServerError):
    status, type, exit_code = 405, "method_not_allowed", EXIT_USAGE
    summary = "The route exists, the method does not (the `Allow` header lists the right ones)."


class HttpError(RewardServerError):
    """A protocol-level refusal by the web framework that is none of the above; the status is the
    framework's (the only kind whose status is per instance)."""

    status, type, exit_code = 400, "http_error", EXIT_USAGE
    summary = "Another protocol-level refusal by the web framework (its status as raised)."

    def __init__(self, message: str, status: int = 400, *, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message, headers=headers)
        self.status = status  # type: ignore[misc]


class AdminDisabled(RewardServerError):
    status, type, exit_code = 404, "admin_disabled", EXIT_USAGE
    summary = "The admin API is off: start the server with REWARD_ADMIN_TOKEN."


class ReloadInProgress(RewardServerError):
    status, type, exit_code = 409, "reload_in_progress", EXIT_USAGE
    summary = "Another table reload is in progress."


class InvalidTable(RewardServerError):
    """A checkpoint or idf file cannot give a tokenizer and an embedding table (every message names
    the path and what would fix it)."""

    status, type, exit_code = 422, "invalid_table", EXIT_USAGE
    summary = "The checkpoint, device, dtype or idf file cannot be used; the message says why."


class DifficultyDisabled(RewardServerError):
    status, type, exit_code = 404, "difficulty_disabled", EXIT_USAGE
    summary = "Per-prompt difficulty is off: start the server with REWARD_STATE_PATH."


class UnknownPrompt(RewardServerError):
    status, type, exit_code = 404, "unknown_prompt", EXIT_USAGE
    summary = "No scored item has carried this prompt id."


class UnknownPool(RewardServerError):
    status, type, exit_code = 404, "unknown_pool", EXIT_USAGE
    summary = "No pool of that name was registered."


class KTooLarge(RewardServerError):
    status, type, exit_code = 422, "k_too_large", EXIT_USAGE
    summary = "More prompt ids asked for than there are candidates."


class UnknownModel(RewardServerError):
    status, type, exit_code = 422, "unknown_model", EXIT_USAGE
    summary = "The request names a table (`model`) this server does not have; the message lists the loaded and loadable names."


class MissingExtra(RewardServerError):
    status, type, exit_code = 422, "missing_extra", EXIT_USAGE
    summary = "The task type needs an optional extra this server lacks (the message names the pip install)."


class RequestTimeout(RewardServerError):
    status, type, exit_code = 408, "request_timeout", EXIT_DATA
    summary = "The request's headers or body did not arrive within header_timeout_seconds / body_timeout_seconds."


class ClientClosed(RewardServerError):
    status, type, exit_code = 499, "client_closed", EXIT_DATA
    summary = "The client went away (or was cut off by a read deadline) before its request was read; nobody sees this answer."


class Overloaded(RewardServerError):
    status, type, exit_code = 429, "overloaded", EXIT_DATA
    summary = "The scoring queue is full (REWARD_QUEUE_MAX_ITEMS); retry after the Retry-After seconds."
    retry_after = 1.0


# --- the server ------------------------------------------------------------------------------------


class NotReady(RewardServerError):
    status, type, exit_code = 503, "not_ready", EXIT_NOT_READY
    summary = "The server is starting or stopping (scoring), or its device failed."


class Draining(RewardServerError):
    status, type, exit_code = 503, "draining", EXIT_NOT_READY
    summary = "The server is shutting down (readiness only): send new requests elsewhere."


class ServerBusy(RewardServerError):
    status, type, exit_code = 503, "busy", EXIT_DATA
    summary = "The server holds max_connections connections; retry after the Retry-After seconds."
    retry_after = 1.0


class StateUnavailable(RewardServerError):
    status, type, exit_code = 503, "state_unavailable", EXIT_DATA
    summary = "Rewards were computed but the difficulty state could not be updated durably; retry."


class InternalError(RewardServerError):
    status, type, exit_code = 500, "internal_error", EXIT_DATA
    summary = "A bug in the service; the message names the exception."


# --- commands (never answered over HTTP) -------------------------------------------------------------


class UsageError(RewardServerError):
    """A command was asked for something it cannot do: a bad flag or setting, a missing input, an
    output in the way or held by another run."""

    status, type, exit_code = 400, "usage", EXIT_USAGE
    summary = "A command's flag, setting, input or output is unusable."


class DataError(RewardServerError):
    """A command met data it cannot use (a bad row) or a service that kept failing."""

    status, type, exit_code = 422, "bad_data", EXIT_DATA
    summary = "A command met a bad row or a failing service."


class AddressInUse(RewardServerError):
    status, type, exit_code = 503, "address_in_use", EXIT_ADDRESS_IN_USE
    summary = "serve: the host:port to listen on is taken by another process."


class RayNotInstalled(RewardServerError):
    status, type, exit_code = 503, "ray_missing", EXIT_RAY_MISSING
    summary = "serve --ray: Ray Serve is not installed; the message says how to install it."


class ClusterUnreachable(RewardServerError):
    status, type, exit_code = 503, "cluster_unreachable", EXIT_CLUSTER_UNREACHABLE
    summary = "serve --ray: no Ray cluster answers at --ray-address."


class DeployFailed(RewardServerError):
    status, type, exit_code = 503, "deploy_failed", EXIT_NOT_READY
    summary = "serve --ray: the application did not become ready; Serve's reason is printed."


class Interrupted(RewardServerError):
    status, type, exit_code = 503, "interrupted", EXIT_INTERRUPTED
    summary = "A command was interrupted; its checkpoint is on disk, rerun it to resume."


#: The kinds only the commands raise: they have no place in the HTTP error table or metrics.
COMMAND_ONLY: tuple[type[RewardServerError], ...] = (
    UsageError, DataError, AddressInUse, RayNotInstalled, ClusterUnreachable, DeployFailed, Interrupted,
)


def http_kinds() -> list[type[RewardServerError]]:
    """The kinds a route may answer with: the metrics' reason labels and the API's error table."""
    return [kind for kind in error_kinds() if kind not in COMMAND_ONLY]


def summarise(details: Sequence[Mapping[str, Any]]) -> str:
    """One line for a list of (item, field) problems: the first, and how many more."""
    first = details[0]
    where = f"item {first['item']}: " if first.get("item") is not None else ""
    more = f" (and {len(details) - 1} more)" if len(details) > 1 else ""
    return f"{where}{first['field']}: {first['message']}{more}"
