"""OpenRLHF's remote reward protocol: ``POST /get_reward`` (SPEC §11).

OpenRLHF 0.11 (``--reward.remote_url http://host:port/get_reward``) posts one sample per request::

    {"query": [prompt + response, decoded with special tokens], "prompts": [prompt], "labels": [label]}

and reads ``{"rewards": [...], "scores": [...], "extra_logs": {name: [...]}}`` back. Here:

- ``rewards``: the Mixed-R1 reward (accuracy + format_weight * format), what PPO/GRPO trains on;
- ``scores``: the accuracy on a 0..1 scale, which OpenRLHF's dynamic filtering compares with its
  range (default 0..1: groups that are all right or all wrong are dropped, the paper's filter).
  Matching, chart and IoU accuracies are already in [0, 1]; BMAS is mapped linearly from [-2, 2]
  (``sum``) or [-1, 1] (``mean``) so that a good open-ended group is not dropped as "all right";
- ``extra_logs``: ``{"accuracy": [...], "format": [...]}``, logged by OpenRLHF per step.

The response is recovered from the query by these rules, in order:

1. the query minus its prompt when the query starts with the prompt (the usual case);
2. otherwise the text after the prompt's last 256 characters, found in the query exactly or, if
   the tokenizer's decode changed spacing, ignoring whitespace (covers a BOS string decoded in
   front and prompts that OpenRLHF left-truncated);
3. otherwise a 422 naming the sample: scoring the prompt as if it were the answer is never done.
   With no ``prompts`` at all the whole query is the response.

Then trailing end-of-sequence strings (and whitespace between them) are removed: by default the
common ones in ``DEFAULT_EOS``; a request may replace the list with ``eos`` in the body or
``?eos=...`` (repeatable) in the URL, which is how OpenRLHF users set it, since OpenRLHF posts a
fixed body.

A label is a JSON object or its JSON text, ``{"ground_truth"|"answer"|"solution": ..., "task_type":
...}``. Any other label (plain text, a number, a box list) is the ground truth itself, with the task
type from ``task_type`` in the body or ``?task_type=`` in the URL. Scoring needs the same bearer
token as ``/score``; because OpenRLHF's HTTP client cannot send headers, ``?token=`` is accepted too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError

from reward_server.difficulty.ids import prompt_id_problem
from reward_server.errors import InvalidItem, InvalidRequest, ItemFieldError, RewardServerError, summarise
from reward_server.items.json_values import loads_lenient
from reward_server.items.models import RequestItem, RequestOptions
from reward_server.items.validation import resolve_profile
from reward_server.rewards.scoring import PreparedItem
from reward_server.service.json_body import read_json_body
from reward_server.service.openapi import SCORING_ERRORS, error_responses, route_doc
from reward_server.service.scoring import tenancy_of

router = APIRouter()

DEFAULT_EOS: tuple[str, ...] = (
    "<|im_end|>",  # Qwen / ChatML
    "<|endoftext|>",  # Qwen base, GPT-2
    "<|eot_id|>",  # Llama 3
    "<|end_of_text|>",  # Llama 3 base
    "<|eom_id|>",
    "</s>",  # Llama 2, Mistral, InternVL (InternLM2)
    "<|end|>",  # Phi-3
    "<end_of_turn>",  # Gemma
    "<eos>",
    "<|end▁of▁sentence|>",  # DeepSeek
    "[SEP]",
    "<pad>",
    "[PAD]",
)
PROMPT_ANCHOR_CHARS = 256
TRUTH_KEYS = ("ground_truth", "answer", "solution")


class GetRewardRequest(BaseModel):
    """OpenRLHF's body, plus optional fields of ours (absent from what OpenRLHF sends)."""

    model_config = ConfigDict(extra="ignore")

    query: list[Any]
    prompts: list[Any] | None = None
    labels: list[Any] | None = None
    eos: str | list[str] | None = None
    task_type: str | None = Field(None, description="Task type of labels without one (the server's registry).")
    format_weight: Annotated[float, Strict()] | None = None  # range checked by RequestOptions
    bmas_reduction: str | None = None
    profile: str | None = None


class GetRewardResponse(BaseModel):
    rewards: list[float]
    scores: list[float]
    extra_logs: dict[str, list[float]]


def item_detail(index: int | None, field: str, message: str) -> dict[str, Any]:
    return {"item": index, "field": field, "message": message}


def reject(details: list[dict[str, Any]]) -> InvalidItem:
    return InvalidItem(summarise(details), details)


def _nonspace_end(query: str, anchor: str) -> int | None:
    """End offset in ``query`` of ``anchor``'s first occurrence, comparing non-whitespace only."""
    wanted = "".join(anchor.split())
    if not wanted:
        return None
    positions = [i for i, ch in enumerate(query) if not ch.isspace()]
    found = "".join(query[i] for i in positions).find(wanted)
    if found < 0:
        return None
    return positions[found + len(wanted) - 1] + 1


def response_from_query(query: str, prompt: str | None) -> str | None:
    """The response part of ``query`` (rules in the module docstring); None when the prompt is not found."""
    if not prompt:
        return query
    if query.startswith(prompt):
        return query[len(prompt) :]
    anchor = prompt[-PROMPT_ANCHOR_CHARS:]
    at = query.find(anchor)
    if at >= 0:
        return query[at + len(anchor) :]
    end = _nonspace_end(query, anchor)
    return None if end is None else query[end:]


def strip_eos(text: str, eos: Sequence[str]) -> str:
    """Remove trailing end-of-sequence strings, repeatedly, with any whitespace between them."""
    end = len(text)
    while True:
        head = text[:end].rstrip()
        for marker in eos:
            if marker and head.endswith(marker):
                end = len(head) - len(marker)
                break
        else:
            return text[:end]


def parse_label(label: Any, default_task: str | None) -> tuple[Any, str | None, str | None]:
    """(ground truth, task type, problem) for one label."""
    if isinstance(label, str) and label.lstrip().startswith("{"):
        try:
            label = loads_lenient(label)  # never RecursionError: too deep is a ValueError
        except ValueError as exc:
            return None, None, f"looks like JSON but does not parse: {exc}"
    if isinstance(label, dict):
        key = next((k for k in TRUTH_KEYS if k in label), None)
        if key is None:
            keys = [repr(str(k)[:40]) for k in list(label)[:10]] + (["..."] if len(label) > 10 else [])
            return None, None, f"the label object needs one of {list(TRUTH_KEYS)}; it has {', '.join(keys) or 'no keys'}"
        task = label.get("task_type") or default_task  # a null task_type falls back to ?task_type=
        return label[key], (None if task is None else str(task)), None
    if label is None:
        return None, None, "is null; it must carry the ground truth"
    return label, default_task, None


def label_prompt_id(label: Any) -> Any:
    """A label object's ``prompt_id`` (feeds the difficulty posterior), or None."""
    if isinstance(label, str) and label.lstrip().startswith("{"):
        try:
            label = loads_lenient(label)
        except ValueError:
            return None
    return label.get("prompt_id") if isinstance(label, dict) else None


def unit_score(item: PreparedItem, accuracy: float) -> float:
    """The accuracy on OpenRLHF's 0..1 filtering scale: the family's range mapped linearly (see the
    module docstring)."""
    return item.truth.family.unit_accuracy(accuracy, item.options)


def checked_task_type(request: Request, name: str | None) -> str | None:
    """A request-wide task type (``?task_type=`` or the body's), checked against the server's
    registry even when no label needs it: a typo is a 422 naming the field, never silently unused."""
    if name is not None:
        try:
            request.app.state.scoring.registry.resolve(name)
        except ItemFieldError as exc:
            raise InvalidRequest.for_field("task_type", exc.message) from None
    return name


def eos_list(request: Request, body_eos: str | list[str] | None = None) -> Sequence[str]:
    from_url = request.query_params.getlist("eos")
    if from_url:
        return from_url
    if body_eos is not None:
        return [body_eos] if isinstance(body_eos, str) else body_eos
    return DEFAULT_EOS


def remap_errors(exc: RewardServerError, response_field: str, label_field: str) -> RewardServerError:
    """/score's item errors, in a trainer protocol's field names (OpenRLHF: ``query``, ``labels``)."""
    details = []
    for detail in exc.details:
        field = detail.get("field")
        if field == "response":
            details.append({**detail, "field": response_field})
        elif field in ("ground_truth", "task_type", "prompt_id"):  # all read from the label
            details.append({**detail, "field": label_field, "message": f"{field}: {detail.get('message')}"})
        else:
            details.append(detail)
    if not details:
        return exc
    return exc.restated(summarise(details), details)


def score_item(
    index: int, response: str, truth: Any, task: str | None, label_field: str, errors: list[dict[str, Any]],
    prompt_id: str | int | None = None,
) -> RequestItem | None:
    """The /score item for one trainer sample, or None with the problem appended to ``errors``
    (named after the trainer's own label field)."""
    try:
        fields = {"id": index, "response": response, "ground_truth": truth, "task_type": task}
        if prompt_id is not None:
            fields["prompt_id"] = prompt_id
        return RequestItem.model_validate(fields)
    except ValidationError as exc:
        bad_id = next((e for e in exc.errors() if e["loc"] and e["loc"][0] == "prompt_id"), None)
        if bad_id is not None:
            problem = prompt_id_problem(prompt_id) or "must be a string of 1-512 characters or a 64-bit integer"
            errors.append(item_detail(index, label_field, f"prompt_id: {problem}"))
        elif isinstance(truth, float) and not math.isfinite(truth):
            errors.append(item_detail(index, label_field, f"ground truth must be a finite number, got {truth}"))
        else:
            errors.append(item_detail(index, label_field, f"ground truth must be a string, number, list or object, "
                                                      f"got {type(truth).__name__}"))
        return None


def request_options(
    request: Request, format_weight: Any = None, bmas_reduction: Any = None, profile: Any = None
) -> RequestOptions:
    """Scoring options from the body's fields, overridden by ``?format_weight=`` and
    ``?bmas_reduction=`` / ``?profile=`` in the URL (trainers that post a fixed body are configured by URL)."""
    options_in = {"format_weight": format_weight, "bmas_reduction": bmas_reduction, "profile": profile}
    for name in options_in:
        if name in request.query_params:
            options_in[name] = request.query_params[name]
    if isinstance(options_in["format_weight"], str):  # a URL carries text: read it as a number, strictly
        text = options_in["format_weight"]
        try:
            options_in["format_weight"] = float(text)
        except ValueError:
            raise InvalidRequest.for_field("format_weight", f"must be a number, got {text[:64]!r}") from None
    try:
        options = RequestOptions.model_validate({k: v for k, v in options_in.items() if v is not None})
    except ValidationError as exc:
        field = str(exc.errors()[0]["loc"][0]) if exc.errors() else "options"
        raise InvalidRequest.for_field(field, str(exc.errors()[0]["msg"])) from exc
    if options.profile is not None:  # named as the URL and the body name it, before any item is read
        resolve_profile(options.profile, request.app.state.service.settings, field="profile")
    return options


@router.post(
    "/get_reward", response_model=GetRewardResponse, responses=error_responses(*SCORING_ERRORS),
    openapi_extra=route_doc(GetRewardRequest, auth="scoring+query"),
)
async def get_reward(request: Request) -> JSONResponse:
    """Score OpenRLHF samples: one reward per query, in order."""
    principal = request.app.state.tokens.authenticate(request, "score", query_param="token")
    body = await read_json_body(
        request, GetRewardRequest, count=("query", request.app.state.service.settings.max_items_per_request)
    )
    options = request_options(request, body.format_weight, body.bmas_reduction, body.profile)  # a bad one first
    count = len(body.query)
    errors: list[dict[str, Any]] = []
    for name, values in (("prompts", body.prompts), ("labels", body.labels)):
        if values is not None and len(values) != count:
            errors.append(item_detail(None, name, f"has {len(values)} entries for {count} queries"))
    if body.labels is None and count:
        errors.append(item_detail(None, "labels", "required: each label carries the ground truth and task type"))
    if errors:
        raise reject(errors)

    default_task = checked_task_type(request, request.query_params.get("task_type") or body.task_type)
    eos = eos_list(request, body.eos)
    limit = request.app.state.service.settings.max_chars_per_text
    items: list[RequestItem] = []
    for index, query in enumerate(body.query):
        prompt = body.prompts[index] if body.prompts is not None else None
        if not isinstance(query, str):
            errors.append(item_detail(index, "query", f"must be a string, got {type(query).__name__}"))
            continue
        if prompt is not None and not isinstance(prompt, str):
            errors.append(item_detail(index, "prompts", f"must be a string, got {type(prompt).__name__}"))
            continue
        # Checked before the prompt search, which is linear but allocates per character.
        if len(query) > limit + len(prompt or ""):
            errors.append(item_detail(index, "query", f"is {len(query)} characters; the limit is {limit} "
                                  "plus the prompt's length"))
            continue
        response = response_from_query(query, prompt)
        if response is None:
            errors.append(item_detail(index, "query", "does not contain its prompt (prompts[i]), so the response "
                                  "cannot be separated from it; send the decoded prompt + response"))
            continue
        truth, task, problem = parse_label(body.labels[index] if body.labels is not None else None, default_task)
        if problem is None and task is None:
            problem = ("has no task_type: use {\"ground_truth\": ..., \"task_type\": ...} or add "
                       "?task_type=<type> to the URL")
        if problem is not None:
            errors.append(item_detail(index, "labels", problem))
            continue
        prompt_id = label_prompt_id(body.labels[index] if body.labels is not None else None)
        if prompt_id is not None and (isinstance(prompt_id, bool) or not isinstance(prompt_id, (str, int))):
            errors.append(item_detail(index, "labels", "prompt_id: must be a string or an integer"))
            continue
        item = score_item(index, strip_eos(response, eos), truth, task, "labels", errors, prompt_id)
        if item is not None:
            items.append(item)
    if errors:
        raise reject(errors)

    try:
        scored = await request.app.state.scoring.score(items, options, tenancy_of(request, principal))
    except RewardServerError as exc:
        raise remap_errors(exc, "query", "labels") from exc
    results = scored.results
    return JSONResponse({
        "rewards": [s.reward for s in results],
        "scores": [unit_score(item, s.accuracy) for item, s in zip(scored.items, results)],
        "extra_logs": {
            "accuracy": [s.accuracy for s in results],
            "format": [s.format for s in results],
        },
    })
