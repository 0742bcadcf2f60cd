"""HTTP request and response models (SPEC §11). Validation of *content* (task types, ground-truth
boxes, text lengths) lives in ``validation.py`` so that errors can name the item and field."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import AllowInfNan, BaseModel, ConfigDict, Field, Strict, StrictInt, StrictStr

Identifier = StrictStr | StrictInt
FiniteFloat = Annotated[float, Strict(), AllowInfNan(False)]  # a NaN truth would match a "NaN" answer
GroundTruth = StrictStr | StrictInt | FiniteFloat | list[Any] | dict[str, Any]


class ScoreItem(BaseModel):
    """One rollout to score. Extra fields (prompts, metadata) are ignored, not rejected."""

    model_config = ConfigDict(extra="ignore")

    id: Identifier | None = Field(None, description="Echoed back in the result.")
    response: StrictStr = Field(description="The policy's full response text, tags included.")
    ground_truth: GroundTruth = Field(
        description="Answer text; numbers, box lists and JSON objects are accepted and read as their JSON text."
    )
    task_type: StrictStr = Field(description="yes_no | mcq | chart | grounding | open_ended, or an alias.")
    group_id: Identifier | None = Field(None, description="The prompt this response was sampled for (GRPO group).")
    prompt_id: Identifier | None = Field(
        None,
        description="Stable id of the prompt across epochs; with a state store, its difficulty posterior "
        "is updated from this item's correctness (never affects the reward).",
    )

    def ground_truth_text(self) -> str:
        gt = self.ground_truth
        return gt if isinstance(gt, str) else json.dumps(gt)


class ScoreOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format_weight: float | None = Field(None, ge=0.0, le=100.0, allow_inf_nan=False)
    bmas_reduction: Literal["sum", "mean"] | None = None
    profile: StrictStr | None = Field(None, description="Reward profile: mixed-r1 | robust (GET /v1/info lists them).")


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: list[ScoreItem]
    options: ScoreOptions | None = None


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
