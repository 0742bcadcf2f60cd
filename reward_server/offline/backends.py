"""Who computes the rewards: the engine in this process, or a running service (``--url``).

Both answer the same question for a batch of validated rows, so the rest of the pipeline (order,
checkpoints, output) cannot tell them apart, and a run may even be resumed in the other mode as
long as the embedding table is the same (its content hash is part of the run's fingerprint).
"""

from __future__ import annotations

import functools
import time
from typing import Any, Protocol

from reward_server.engine.scorer import ItemScore, RewardEngine, ScoreOptions
from reward_server.offline.rows import ParsedRow
from reward_server.service.settings import Settings


class BackendError(Exception):
    """The scorer could not be reached or refused the batch for a reason no retry fixes."""


class Scorer(Protocol):
    def identity(self) -> dict[str, Any]:
        """What scored the rows (table source and content hash); part of the resume fingerprint."""
        ...

    def score(self, rows: list[ParsedRow]) -> list[ItemScore]:
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
        table = _cached_table(settings.model_path, settings.device, settings.dtype)
        self.engine = RewardEngine(
            table,
            memory_budget_bytes=settings.memory_budget_mb << 20,
            truth_cache_entries=settings.truth_cache_entries,
        )

    def identity(self) -> dict[str, Any]:
        info = self.engine.table.info()
        return {"table_hash": info["content_hash"], "table_source": info["source"]}

    def score(self, rows: list[ParsedRow]) -> list[ItemScore]:
        items = [item for row in rows for item in row.items]
        if not items:
            return []
        scores, _ = self.engine.score(items)
        return scores

    def close(self) -> None:
        pass


class RemoteScorer:
    """``POST /score`` on a running service. Retries what a retry can fix (connection errors, 429,
    503), halves batches the server finds too large (413), and stops on anything else."""

    RETRIES = 8

    def __init__(self, url: str, options: ScoreOptions, *, token: str | None = None, timeout: float = 300.0) -> None:
        import httpx

        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._httpx = httpx
        self.client = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout)
        self.url = url
        self.options = {"format_weight": options.format_weight, "bmas_reduction": options.bmas_reduction}
        info = self._request("GET", "/v1/info")
        self.table_hash = info.get("content_hash")
        self.table_source = info.get("source") or info.get("model")

    def identity(self) -> dict[str, Any]:
        return {"table_hash": self.table_hash, "table_source": self.table_source}

    def score(self, rows: list[ParsedRow]) -> list[ItemScore]:
        payload = [
            {"response": item.response, "ground_truth": row.ground_truth, "task_type": row.task.value}
            for row in rows
            for item in row.items
        ]
        return self._score_items(payload, rows)

    def _score_items(self, payload: list[dict[str, Any]], rows: list[ParsedRow]) -> list[ItemScore]:
        if not payload:
            return []
        try:
            body = self._request("POST", "/score", json={"items": payload, "options": self.options})
        except _TooLarge:
            if len(payload) == 1:
                raise BackendError(f"{self.url} refuses even a single item as too large (413)") from None
            half = len(payload) // 2
            return self._score_items(payload[:half], rows) + self._score_items(payload[half:], rows)
        except _Rejected as exc:
            raise BackendError(self._locate(exc, payload, rows)) from None
        table = (body.get("table") or {}).get("content_hash")
        if table is not None and self.table_hash is not None and table != self.table_hash:
            raise BackendError(
                f"the service at {self.url} swapped its embedding table during the run ({self.table_hash} -> {table}); "
                "rows scored so far are kept: rerun to resume, or --restart to rescore with the new table"
            )
        return [
            ItemScore(
                reward=r["reward"],
                accuracy=r["accuracy"],
                format=r["format"],
                bmas_forward=r.get("bmas_forward"),
                bmas_backward=r.get("bmas_backward"),
            )
            for r in body["results"]
        ]

    @staticmethod
    def _locate(exc: _Rejected, payload: list[dict[str, Any]], rows: list[ParsedRow]) -> str:
        """Turn the service's item index back into a line number of the input file."""
        details = exc.body.get("error", {}).get("details") or []
        if details and isinstance(details[0].get("item"), int):
            index = details[0]["item"]
            for row in rows:
                if index < len(row.items):
                    return f"line {row.source.line}: the service rejected it: {details[0].get('field')}: {details[0].get('message')}"
                index -= len(row.items)
        message = exc.body.get("error", {}).get("message") or exc.text
        return f"the service rejected a batch ({exc.status}): {message}"

    def _request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        httpx = self._httpx
        delay = 0.5
        for attempt in range(self.RETRIES):
            try:
                response = self.client.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                if attempt == self.RETRIES - 1:
                    raise BackendError(f"cannot reach {self.url}{path}: {exc}") from exc
                time.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            status = response.status_code
            if status < 300:
                return response.json()
            if status in (429, 502, 503, 504) and attempt < self.RETRIES - 1:
                time.sleep(float(response.headers.get("retry-after", delay)))
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


__all__ = ["BackendError", "LocalScorer", "RemoteScorer", "Scorer"]
