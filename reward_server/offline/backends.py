"""Who computes the rewards: the engine in this process, or a running service (``--url``).

Both answer the same question for a batch of validated rows, so the rest of the pipeline (order,
checkpoints, output) cannot tell them apart, and a run may even be resumed in the other mode as
long as the embedding table is the same (its content hash is part of the run's fingerprint).
"""

from __future__ import annotations

import functools
import time
from typing import Any, Protocol

from reward_server.engine.pool import ScorerPool
from reward_server.engine.scorer import RewardEngine
from reward_server.errors import DataError
from reward_server.items.settings import Settings
from reward_server.offline.rows import ParsedRow
from reward_server.rewards.options import ResolvedOptions
from reward_server.rewards.scoring import ItemReward

#: Keys of a /score result that are not a family's named sub-score.
_NOT_SUB_SCORES = frozenset({"id", "task_type", "reward", "accuracy", "format", "group_id", "prompt_id",
                             "timed_out", "parsed"})


class BackendError(DataError):
    """The scorer could not be reached or refused the batch for a reason no retry fixes."""


class Scorer(Protocol):
    def identity(self) -> dict[str, Any]:
        """What scored the rows (table source and content hash); part of the resume fingerprint."""
        ...

    def score(self, rows: list[ParsedRow]) -> list[ItemReward]:
        """One score per item, flattened in row order (a row with k responses contributes k)."""
        ...

    def close(self) -> None: ...


@functools.lru_cache(maxsize=1)
def _cached_table(model_path: str | None, device: str | None, dtype: str | None) -> Any:
    """Load once per process: tests and notebooks call ``main()`` repeatedly, and a load costs seconds."""
    from reward_server.embeddings.loader import load_table

    return load_table(model_path, device=device, dtype=dtype)


class LocalScorer:
    """The service's engine, in-process: no server, same numbers."""

    def __init__(self, settings: Settings) -> None:
        from reward_server.engine.idf import load_idf

        table = _cached_table(settings.model_path, settings.device, settings.dtype)
        idf = load_idf(settings.idf_path, table.tokenizer, table.vocab_size) if settings.idf_path else None
        self.pool = ScorerPool(settings.math_workers, settings.math_timeout_seconds, settings.rewards_module)
        self.engine = RewardEngine(
            table,
            memory_budget_bytes=settings.memory_budget_mb << 20,
            truth_cache_entries=settings.truth_cache_entries,
            idf=idf,
            pool=self.pool,  # math items: verified in worker processes under the same deadline
        )

    def identity(self) -> dict[str, Any]:
        info = self.engine.table.info()
        idf = self.engine.idf
        return {"table_hash": info["content_hash"], "table_source": info["source"],
                "idf_hash": idf.content_hash if idf is not None else None}

    def score(self, rows: list[ParsedRow]) -> list[ItemReward]:
        items = [item for row in rows for item in row.items]
        if not items:
            return []
        scores, _ = self.engine.score(items)
        return scores

    def close(self) -> None:
        self.pool.close()


class ItemsRejected(Exception):
    """The service refused some rows' items (422) although they passed the local checks (its limits
    or version differ). ``rows`` maps the index of each refused row in the batch to
    ``(item index within the row, API field, message)``; every other row of the batch is fine."""

    def __init__(self, rows: dict[int, tuple[int, str, str]]) -> None:
        super().__init__(f"the service rejected {len(rows)} row(s)")
        self.rows = rows


class RemoteScorer:
    """``POST /score`` on a running service. Retries what a retry can fix (connection errors, 429,
    503), halves batches the server finds too large (413), and stops on anything else.

    The service's ``GET /v1/info`` supplies the defaults (``format_weight``, ``bmas_reduction``:
    what the service would apply to a request without options) and the limits rows are checked
    against; an option passed explicitly (not None) overrides the service's default."""

    RETRIES = 8
    MAX_RETRY_AFTER = 60.0
    transport: Any = None  # an httpx transport (tests use httpx.MockTransport); None: the network
    sleep = staticmethod(time.sleep)  # the wait between retries, replaceable alone (tests record it)

    def __init__(
        self,
        url: str,
        *,
        format_weight: float | None = None,
        bmas_reduction: str | None = None,
        profile: str | None = None,
        token: str | None = None,
        timeout: float = 300.0,
    ) -> None:
        import httpx

        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._httpx = httpx
        self.client = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout, transport=self.transport)
        self.url = url
        info = self._request("GET", "/v1/info")
        self.table_hash = info.get("content_hash")
        self.table_source = info.get("source") or info.get("model")
        defaults = info.get("defaults") or {}
        self.options = {
            "format_weight": float(format_weight if format_weight is not None else defaults.get("format_weight", 1.0)),
            "bmas_reduction": bmas_reduction or defaults.get("bmas_reduction") or "sum",
            "profile": profile or defaults.get("profile") or "mixed-r1",
        }
        # A service older than profiles refuses an unknown option: send it only when it is known.
        self._request_options = (
            self.options if profile is not None or "profiles" in info
            else {k: v for k, v in self.options.items() if k != "profile"}
        )
        robust = (info.get("profiles") or {}).get("robust") or {}
        self.idf_hash = (robust.get("token_weights") or {}).get("content_hash")
        #: the service's ``limits`` (max_items_per_request, max_chars_per_text, max_body_bytes); empty
        #: for a service too old to publish them (then the local settings apply)
        self.limits: dict[str, int] = {
            k: int(v) for k, v in (info.get("limits") or {}).items() if isinstance(v, (int, float))
        }

    def score_options(self) -> ResolvedOptions:
        return ResolvedOptions(
            format_weight=self.options["format_weight"],
            bmas_reduction=self.options["bmas_reduction"],
            profile=self.options["profile"],
        )

    def identity(self) -> dict[str, Any]:
        return {"table_hash": self.table_hash, "table_source": self.table_source, "idf_hash": self.idf_hash}

    def score(self, rows: list[ParsedRow]) -> list[ItemReward]:
        payload: list[dict[str, Any]] = []
        owners: list[tuple[int, int]] = []  # per item: (row index in ``rows``, item index within the row)
        for r, row in enumerate(rows):
            for i, item in enumerate(row.items):
                payload.append({"response": item.response, "ground_truth": row.ground_truth, "task_type": row.task.name})
                owners.append((r, i))
        step = max(1, self.limits.get("max_items_per_request", len(payload) or 1))
        scores: list[ItemReward] = []
        for lo in range(0, len(payload), step):
            scores += self._score_items(payload[lo : lo + step], owners[lo : lo + step])
        return scores

    def _score_items(self, payload: list[dict[str, Any]], owners: list[tuple[int, int]]) -> list[ItemReward]:
        """Score ``payload``; ``owners`` (parallel to it) says which row and item each entry is, so
        errors name the right line however the batch was split."""
        if not payload:
            return []
        try:
            body = self._request("POST", "/score", json={"items": payload, "options": self._request_options})
        except _TooLarge:
            if len(payload) == 1:
                raise BackendError(f"{self.url} refuses even a single item as too large (413)") from None
            half = len(payload) // 2
            return self._score_items(payload[:half], owners[:half]) + self._score_items(payload[half:], owners[half:])
        except _Rejected as exc:
            refused = self._locate(exc, owners)
            if refused:
                raise ItemsRejected(refused) from None
            message = exc.body.get("error", {}).get("message") or exc.text
            raise BackendError(f"{self.url} rejected a batch ({exc.status}): {message}") from None
        table = (body.get("table") or {}).get("content_hash")
        if table is not None and self.table_hash is not None and table != self.table_hash:
            raise BackendError(
                f"the service at {self.url} swapped its embedding table during the run ({self.table_hash} -> {table}); "
                "rows scored so far are kept: rerun to resume, or --restart to rescore with the new table"
            )
        return [
            ItemReward(
                reward=r["reward"],
                accuracy=r["accuracy"],
                format=r["format"],
                sub_scores={k: v for k, v in r.items() if k not in _NOT_SUB_SCORES and isinstance(v, (int, float))},
                timed_out=bool(r.get("timed_out", False)),
            )
            for r in body["results"]
        ]

    @staticmethod
    def _locate(exc: _Rejected, owners: list[tuple[int, int]]) -> dict[int, tuple[int, str, str]]:
        """The service's item indices (into this request) turned back into rows of the batch."""
        if exc.status != 422:
            return {}
        refused: dict[int, tuple[int, str, str]] = {}
        for detail in exc.body.get("error", {}).get("details") or []:
            index = detail.get("item") if isinstance(detail, dict) else None
            if not isinstance(index, int) or not 0 <= index < len(owners):
                return {}  # not an item-level refusal: the request as a whole is wrong
            row, item = owners[index]
            refused.setdefault(row, (item, str(detail.get("field") or "(row)"), str(detail.get("message") or "")))
        return refused

    def _retry_delay(self, response: Any, backoff: float) -> float:
        """``Retry-After`` in seconds when it is a number; an HTTP-date or garbage: our own backoff."""
        try:
            value = float(response.headers.get("retry-after", backoff))
        except ValueError:
            return backoff
        return min(value, self.MAX_RETRY_AFTER) if value >= 0 else backoff  # NaN fails >= 0 too

    def _request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        httpx = self._httpx
        delay = 0.5
        for attempt in range(self.RETRIES):
            try:
                response = self.client.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                if attempt == self.RETRIES - 1:
                    raise BackendError(f"cannot reach {self.url}{path}: {exc}") from exc
                self.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            status = response.status_code
            if status < 300:
                return response.json()
            if status in (429, 502, 503, 504) and attempt < self.RETRIES - 1:
                self.sleep(self._retry_delay(response, delay))
                delay = min(delay * 2, 10.0)
                continue
            if status == 413:
                raise _TooLarge()
            if status in (401, 403):
                raise BackendError(f"{self.url}{path} answered {status}: pass the service's token with --api-token")
            try:
                body = response.json()
            except ValueError:
                body = {}
            if 400 <= status < 500:
                raise _Rejected(status, body if isinstance(body, dict) else {}, response.text[:500])
            raise BackendError(f"{self.url}{path} answered {status}: {response.text[:500]}")
        raise BackendError(f"{self.url}{path}: gave up after {self.RETRIES} attempts")

    def close(self) -> None:
        self.client.close()


class _TooLarge(Exception):
    pass


class _Rejected(Exception):
    def __init__(self, status: int, body: dict[str, Any], text: str) -> None:
        super().__init__(text)
        self.status = status
        self.body = body
        self.text = text


__all__ = ["BackendError", "ItemsRejected", "LocalScorer", "RemoteScorer", "Scorer"]
