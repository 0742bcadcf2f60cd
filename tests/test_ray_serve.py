"""Ray Serve mode against a real local Ray cluster (127.0.0.1 only, started once for the module).

Two applications run side by side: ``mixed-reward`` (2 replicas, difficulty state, admin API) and
``secured`` (1 replica, token and small limits, its replica's own port on 127.0.0.2). Every answer
is compared with the single-process server's on the same requests: over HTTP through the Serve
proxy and over a DeploymentHandle. Two tests add their own application: ``tables`` (two named
tables multiplexed over 2 replicas) and ``drained`` (a ``reward-server serve --ray`` subprocess
that gets SIGTERM under load).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import yaml

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

from checkpoints import build_bert_checkpoint
from mixed_reward_client import AsyncRewardClient, BadRequest, RetryPolicy, RewardClient
from mixed_reward_client._coalesce import Coalescer
from mixed_reward_client.ray import AsyncRayRewardClient, RayRewardClient
from prometheus_harness import dashboard_queries, running_prometheus
from serving import running_server
from test_service_http import (  # noqa: F401 - the single-process HTTP tests, run against the replicas
    ONE_OF_EACH,
    test_empty_batch_is_fine,
    test_info_health_and_ready,
    test_mixed_batch_of_64,
    test_one_item_of_each_task_type,
    test_open_ended_matches_independent_bmas,
    test_options_change_format_weight_and_reduction,
    test_zero_variance_group,
)

from reward_server.errors import EXIT_ADDRESS_IN_USE, EXIT_CLUSTER_UNREACHABLE, EXIT_RAY_MISSING, EXIT_USAGE
from reward_server.items.settings import Settings
from reward_server.ray_serve.launch import deploy
from reward_server.ray_serve.options import deployment_options

REPO = Path(__file__).resolve().parent.parent
ADMIN = {"authorization": "Bearer admin-secret"}
SECURED = {"api_token": "tok", "max_items_per_request": 4, "max_chars_per_text": 200, "max_body_bytes": 4096}
SECURED_HOST = "127.0.0.2"  # on loopback, yet not the node's address: where each replica's own port must listen


def subprocess_env() -> dict[str, str]:
    """This process's environment at call time: after ray.init it carries RAY_AUTH_MODE=token, which a
    second driver needs to join the (token-authenticated) test cluster."""
    paths = [str(REPO), str(REPO / "clients"), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Any:
    # Logical CPUs: one per replica of the four applications this module deploys (not real cores).
    ray.init(address="local", num_cpus=16, include_dashboard=False, _node_ip_address="127.0.0.1",
             log_to_driver=False, configure_logging=False, namespace="mixed-reward")
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    state = tmp_path_factory.mktemp("ray-state") / "state.db"
    main = Settings(replicas=2, admin_token="admin-secret", state_path=str(state), state_synchronous="normal",
                    difficulty_local_decay=1.0, difficulty_stale_half_life_items=0.0)
    secured = Settings(ray_app_name="secured", ray_route_prefix="/secured", replicas=1, host=SECURED_HOST, **SECURED)
    deploy(main, secured, timeout_s=300)
    url = f"http://127.0.0.1:{port}"
    wait_for_replicas(url, 2)
    yield SimpleNamespace(url=url, secured=url + "/secured", gcs=ray.get_runtime_context().gcs_address)
    serve.shutdown()
    ray.shutdown()


def info(url: str) -> dict[str, Any]:
    return httpx.get(url + "/v1/info", timeout=30).json()


def wait_for_replicas(url: str, count: int, timeout: float = 120, exclude_pids: frozenset[int] = frozenset(),
                      table: str | None = None) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        replicas = info(url)["replicas"]["replicas"]
        if (len(replicas) == count and not {r["pid"] for r in replicas} & exclude_pids
                and (table is None or all(r["content_hash"] == table for r in replicas))):
            return replicas
        assert time.monotonic() < deadline, replicas
        time.sleep(0.25)


@pytest.fixture(scope="module")
def server(cluster: Any) -> Any:
    """What the imported single-process tests call ``server``: here the 2-replica application."""
    return SimpleNamespace(url=cluster.url)


@pytest.fixture(scope="module")
def reference(default_table: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The single-process server; with a state file like the cluster's (rewards never read it), so
    that its posteriors are what the cluster's must be after the same items."""
    state = tmp_path_factory.mktemp("reference-state") / "state.db"
    with running_server(default_table, state_path=str(state), state_synchronous="normal",
                        difficulty_local_decay=1.0, difficulty_stale_half_life_items=0.0) as srv:
        yield srv


def export(url: str, prefix: str) -> dict[str, tuple[int, int, float, float]]:
    """(n, successes, alpha, beta) of every prompt whose id starts with ``prefix`` (the default job)."""
    rows = [json.loads(line) for line in httpx.get(url + "/v1/prompts", timeout=60).text.splitlines()]
    return {r["prompt_id"]: (r["n"], r["successes"], r["alpha"], r["beta"]) for r in rows
            if r["prompt_id"].startswith(prefix)}


def spec_items(count: int) -> list[dict[str, Any]]:
    items = []
    for i in range(count):
        item, _, _ = ONE_OF_EACH[i % len(ONE_OF_EACH)]
        if i % 3 == 0:  # open-ended items that differ, so every BMAS is its own computation
            item = {"response": f"<think>t</think><answer>A dog number {i} sleeps on sofa {i % 17}.</answer>",
                    "ground_truth": f"A small dog sleeps on a red sofa {i % 11}.", "task_type": "caption"}
        items.append({**item, "id": f"i{i}", "group_id": f"g{i // 8}"})
    return items


def differ(rows: list[dict[str, Any]], expected: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Rows that are not the same result: same keys and labels, numbers within 1e-6 (float32 sums
    in a different batch composition differ in the last bits, as in one process)."""
    def same(a: dict[str, Any], b: dict[str, Any]) -> bool:
        return a.keys() == b.keys() and all(
            a[k] == pytest.approx(b[k], abs=1e-6) if isinstance(b[k], float) else a[k] == b[k] for k in b
        )
    assert len(rows) == len(expected)
    return [(a, b) for a, b in zip(rows, expected) if not same(a, b)]


def test_two_replicas_score_like_one_process_over_http_and_the_handle(cluster: Any, reference: Any) -> None:
    items = spec_items(600)
    with RewardClient(reference.url) as client:
        expected = client.score(items)
    with RewardClient(cluster.url, max_batch_items=64) as client:
        over_http = client.score(items)
    with RayRewardClient("mixed-reward", max_batch_items=64) as client:
        over_handle = client.score(items)
        assert client.info()["replicas"]["count"] == 2
    assert differ(over_http.results, expected.results) == []
    assert differ(over_handle.results, expected.results) == []
    assert differ(over_handle.groups, expected.groups) == differ(over_http.groups, expected.groups) == []

    async def coalesced() -> list[dict[str, Any]]:
        coalescer = Coalescer(AsyncRayRewardClient("mixed-reward"), 0.005, 256)
        rows = await asyncio.gather(*(coalescer.score(item) for item in items[:200]))
        assert coalescer.requests < 20  # 200 one-sample calls went out as a few batched calls
        await coalescer.aclose()
        return rows

    assert differ(asyncio.run(coalesced()), expected.results[:200]) == []


def parity_cases() -> list[tuple[str, dict[str, str], bytes]]:
    one = {"response": "<answer>yes</answer>", "ground_truth": "yes", "task_type": "yes_no"}
    token = {"authorization": "Bearer tok", "content-type": "application/json"}
    return [
        ("no token", {"content-type": "application/json"}, b'{"items": []}'),
        ("wrong token", {**token, "authorization": "Bearer nope"}, b'{"items": []}'),
        ("ok", token, httpx.Request("POST", "/", json={"items": [one]}).content),
        ("too many items", token, httpx.Request("POST", "/", json={"items": [one] * 5}).content),
        ("text too long", token, httpx.Request("POST", "/", json={"items": [{**one, "response": "x" * 300}]}).content),
        ("body too large", token, b'{"items": [' + b" " * 5000 + b"]}"),
        ("not json", token, b"{nope"),
        ("bad task", token, httpx.Request("POST", "/", json={"items": [{**one, "task_type": "poetry"}]}).content),
    ]


def test_auth_and_limits_answer_exactly_as_one_process(cluster: Any, default_table: Any) -> None:
    handle = serve.get_deployment_handle("RewardReplica", app_name="secured").options(method_name="handle_request")
    with running_server(default_table, **SECURED) as single:
        for name, headers, body in parity_cases():
            want = httpx.post(single.url + "/score", content=body, headers=headers)
            got = httpx.post(cluster.secured + "/score", content=body, headers=headers)
            status, _, content = handle.remote("POST", "/score", headers, body).result(timeout_s=60)
            assert (got.status_code, status) == (want.status_code, want.status_code), name
            if want.status_code == 200:
                assert differ(got.json()["results"], want.json()["results"]) == [], name
            else:
                assert got.json() == want.json() == httpx.Response(status, content=content).json(), name
    with pytest.raises(BadRequest) as refused:
        RayRewardClient("secured").score([{"response": "a", "ground_truth": "a", "task_type": "yes_no"}])
    assert refused.value.status_code == 401 and refused.value.error_type == "unauthorized"


def scored_per_replica(cluster: Any) -> dict[int, float]:
    """reward_items_total{outcome="scored"} read from every replica's own /metrics (the SD targets)."""
    (group,) = httpx.get(cluster.url + "/v1/metrics/targets").json()
    counts = {}
    for target in group["targets"]:
        text = httpx.get(f"http://{target}/metrics").text
        assert "reward_table_info{" in text
        counts[target] = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                             if line.startswith("reward_items_total{") and 'outcome="scored"' in line)
    return counts


def test_replicas_share_one_difficulty_state_and_each_has_its_metrics(cluster: Any) -> None:
    before = scored_per_replica(cluster)
    assert len(before) == 2

    async def traffic() -> list[int]:
        item = {"response": "<answer>yes</answer>", "ground_truth": "yes", "task_type": "yes_no", "prompt_id": "shared"}
        wrong = {**item, "response": "<answer>no</answer>"}
        async with httpx.AsyncClient(timeout=60) as client:
            calls = [client.post(cluster.url + "/score", json={"items": [wrong if i % 4 == 0 else item]}) for i in range(60)]
            return [r.status_code for r in await asyncio.gather(*calls)]

    assert asyncio.run(traffic()) == [200] * 60
    state = httpx.get(cluster.url + "/v1/prompts/shared").json()
    assert (state["n"], state["successes"]) == (60, 45)
    after = scored_per_replica(cluster)
    served = {target: after[target] - before[target] for target in after}
    assert sum(served.values()) == 60 and all(count > 0 for count in served.values()), served


def test_prometheus_scrapes_every_replica_through_http_service_discovery(cluster: Any) -> None:
    """The deploy scrape config with http_sd_configs on /v1/metrics/targets: one series set per
    replica, which the dashboard and alerts sum; every dashboard query evaluates."""
    per_replica = scored_per_replica(cluster)
    with running_prometheus("unused:0", http_sd=cluster.url + "/v1/metrics/targets") as prometheus:
        prometheus.wait_for("sum(reward_ready)", lambda r: bool(r) and float(r[0]["value"][1]) == 2, timeout=60)
        prometheus.wait_for('sum(reward_items_total{outcome="scored"})',
                            lambda r: bool(r) and float(r[0]["value"][1]) >= sum(per_replica.values()), timeout=60)
        scraped = prometheus.values('sum by (instance) (reward_items_total{outcome="scored"})', "instance")
        assert {instance for (instance,) in scraped} == set(per_replica)
        tables = prometheus.query("max(count by (name) (count by (name, content_hash) (reward_table_info)))")
        assert float(tables[0]["value"][1]) == 1  # RewardTablesDiverge stays quiet
        for _title, expr in dashboard_queries():
            prometheus.query(expr)  # raises on an error


def test_a_killed_replica_is_replaced_and_no_item_is_lost_changed_or_counted_twice(cluster: Any, reference: Any) -> None:
    """5,000 scored items (groups of 8 rollouts of 100 prompts) stream through both replicas, half
    over HTTP and half over the handle, through the project's clients with retries; a replica is
    SIGKILLed mid-stream. Every item comes back exactly once and unchanged, and every prompt's
    posterior counts exactly the items sent (n, successes, alpha, beta equal to the single process's).

    The kill is aimed at the window the issue saw (an update committed, the replica dead before it
    answered): the state actor is paused (SIGSTOP) so that requests queue at their state update,
    the replica is killed with its updates sent, then the actor resumes and commits them. The
    clients retry those requests on the other replica with the same Idempotency-Key, which the
    store has applied: nothing counts twice."""
    items = [{**item, "prompt_id": f"chaos-{i // 8 % 100}"} for i, item in enumerate(spec_items(5000))]
    with RewardClient(reference.url) as client:
        expected = {row["id"]: row for row in client.score(items).results}
    expected_state = export(reference.url, "chaos-")
    assert len(expected_state) == 100 and sum(n for n, *_ in expected_state.values()) == 5000
    chunks = [items[i : i + 100] for i in range(0, len(items), 100)]
    victim = info(cluster.url)["replicas"]["replicas"][0]["pid"]
    state_actor = ray.get_actor("mixed-reward-difficulty", namespace="mixed-reward")
    state_pid = ray.get(state_actor.ping.remote(), timeout=60)["pid"]
    retry = RetryPolicy(max_attempts=10, backoff=0.2, max_backoff=2.0, deadline=120)

    async def kill_after_commits_are_sent() -> None:
        os.kill(state_pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(1.5)  # the requests in flight finish scoring and wait at their update
            os.kill(victim, signal.SIGKILL)
            await asyncio.sleep(0.5)
        finally:
            os.kill(state_pid, signal.SIGCONT)  # commits the dead replica's updates: its answers are lost

    async def stream() -> list[dict[str, Any]]:
        http = AsyncRewardClient(cluster.url, retry=retry, timeout=60)
        handle = AsyncRayRewardClient("mixed-reward", retry=retry, timeout=60)
        done = 0
        gate = asyncio.Semaphore(4)
        chaos: list[asyncio.Task[None]] = []

        async def one(number: int, chunk: list[dict[str, Any]]) -> list[dict[str, Any]]:
            nonlocal done
            async with gate:
                client = http if number % 2 else handle  # half the stream over HTTP, half over the handle
                rows = (await client.score(chunk)).results
            done += 1
            if done == 12:
                chaos.append(asyncio.create_task(kill_after_commits_are_sent()))
            return rows

        parts = await asyncio.gather(*(one(n, chunk) for n, chunk in enumerate(chunks)))
        await asyncio.gather(*chaos)
        await http.aclose()
        return [row for part in parts for row in part]

    rows = asyncio.run(stream())
    assert sorted(row["id"] for row in rows) == sorted(expected)  # every item exactly once
    assert differ(rows, [expected[row["id"]] for row in rows]) == []
    assert export(cluster.url, "chaos-") == expected_state  # every posterior counts every item once
    wait_for_replicas(cluster.url, 2, exclude_pids=frozenset({victim}))  # Serve replaced it


def test_reload_rolls_through_every_replica_under_load(cluster: Any, tmp_path: Path) -> None:
    second = build_bert_checkpoint(tmp_path / "second", vocab=300, dim=16, seed=3)
    old = info(cluster.url)["content_hash"]
    item = {"response": "<answer>tok5 tok9</answer>", "ground_truth": "tok5 tok6", "task_type": "caption"}

    async def main() -> tuple[list[int], httpx.Response]:
        stop = asyncio.Event()
        handle = AsyncRayRewardClient("mixed-reward")

        async def hammer(client: httpx.AsyncClient) -> list[int]:
            statuses = []
            while not stop.is_set():
                statuses.append((await client.post(cluster.url + "/score", json={"items": [item] * 8})).status_code)
            return statuses

        async def hammer_handle() -> list[int]:
            count = 0
            while not stop.is_set():
                await handle.score([item] * 8)  # raises on any failure
                count += 1
            return [200] * count

        async with httpx.AsyncClient(timeout=120) as client:
            workers = [asyncio.create_task(hammer(client)) for _ in range(3)] + [asyncio.create_task(hammer_handle())]
            await asyncio.sleep(0.5)
            reload = await client.post(cluster.url + "/admin/reload", json={"model_path": str(second.path)},
                                       headers=ADMIN)
            await asyncio.sleep(0.5)
            stop.set()
            return [s for w in workers for s in await w], reload

    bad = httpx.post(cluster.url + "/admin/reload", json={"model_path": str(tmp_path / "nope")}, headers=ADMIN,
                     timeout=120)
    assert bad.status_code == 422 and bad.json()["error"]["type"] == "invalid_table"  # as in one process
    assert info(cluster.url)["replicas"]["tables"] == {old: 2}  # nothing was published
    statuses, reload = asyncio.run(main())
    assert reload.status_code == 200, reload.text
    new = reload.json()["current"]["content_hash"]
    assert new != old and reload.json()["previous"]["content_hash"] == old
    assert reload.json()["replicas"]["tables"] == {new: 2}
    assert len(statuses) > 10 and set(statuses) == {200}  # zero failed requests
    assert info(cluster.url)["replicas"]["tables"] == {new: 2}


def start_cli(*args: str, hide_ray: bool = False) -> subprocess.Popen[str]:
    code = "import sys\n" + ("sys.modules['ray'] = None\n" if hide_ray else "")  # `import ray` now fails
    code += "from reward_server.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    return subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=subprocess_env())


def test_bad_cases_exit_at_once_with_their_own_codes_and_say_why(cluster: Any, tmp_path: Path) -> None:
    """Run side by side (each is a fresh process): no ray, contradicting settings, no cluster at the
    address, a table no replica can load; and the Ray client without ray."""
    missing = tmp_path / "no-such-checkpoint"
    closed = free_port()
    taken = socket.create_server(("127.0.0.1", 0))  # what `make serve` left running, say
    taken_port = taken.getsockname()[1]
    started = time.monotonic()
    runs = {
        "busy port": start_cli("serve", "--ray", "--ray-address", "local", "--host", "127.0.0.1",
                               "--port", str(taken_port)),
        "no ray": start_cli("serve", "--ray", hide_ray=True),
        "bad settings": start_cli("serve", "--ray", "--min-replicas", "3"),
        "unreachable": start_cli("serve", "--ray", "--ray-address", f"127.0.0.1:{closed}"),
        "bad table": start_cli("serve", "--ray", "--ray-address", cluster.gcs, "--ray-app-name", "broken",
                               "--ray-route-prefix", "/broken", "--replicas", "1", "--model-path", str(missing),
                               "--host", "127.0.0.1", "--port", "0"),
        "client": subprocess.Popen(
            [sys.executable, "-c", ("import sys; sys.modules['ray'] = None\n"
             "import mixed_reward_client.ray as m\ntry:\n    m.RayRewardClient()\nexcept m.RewardClientError as e:\n"
             "    print(e)")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=subprocess_env()),
    }
    outputs = {name: run.communicate(timeout=240) for name, run in runs.items()}
    done = {name: (runs[name].returncode, *out) for name, out in outputs.items()}
    taken.close()

    code, _, err = done["no ray"]
    assert code == EXIT_RAY_MISSING and 'pip install "mixed-reward[ray]"' in err, err
    code, _, err = done["bad settings"]
    assert code == EXIT_USAGE and "--max-replicas" in err, err
    code, _, err = done["unreachable"]
    assert code == EXIT_CLUSTER_UNREACHABLE and f"no Ray cluster reachable at 127.0.0.1:{closed}" in err, err
    code, _, err = done["busy port"]
    assert code == EXIT_ADDRESS_IN_USE and f"127.0.0.1:{taken_port} is already in use" in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 2, err  # Ray's token notice + ours
    code, _, err = done["bad table"]
    assert code == EXIT_USAGE, err[-3000:]
    assert "cannot load the embedding table" in err and str(missing) in err
    assert "broken" not in serve.status().applications  # it cleaned up after itself
    code, out, err = done["client"]
    assert code == 0 and 'pip install "ray[serve]==2.60.0"' in out, err
    assert time.monotonic() - started < 180  # nothing hung


def test_metrics_targets_need_the_state_token_and_each_port_listens_on_the_configured_host(cluster: Any) -> None:
    """/v1/metrics/targets answers like the state routes (401 without the token where one is set, the
    service's own error body), and each replica's own port listens on --host, not the node's address
    (`secured` has --host 127.0.0.2: its port is there and not on 127.0.0.1)."""
    refused = httpx.get(cluster.secured + "/v1/metrics/targets")
    assert refused.status_code == 401 and refused.json()["error"]["type"] == "unauthorized"
    wrong = httpx.get(cluster.secured + "/v1/metrics/targets", headers={"authorization": "Bearer nope"})
    assert wrong.status_code == 401
    (group,) = httpx.get(cluster.secured + "/v1/metrics/targets", headers={"authorization": "Bearer tok"}).json()
    (target,) = group["targets"]
    host, port = target.rsplit(":", 1)
    assert host == SECURED_HOST, target
    assert "reward_table_info{" in httpx.get(f"http://{target}/metrics").text
    assert httpx.get(f"http://{target}/readyz").json()["status"] == "ready"
    assert httpx.get(f"http://{target}/healthz").json() == {"status": "ok"}
    with pytest.raises(httpx.ConnectError):  # bound to 127.0.0.2 only
        httpx.get(f"http://127.0.0.1:{port}/metrics")
    (group,) = httpx.get(cluster.url + "/v1/metrics/targets").json()  # no token configured: open, as /v1/prompts
    assert len(group["targets"]) == 2 and all(t.startswith("127.0.0.1:") for t in group["targets"]), group


def test_the_replica_port_binds_the_host_and_advertises_what_prometheus_dials() -> None:
    from reward_server.ray_serve.deployment import replica_port_address

    assert replica_port_address("127.0.0.1", "10.0.0.7") == ("127.0.0.1", "127.0.0.1")
    assert replica_port_address("10.0.0.7", "10.0.0.7") == ("10.0.0.7", "10.0.0.7")
    assert replica_port_address("0.0.0.0", "10.0.0.7") == ("0.0.0.0", "10.0.0.7")  # every interface: the node's
    assert replica_port_address("::", "10.0.0.7") == ("::", "10.0.0.7")


def reports_after(url: str, since: float, timeout: float = 60) -> list[dict[str, Any]]:
    """Every replica's registry report made after ``since`` (wall clock): what it holds now."""
    deadline = time.monotonic() + timeout
    while True:
        replicas = info(url)["replicas"]["replicas"]
        if replicas and all(r["reported_at"] > since for r in replicas):
            return replicas
        assert time.monotonic() < deadline, replicas
        time.sleep(0.2)


def table_items() -> list[dict[str, Any]]:
    """Open-ended items in the small checkpoints' vocabulary (so every request needs its table) and
    a rule-scored one."""
    items = [{"id": f"t{i}", "response": f"<think>t</think><answer>tok{i % 40} tok{i * 7 % 40} tok9</answer>",
              "ground_truth": f"tok{i % 40} tok6 tok{i % 13}", "task_type": "caption"} for i in range(12)]
    return [*items, {"id": "y", "response": "<answer>yes</answer>", "ground_truth": "yes", "task_type": "yes_no"}]


def test_named_tables_are_multiplexed_across_replicas_by_model_id(
    cluster: Any, default_table: Any, tmp_path: Path
) -> None:
    """Two named tables over two replicas that hold one table each (--max-resident-tables 1). Serve
    routes a request that names a table (the serve_multiplexed_model_id header over HTTP, model= in
    the handle client) to the replica holding it: once each replica holds one, a burst of requests
    for both tables, over HTTP and the handle, loads no table anywhere (one request sent to the
    other replica would have to load its table there), and every answer equals the single process's."""
    tables = [f"a={build_bert_checkpoint(tmp_path / 'a', seed=11).path}",
              f"b={build_bert_checkpoint(tmp_path / 'b', seed=12).path}"]
    deploy(Settings(ray_app_name="tables", ray_route_prefix="/tables", replicas=2, max_resident_tables=1,
                    table=tables), timeout_s=300)
    url = cluster.url + "/tables"
    items = table_items()
    try:
        wait_for_replicas(url, 2)
        with running_server(default_table, table=tables) as single:
            expected = {m: httpx.post(single.url + "/score", json={"items": items, "model": m}).json() for m in "ab"}
        assert expected["a"]["table"]["content_hash"] != expected["b"]["table"]["content_hash"]

        def check(answer: httpx.Response | dict[str, Any], model: str) -> None:
            body = answer.json() if isinstance(answer, httpx.Response) else answer
            assert body["table"] == expected[model]["table"], body
            assert differ(body["results"], expected[model]["results"]) == []

        def over_http(routed: str, query: str = "", **body: Any) -> httpx.Response:
            """/score with the table in Serve's header (``body``: more top-level fields)."""
            return httpx.post(url + "/score" + query, json={"items": items, **body},
                              headers={"serve_multiplexed_model_id": routed}, timeout=60)

        # Until each replica holds one of the tables and a whole round (both tables, over the proxy
        # and the handle) loads nothing: Serve sends a table no replica holds to the replica holding
        # the fewest, and a router new in a process (this one's handle router) may place its first
        # calls anywhere until it has learnt where the tables are. One or two rounds.
        handles = {m: RayRewardClient("tables", model=m) for m in "ab"}
        loads: dict[str, Any] = {}
        deadline = time.monotonic() + 120
        while True:
            for model in "ab":
                check(over_http(model), model)
                batch = handles[model].score(items)
                check({"table": batch.table, "results": batch.results}, model)
            replicas = reports_after(url, time.time())
            held = sorted(tuple(r["resident_tables"]) for r in replicas)
            before, loads = loads, {r["replica_id"]: r["table_loads"] for r in replicas}
            if held == [("a",), ("b",)] and loads == before:
                break
            assert time.monotonic() < deadline, replicas
        holder = {r["resident_tables"][0]: r["replica_id"] for r in replicas}

        async def burst() -> None:
            clients = {m: AsyncRayRewardClient("tables", model=m) for m in "ab"}
            gate = asyncio.Semaphore(8)
            async with httpx.AsyncClient(timeout=60) as client:
                async def one(number: int) -> None:
                    model = "ab"[number % 2]
                    async with gate:
                        if number % 4 < 2:
                            answer = await client.post(url + "/score", json={"items": items},
                                                       headers={"serve-multiplexed-model-id": model})  # nginx's spelling
                            check(answer, model)
                        else:
                            batch = await clients[model].score(items)
                            check({"table": batch.table, "results": batch.results}, model)

                await asyncio.gather(*(one(n) for n in range(32)))

        asyncio.run(burst())
        replicas = reports_after(url, time.time())
        assert {r["replica_id"]: r["table_loads"] for r in replicas} == loads  # nothing was loaded anywhere
        assert {r["resident_tables"][0]: r["replica_id"] for r in replicas} == holder

        check(over_http("a", model="b"), "b")  # the body's model wins over the header
        check(over_http("a", query="?model=b"), "b")  # so does ?model=
        unknown = over_http("nope")  # never handed to Serve: a typo must not evict a real table
        assert unknown.status_code == 422 and unknown.json()["error"]["type"] == "unknown_model"
        assert "loadable: " in unknown.json()["error"]["message"] and "'nope'" in unknown.json()["error"]["message"]
        rules = {"items": [items[-1]]}  # rule-scored items never wait for a table
        assert httpx.post(url + "/score?model=b", json=rules, timeout=60).json()["results"][0]["reward"] == 1.0
        ready = httpx.get(url + "/readyz", timeout=30)  # the default table is evicted on both replicas
        assert ready.status_code == 200 and ready.json()["table"]["resident"] is False, ready.text
    finally:
        serve.delete("tables")


class ReadinessWatch(threading.Thread):
    """Polls one replica's /readyz on its own port (that replica, no other), recording every answer
    to a request sent after the signal with how long after the signal it was sent. What counts is
    when a request was *sent*: on a loaded machine an answer can take long, but a request sent
    100 ms after SIGTERM must already see 503 (as tests/test_shutdown.py for one process)."""

    def __init__(self, address: str, signalled: threading.Event, sent: list[float]) -> None:
        super().__init__(daemon=True)
        self.address, self.signalled, self.sent = address, signalled, sent
        self.answers: list[tuple[float, int]] = []

    def run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while True:
                asked = time.monotonic()
                status = client.get(f"http://{self.address}/readyz").status_code
                if self.signalled.is_set() and asked >= self.sent[0]:
                    after = asked - self.sent[0]
                    self.answers.append((after, status))
                    if (status == 503 and after >= 0.1) or after > 10:
                        return
                time.sleep(0.005)


def test_a_sigterm_under_load_drains_every_replica_and_loses_no_call(
    cluster: Any, reference: Any, tmp_path: Path
) -> None:
    """`reward-server serve --ray` with 2 replicas under load from a client with two URLs (the Serve
    proxy, then the single-process server) gets SIGTERM: every replica's own /readyz answers 503 to
    every request sent 100 ms after the signal, the replicas keep serving for --drain-seconds, the
    application is deleted, and the client fails over (the prefix then falls through to the `/`
    application, whose 404 `not_found` names no request error): every call is answered, correctly.
    The drained application has its own checkpoint, so each answer's table hash says who scored it."""
    drain = 2.0
    checkpoint = build_bert_checkpoint(tmp_path / "drained", seed=21)
    proc = start_cli("serve", "--ray", "--ray-address", cluster.gcs, "--ray-app-name", "drained",
                     "--ray-route-prefix", "/drained", "--replicas", "2", "--model-path", str(checkpoint.path),
                     "--drain-seconds", str(drain), "--host", "127.0.0.1", "--port", "0")
    stderr: list[str] = []
    ready = threading.Event()

    def read_stderr() -> None:
        for line in proc.stderr:
            stderr.append(line)
            if "ready at" in line:
                ready.set()

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    if not ready.wait(timeout=240):
        proc.kill()
        raise AssertionError("".join(stderr))
    url = cluster.url + "/drained"
    replicas = wait_for_replicas(url, 2)
    drained_hash, reference_hash = info(url)["content_hash"], info(reference.url)["content_hash"]
    assert drained_hash != reference_hash
    items = [dict(item) for item, _, _ in ONE_OF_EACH if item["task_type"] not in ("open_ended", "caption")]
    items.append({"response": "<answer>tok5 tok9 tok6</answer>", "ground_truth": "tok5 tok9 tok6",
                  "task_type": "caption"})  # identical texts: 2 with any table
    with RewardClient(reference.url) as client:
        expected = client.score(items).results
    signalled, sent = threading.Event(), [0.0]
    watches = [ReadinessWatch(r["metrics"], signalled, sent) for r in replicas]

    async def load() -> tuple[list[tuple[float, str, list[dict[str, Any]]]], float]:
        retry = RetryPolicy(max_attempts=20, backoff=0.05, max_backoff=0.5, deadline=120)
        client = AsyncRewardClient([url, reference.url], retry=retry, timeout=60)
        answers: list[tuple[float, str, list[dict[str, Any]]]] = []
        stop = asyncio.Event()

        async def worker() -> None:
            while not stop.is_set():
                batch = await client.score(items)  # raises if a call is lost
                answers.append((time.monotonic(), batch.table["content_hash"], batch.results))

        async def until(condition: Any, timeout: float) -> None:
            deadline = time.monotonic() + timeout
            while not condition():
                failed = [task for task in workers if task.done()]
                if failed:
                    await failed[0]  # a worker's call failed: raise its error
                assert time.monotonic() < deadline
                await asyncio.sleep(0.01)

        workers = [asyncio.create_task(worker()) for _ in range(6)]
        await until(lambda: len(answers) >= 12, 120)  # steady load on the drained application
        for watch in watches:
            watch.start()
        await asyncio.sleep(0.2)
        sent[0] = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        signalled.set()
        await until(lambda: proc.poll() is not None, 120)
        exited = time.monotonic()
        await until(lambda: sum(1 for t, _, _ in answers if t > exited) >= 12, 120)  # after the failover
        stop.set()
        await asyncio.gather(*workers)
        await client.aclose()
        return answers, exited

    answers, exited = asyncio.run(load())
    for watch in watches:
        watch.join(timeout=30)
    reader.join(timeout=30)  # the process has exited: its stderr is at its end
    assert proc.returncode == 0, "".join(stderr)
    assert "readiness is 503 on every replica of 'drained'" in "".join(stderr)
    for watch in watches:
        late = [status for after, status in watch.answers if after >= 0.1]
        assert late and set(late) == {503}, (watch.address, watch.answers[:20])
    assert all(differ(rows, expected) == [] for _, _, rows in answers)
    assert {h for _, h, _ in answers} == {drained_hash, reference_hash}
    during = [t - sent[0] for t, h, _ in answers if h == drained_hash and t > sent[0]]
    assert during and max(during) >= drain / 2, during  # served on through the drain, not deleted at once
    assert all(h == reference_hash for t, h, _ in answers if t > exited + 1.0)  # failed over, stayed there
    assert "drained" not in serve.status().applications
    with pytest.raises(ValueError):  # its registry went with it
        ray.get_actor("drained-replicas", namespace="mixed-reward")


def test_the_first_signal_starts_the_shutdown_and_a_second_cuts_it_short() -> None:
    """The launcher's signal rule, as `reward-server serve`'s: a SIGTERM drains, a Ctrl-C does not,
    a second signal of either kind stops waiting (the drain and the deletion)."""
    from reward_server.ray_serve.launch import Signals

    term = Signals()
    term.handle(signal.SIGTERM, None)
    assert term.first.is_set() and term.drains and not term.second.is_set()
    term.handle(signal.SIGINT, None)
    assert term.second.is_set() and term.drains  # the second signal does not change what the first began
    interrupt = Signals()
    interrupt.handle(signal.SIGINT, None)
    assert interrupt.first.is_set() and not interrupt.drains


def test_the_registry_forgets_a_replica_that_stops_reporting() -> None:
    from reward_server.ray_serve.registry import ReplicaRegistryImpl, summary

    registry = ReplicaRegistryImpl(ttl_s=0.2)
    assert registry.report("a", {"content_hash": "h1", "generation": 0}) == (0, None)
    registry.report("b", {"content_hash": "h1", "generation": 0})
    assert registry.publish({"model_path": "/m", "device": None, "dtype": None}) == 1
    assert registry.report("a", {"content_hash": "h2", "generation": 1})[0] == 1
    assert summary(registry.live(), 1)["tables"] == {"h2": 1, "h1": 1}
    time.sleep(0.3)
    registry.report("b", {"content_hash": "h2", "generation": 1})
    assert [r["replica_id"] for r in registry.live()] == ["b"]  # "a" went quiet: dropped
    registry.forget("b")
    assert registry.live() == []

    async def drain() -> tuple[list[float], float, float]:
        waiting = [asyncio.ensure_future(registry.wait_drain()) for _ in range(3)]  # three replicas' calls
        await asyncio.sleep(0)
        assert not any(w.done() for w in waiting)
        began = await registry.begin_drain()
        late = await registry.wait_drain()  # a replica that starts while the application drains
        return [await w for w in waiting], began, late

    seen, began, late = asyncio.run(drain())
    assert seen == [began] * 3 and late == began


def test_the_serve_config_file_builds_the_documented_application() -> None:
    from ray.serve.schema import ServeDeploySchema

    from reward_server.ray_serve.deployment import build

    config = yaml.safe_load((REPO / "deploy" / "ray" / "serve.yaml").read_text())
    schema = ServeDeploySchema(**config)
    (app,) = schema.applications
    assert app.import_path == "reward_server.ray_serve.deployment:build"
    built = build(app.args)
    assert built._bound_deployment._deployment_config.num_replicas == app.args["replicas"]
    scaling = deployment_options(Settings(min_replicas=1, max_replicas=4, num_gpus=0.25), cluster_gpus=1)
    assert scaling["autoscaling_config"]["max_replicas"] == 4 and "num_replicas" not in scaling
    assert scaling["ray_actor_options"] == {"num_cpus": 1.0, "num_gpus": 0.25}
    assert deployment_options(Settings(), cluster_gpus=2)["ray_actor_options"]["num_gpus"] == 1.0
    assert deployment_options(Settings(), cluster_gpus=0)["ray_actor_options"]["num_gpus"] == 0.0
