"""Ray Serve mode (``reward-server serve --ray``, deploy/scale-out.md): N replicas of the same
service on the trainer's own Ray cluster, reachable over HTTP (the unchanged API) and through a
Serve ``DeploymentHandle`` (``mixed_reward_client.ray``) without an HTTP hop.

    options.py     Settings -> Serve deployment options (replicas, autoscaling, GPUs); no ray import
    registry.py    the small named actor every replica reports to: which table, metrics address,
                   the table the cluster should serve (reloads)
    deployment.py  the Serve deployment: one engine + batcher + table per replica, the FastAPI app
                   of service/app.py as its ingress, and the in-process ASGI call the handle uses
    launch.py      what ``reward-server serve --ray`` does: connect, deploy, wait, exit codes

``ray`` is an optional extra (``pip install -e ".[ray]"``); nothing outside this package imports it.
"""

from __future__ import annotations

from reward_server.errors import RayNotInstalled

INSTALL_HINT = 'pip install "mixed-reward[ray]"  (ray[serve]==2.60.0)'

# How a replica that cannot serve its table says so (deployment.py), and how `serve --ray` tells that
# failure (exit 2) from others in Serve's status message (launch.py): one spelling for both sides.
TABLE_UNLOADABLE = "cannot load the embedding table"
IDF_UNUSABLE = "cannot use the idf file"


def require_ray() -> None:
    """Import ray and ray.serve, or raise :class:`RayNotInstalled` naming the install command."""
    try:
        import ray  # noqa: F401
        from ray import serve  # noqa: F401
    except ImportError as exc:
        raise RayNotInstalled(f"Ray mode needs Ray Serve, which is not installed ({exc}); install it with: "
                         f"{INSTALL_HINT}") from exc
