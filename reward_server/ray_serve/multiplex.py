"""Several tables across replicas with Serve's model multiplexing (SPEC §15, issue #23).

A request for a named table carries it as the *multiplexed model id*: the
``serve_multiplexed_model_id`` header over HTTP (Serve's proxy reads it, ``-`` spelling too), or
``handle.options(multiplexed_model_id=...)`` from Ray code (``mixed_reward_client.ray`` sets it
from its ``model``). Serve routes such a request to a replica that already holds that id, else to
the replica holding the fewest; it learns which replica holds what from each replica's
``@serve.multiplexed`` loader, so every replica calls its loader for each request that names a
table. Serve's proxy cannot read a JSON body or ``?model=``: only the header routes.

:class:`TableRouting` is the ASGI layer in front of the replica's app that does that, for the
scoring routes only (``/score``, ``/get_reward``, ``/slime``):

* a known table name is handed to the replica's multiplexed loader (Serve records it; the loader
  returns at once: the table itself loads in the batcher, which already does it off the event
  loop, one load at a time, and says so in the request's timing; rule-scored items never wait);
* the name becomes ``?model=`` when the query has none, so the unchanged routes score with it;
  a ``model`` in the body still wins (``tenancy_of``: body, then query). An unknown name is not
  handed to Serve (a typo must not evict a real table from Serve's view of this replica) and is
  answered by the route as the usual 422 listing the tables.

Two LRUs see the same sequence of tables: Serve's list per replica (``max_num_models_per_replica``,
set to ``--max-resident-tables``) and the replica's :class:`TableRegistry`, which owns the memory.
Requests without a model id (the default table) count only in the registry, so send every request
of a multiplexed deployment with one (or ``--pin default``). The batcher splits each device batch
by table (Ray issue #50695: ``@serve.batch`` does not group by model id) and shares it fairly
between jobs, per replica.

No ray import here: the loader is passed in.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from urllib.parse import parse_qsl, urlencode

from starlette.types import ASGIApp, Receive, Scope, Send

from reward_server.engine.tables import TableRegistry
from reward_server.errors import UnknownModel

MODEL_HEADER = "serve_multiplexed_model_id"  # Serve's own name (ray.serve._private.constants)
SCORING_PATHS = frozenset({"/score", "/get_reward", "/slime"})


def model_header(headers: list[tuple[bytes, bytes]] | dict[str, str]) -> str | None:
    """The multiplexed model id a request carries, in either spelling Serve's proxy accepts
    (``serve_multiplexed_model_id``, ``serve-multiplexed-model-id``); None when absent or empty."""
    pairs = headers.items() if isinstance(headers, dict) else (
        (k.decode("latin-1"), v.decode("latin-1")) for k, v in headers
    )
    for key, value in pairs:
        if key.lower().replace("-", "_") == MODEL_HEADER:
            return value.strip() or None
    return None


def app_path(scope: Scope) -> str:
    """The path inside the application: Serve mounts it under ``--ray-route-prefix``, and
    depending on the Starlette version ``path`` does or does not include ``root_path``."""
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "") or ""
    if root and path.startswith(root):
        path = path[len(root):] or "/"
    return path


class TableRouting:
    """Pure ASGI middleware: tell Serve which table a scoring request is for, and let the routes
    see it as ``?model=`` (module docstring)."""

    def __init__(
        self, app: ASGIApp, tables: Callable[[], TableRegistry], hold: Callable[[str], Awaitable[object]],
    ) -> None:
        self.app = app
        self._tables = tables
        self._hold = hold

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("method") == "POST" and app_path(scope) in SCORING_PATHS:
            scope = await self._route(scope)
        await self.app(scope, receive, send)

    async def _route(self, scope: Scope) -> Scope:
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        named = next((value for key, value in query if key == "model" and value), None)
        header = model_header(scope.get("headers", []))
        model = named or header
        if model is None:
            return scope
        try:
            known = self._tables().resolve(model).name
        except UnknownModel:
            known = None  # the route answers the 422 naming the tables
        if known is not None:
            await self._hold(known)
        if named is None:
            query = [(k, v) for k, v in query if k != "model"] + [("model", model)]
            scope = {**scope, "query_string": urlencode(query).encode("latin-1")}
        return scope


__all__ = ["MODEL_HEADER", "SCORING_PATHS", "TableRouting", "app_path", "model_header"]
