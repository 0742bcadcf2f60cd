"""Request models for items to score (SPEC §11), used by ``POST /score`` and the offline commands.
Validation of *content* (task types, ground-truth boxes, text lengths) lives in ``validation.py``
so that errors can name the item and field."""

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

    def ground_truth_text(self) -> str:
        gt = self.ground_truth
        return gt if isinstance(gt, str) else json.dumps(gt)


class ScoreOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format_weight: float | None = Field(None, ge=0.0, le=100.0, allow_inf_nan=False)
    bmas_reduction: Literal["sum", "mean"] | None = None


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: list[ScoreItem]
    options: ScoreOptions | None = None
