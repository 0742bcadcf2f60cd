"""Request models for items to score (SPEC §11), used by ``POST /score`` and the offline commands.
Validation of *content* (task types, ground-truth boxes, text lengths) lives in ``validation.py``
so that errors can name the item and field."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import (
    AllowInfNan,
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    StrictBool,
    StrictInt,
    StrictStr,
    StringConstraints,
)

MAX_ID_CHARS = 256  # id and group_id: echoed in every result, so bounded
MAX_PROMPT_ID_CHARS = 512
INT64 = {"ge": -(2**63), "le": 2**63 - 1}  # an integer id is a 64-bit one, not 600 digits
Identifier = Annotated[StrictStr, StringConstraints(max_length=MAX_ID_CHARS)] | Annotated[StrictInt, Field(**INT64)]
#: A prompt id: a string of 1-512 characters, not blank, no control characters; or a 64-bit integer.
PromptId = (
    Annotated[StrictStr, StringConstraints(min_length=1, max_length=MAX_PROMPT_ID_CHARS,
                                           pattern=r"^[^\x00-\x1f\x7f]*[^\x00-\x20\x7f][^\x00-\x1f\x7f]*$")]
    | Annotated[StrictInt, Field(**INT64)]
)
FiniteFloat = Annotated[float, Strict(), AllowInfNan(False)]  # a NaN truth would match a "NaN" answer
GroundTruth = StrictStr | StrictInt | FiniteFloat | list[Any] | dict[str, Any]


class RequestItem(BaseModel):
    """One rollout to score. Extra fields (prompts, metadata) are ignored, not rejected."""

    model_config = ConfigDict(extra="ignore")

    id: Identifier | None = Field(None, description="Echoed back in the result.")
    response: StrictStr = Field(description="The policy's full response text, tags included.")
    ground_truth: GroundTruth = Field(
        description="Answer text; numbers, box lists and JSON objects are accepted and read as their JSON text."
    )
    task_type: StrictStr = Field(
        description="A reward family's name or alias (GET /v1/info lists them; the enum here is the server's "
        "registry); case-insensitive, '-', ' ' and '_' are the same.",
    )
    group_id: Identifier | None = Field(None, description="The prompt this response was sampled for (GRPO group).")
    prompt_id: PromptId | None = Field(
        None,
        description="Stable id of the prompt across epochs; with a state store, its difficulty posterior "
        "is updated from this item's correctness (never affects the reward).",
    )

    def ground_truth_text(self) -> str:
        gt = self.ground_truth
        return gt if isinstance(gt, str) else json.dumps(gt)


class RequestOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Strict: a JSON number only; true/false or "2" would otherwise be read as 1/0/2.
    format_weight: Annotated[float, Strict()] | None = Field(None, ge=0.0, le=100.0, allow_inf_nan=False)
    bmas_reduction: Literal["sum", "mean"] | None = None
    profile: Annotated[StrictStr, StringConstraints(min_length=1, max_length=64)] | None = Field(
        None, description="Reward profile: mixed-r1 | robust (GET /v1/info lists them)."
    )
    explain: StrictBool | None = Field(
        None, description="Add `parsed` to every result: the answer as the rule read it (never changes a number)."
    )
    tiou_boundary_penalty: StrictBool | None = Field(
        None, description="temporal_grounding: multiply by Time-R1's boundary penalty (the truth needs a duration). "
        "Unset: the server's default.",
    )


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: list[RequestItem]
    options: RequestOptions | None = None
    model: Annotated[StrictStr, StringConstraints(min_length=1, max_length=64)] | None = Field(
        None, description="The table (policy) that scores open-ended items: a name of GET /v1/info's tables; "
        "unset: the default. Also ?model=.",
    )
    job: Annotated[StrictStr, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")] | None = Field(
        None, description="The training job this request belongs to (fair scheduling, per-job state); also ?job= "
        "or the X-Reward-Job header; unset: the token's job, else 'default'.",
    )
    priority: StrictInt | None = Field(
        None, ge=-1000, le=1000, description="Higher goes first within each batch round (default 0)."
    )
    deadline_seconds: FiniteFloat | None = Field(
        None, gt=0.0, le=86400.0, description="Seconds until this job's training batch is due: nearer goes first."
    )
