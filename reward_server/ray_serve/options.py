"""Settings -> the Serve deployment's options. Pure (no ray import), so it is tested and documented
without a cluster.

Why these defaults: a replica is one batcher that coalesces whatever is in flight into one device
batch, so it must be *given* many requests at once (``max_ongoing_requests`` 256; Serve's own
default of 5 would split traffic into tiny batches and queue the rest in the proxy). Autoscaling
watches the same number: ``target_ongoing_requests`` per replica.
"""

from __future__ import annotations

from typing import Any

from reward_server.errors import UsageError
from reward_server.items.settings import Settings

DEPLOYMENT_NAME = "RewardReplica"
# Serve's graceful shutdown of a replica: stop routing to it, then let its requests finish (the
# same 30 s of in-flight grace as `reward-server serve`, see docs/deployment.md#shutdown-and-draining).
GRACEFUL_SHUTDOWN_TIMEOUT_S = 30.0
HEALTH_CHECK_PERIOD_S = 5.0


class BadRayConfig(UsageError):
    """The Ray settings contradict each other (the CLI exits 2 naming them)."""


def check_ray_settings(settings: Settings) -> None:
    if (settings.min_replicas is None) != (settings.max_replicas is None):
        raise BadRayConfig("--min-replicas and --max-replicas go together (autoscaling between them)")
    if settings.min_replicas is not None and settings.max_replicas is not None \
            and settings.min_replicas > settings.max_replicas:
        raise BadRayConfig(
            f"--min-replicas {settings.min_replicas} is larger than --max-replicas {settings.max_replicas}"
        )
    if not settings.ray_route_prefix.startswith("/"):
        raise BadRayConfig(f"--ray-route-prefix must start with '/', got {settings.ray_route_prefix!r}")


def replica_settings(settings: Settings) -> Settings:
    """What every replica runs with. With a difficulty state file, all replicas must share ONE state:
    the named Ray actor that owns the file (reward_server/difficulty/ray_actor.py)."""
    if settings.state_path and not settings.state_ray_actor:
        return settings.model_copy(update={"state_ray_actor": f"{settings.ray_app_name}-difficulty"})
    return settings


def num_gpus(settings: Settings, cluster_gpus: float) -> float:
    """GPUs per replica: the setting, else a whole GPU when the cluster has any, else none."""
    if settings.num_gpus is not None:
        return settings.num_gpus
    return 1.0 if cluster_gpus > 0 else 0.0


def deployment_options(settings: Settings, cluster_gpus: float = 0.0) -> dict[str, Any]:
    """Keyword arguments of ``Deployment.options`` for these settings."""
    check_ray_settings(settings)
    options: dict[str, Any] = {
        "name": DEPLOYMENT_NAME,
        "ray_actor_options": {"num_cpus": settings.num_cpus, "num_gpus": num_gpus(settings, cluster_gpus)},
        "max_ongoing_requests": settings.max_ongoing_requests,
        "graceful_shutdown_timeout_s": GRACEFUL_SHUTDOWN_TIMEOUT_S,
        "health_check_period_s": HEALTH_CHECK_PERIOD_S,
    }
    if settings.min_replicas is not None and settings.max_replicas is not None:
        options["autoscaling_config"] = {
            "min_replicas": settings.min_replicas,
            "initial_replicas": max(settings.min_replicas, 1),
            "max_replicas": settings.max_replicas,
            "target_ongoing_requests": settings.target_ongoing_requests,
        }
    else:
        options["num_replicas"] = settings.replicas
    return options
