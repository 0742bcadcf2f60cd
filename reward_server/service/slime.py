"""slime's remote reward protocol: ``POST /slime``.

slime (THUDM/slime, ``slime/rollout/rm_hub/__init__.py``, ``remote_rm``) is configured with
``--rm-type remote_rm --rm-url http://host:8000/slime --reward-key reward`` and posts, once per
sample, with aiohttp and no headers of its own::

    {"prompt": sample.prompt, "response": sample.response, "label": sample.label}

It stores the reply JSON as ``sample.reward`` and trains on ``sample.reward[args.reward_key]``.
The reply is therefore one object per sample, always with the same keys::

    {"reward", "accuracy", "format", "task_type", "bmas_forward", "bmas_backward"}

``bmas_forward``/``bmas_backward`` are the open-ended terms, ``null`` for other tasks (never a
made-up number). With ``--group-rm`` slime still calls ``remote_rm`` once per sample (its
``batched_async_rm`` gathers the per-sample calls); a custom group reward function may instead post
the whole group as a JSON list of those objects, and gets a list of replies back, in order.

The label is the dataset's label column: a JSON object (or its JSON text) ``{"ground_truth"|
"answer"|"solution": ..., "task_type": ...}``, read as OpenRLHF's labels are; any other label is
the ground truth itself, with the task type from ``task_type`` in the body or ``?task_type=`` in the
URL. A label object's ``prompt_id`` feeds the difficulty posterior, as on /get_reward (slime posts
no other per-sample field: ``sample.metadata`` stays on the trainer). The prompt is not scored
(slime's response is the generated text alone). Trailing end-of-sequence strings are removed as
for OpenRLHF (``?eos=`` replaces the list). ``?token=``, ``?format_weight=`` and
``?bmas_reduction=`` configure what a fixed body cannot carry.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError

from reward_server.errors import MAX_DETAILS, RewardServerError
from reward_server.service.json_body import OFFLOAD_BYTES, check_count, parse_json, require_json
from reward_server.service.openapi import SCORING_ERRORS, error_responses, route_doc
from reward_server.service.openrlhf import (
    checked_task_type,
    eos_list,
    item_detail,
    label_prompt_id,
    parse_label,
    reject,
    remap_errors,
    request_options,
    score_item,
    strip_eos,
)
from reward_server.service.schemas import RequestItem
from reward_server.service.scoring import tenancy_of

router = APIRouter()


class SlimeSample(BaseModel):
    """The body slime's ``remote_rm`` posts; extra fields are ignored, as by /score."""

    model_config = ConfigDict(extra="ignore")

    prompt: Any = None
    response: StrictStr
    label: Any = Field(
        description="The ground truth: {\"ground_truth\": ..., \"task_type\": ...} (or its JSON text), or the truth "
        "itself with ?task_type=. Required, not null.",
        json_schema_extra={"not": {"type": "null"}},
    )
    task_type: StrictStr | None = None


def _samples(raw: bytes) -> tuple[list[SlimeSample], bool]:
    """The samples of a body (one object, or a list of them) and whether it was a list."""
    parsed = parse_json(raw) if raw else None  # the same 422s as every route: UTF-8, depth, JSON
    grouped = isinstance(parsed, list)
    rows = parsed if grouped else [parsed]
    if not isinstance(parsed, (dict, list)):
        raise reject([item_detail(None, "body", "must be a JSON object {\"prompt\", \"response\", \"label\"} "
                               "or a list of them")])
    samples: list[SlimeSample] = []
    errors: list[dict[str, Any]] = []
    for index, row in enumerate(rows):
        if len(errors) >= MAX_DETAILS:  # the answer lists at most this many: stop looking
            break
        where = index if grouped else None
        if not isinstance(row, dict):
            errors.append(item_detail(where, "body", f"each sample must be a JSON object, got {type(row).__name__}"))
            continue
        try:
            samples.append(SlimeSample.model_validate(row))
        except ValidationError as exc:
            for error in exc.errors():
                field = str(error["loc"][0]) if error["loc"] else "body"
                errors.append(item_detail(where, field, str(error["msg"])))
    if errors:
        raise reject(errors)
    return samples, grouped


class SlimeReply(BaseModel):
    reward: float
    accuracy: float
    format: float
    task_type: str
    bmas_forward: float | None
    bmas_backward: float | None


_BODY = {"anyOf": [{"$ref": "#/components/schemas/SlimeSample"},
                   {"type": "array", "items": {"$ref": "#/components/schemas/SlimeSample"}}]}


@router.post(
    "/slime", response_model=SlimeReply | list[SlimeReply], responses=error_responses(*SCORING_ERRORS),
    openapi_extra=route_doc(_BODY, auth="scoring+query"),
)
async def slime_reward(request: Request) -> JSONResponse:
    """Score slime samples: one reply object per posted object, a list of them for a posted list."""
    principal = request.app.state.tokens.authenticate(request, "score", query_param="token")
    require_json(request)  # as every body route: no cross-site simple request (text/plain) reaches scoring
    raw = await request.body()
    check_count(raw, None, request.app.state.service.settings.max_items_per_request, "body")
    samples, grouped = await asyncio.to_thread(_samples, raw) if len(raw) > OFFLOAD_BYTES else _samples(raw)
    url_task = checked_task_type(request, request.query_params.get("task_type"))
    eos = eos_list(request)
    options = request_options(request)  # a bad ?profile= or ?format_weight= first, named as in the URL
    items: list[RequestItem] = []
    errors: list[dict[str, Any]] = []
    for index, sample in enumerate(samples):
        truth, task, problem = parse_label(sample.label, sample.task_type or url_task)
        if problem is None and task is None:
            problem = ("has no task_type: use {\"ground_truth\": ..., \"task_type\": ...} as the label or add "
                       "?task_type=<type> to --rm-url")
        if problem is not None:
            errors.append(item_detail(index if grouped else None, "label", problem))
            continue
        prompt_id = label_prompt_id(sample.label)  # the difficulty posterior's key, as on /get_reward
        if prompt_id is not None and (isinstance(prompt_id, bool) or not isinstance(prompt_id, (str, int))):
            errors.append(item_detail(index if grouped else None, "label",
                                      "prompt_id: must be a string or an integer"))
            continue
        item = score_item(index, strip_eos(sample.response, eos), truth, task, "label", errors, prompt_id)
        if item is not None:
            items.append(item)
    if errors:
        if not grouped:
            errors = [{**e, "item": None} for e in errors]
        raise reject(errors)

    try:
        scored = await request.app.state.scoring.score(items, options, tenancy_of(request, principal))
    except RewardServerError as exc:
        mapped = remap_errors(exc, "response", "label")
        if not grouped and mapped.details:
            mapped = mapped.restated(mapped.message.removeprefix("item 0: "), [{**d, "item": None} for d in mapped.details])
        raise mapped from exc
    replies = [
        {
            "reward": s.reward,
            "accuracy": s.accuracy,
            "format": s.format,
            "task_type": item.truth.family.name,
            "bmas_forward": s.bmas_forward,
            "bmas_backward": s.bmas_backward,
        }
        for item, s in zip(scored.items, scored.results)
    ]
    return JSONResponse(replies if grouped else replies[0])
