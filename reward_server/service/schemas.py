"""HTTP response models (SPEC §11). The request models live in ``reward_server.items.models``
(shared with the offline commands) and are re-exported here for the routes."""

from __future__ import annotations

from pydantic import BaseModel, Field

from reward_server.items.models import (  # noqa: F401 (re-exported for the routes)
    GroundTruth,
    Identifier,
    RequestItem,
    RequestOptions,
    ScoreRequest,
)


class ItemResult(BaseModel):
    id: Identifier | None = None
    task_type: str
    reward: float
    accuracy: float = Field(description="The task's reward (matching, chart, IoU or BMAS).")
    format: float
    bmas_forward: float | None = Field(None, description="Open-ended only: mean over response tokens of the best match.")
    bmas_backward: float | None = Field(None, description="Open-ended only: mean over truth tokens of the best match.")
    group_id: Identifier | None = None
    prompt_id: Identifier | None = None


class GroupStats(BaseModel):
    group_id: Identifier
    size: int
    mean: float
    std: float = Field(description="Sample standard deviation (n-1), as GRPO normalises advantages; 0 for one item.")
    min: float
    max: float
    zero_variance: bool = Field(description="All rewards equal within the server's tolerance: no GRPO signal.")


class TableInfo(BaseModel):
    source: str
    tensor_key: str
    content_hash: str
    model_type: str
    vocab_size: int
    dim: int
    device: str
    dtype: str


class Timing(BaseModel):
    queue_seconds: float
    tokenize_seconds: float
    kernel_seconds: float
    total_seconds: float
    batch_items: int = Field(description="Items in the device batch this request was scored in.")


class ScoreResponse(BaseModel):
    profile: str = Field(description="The reward profile that scored the items.")
    results: list[ItemResult]
    groups: list[GroupStats]
    table: TableInfo
    timing: Timing


class ErrorDetail(BaseModel):
    item: int | None = Field(None, description="Index of the offending item in the request.")
    id: Identifier | None = None
    field: str
    message: str


class ErrorBody(BaseModel):
    type: str
    message: str
    details: list[ErrorDetail] = []


class ErrorResponse(BaseModel):
    error: ErrorBody
