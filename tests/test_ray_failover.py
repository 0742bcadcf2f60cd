"""The clients' failover rule for answers that blame the URL, not the request (issue #21 item 2).

When `reward-server serve --ray` deletes its application, Serve's proxy answers 404 in plain text
(or, when another application serves `/`, that application's own 404 `not_found`). Neither says the
request is wrong, so the clients fail over to the next URL instead of raising :class:`BadRequest`;
the service's own 4xx bodies stay final, and a 413 from anyone still makes the client split the
batch. No Ray here: the proxy's exact answer comes from a small real HTTP server (as in
test_clients_failures.py), the service is the real one (the ``server`` fixture).
"""

from __future__ import annotations

import json

import pytest
from mixed_reward_client import BadRequest, RetryPolicy, RewardClient, ServerUnavailable
from mixed_reward_client._policy import Retryable, read_answer, service_error_type
from test_clients_failures import YES, Reply, http_stub

# What Ray Serve 2.60's proxy answers for a path no application serves (ray/serve/_private/proxy.py).
SERVE_404 = b"Path '/score' not found. Ping http://.../-/routes for available routes."


def service_error(type_: str, message: str = "m") -> bytes:
    return json.dumps({"error": {"type": type_, "message": message, "details": []}}).encode()


@pytest.mark.parametrize(("status", "content", "reason"), [
    (404, SERVE_404, "HTTP 404 (not the reward service's answer): " + SERVE_404.decode()),
    (404, service_error("not_found", "Not Found"), "HTTP 404 (the service at this URL has no such route): Not Found"),
    (404, b'{"detail": "Not Found"}', "HTTP 404 (not the reward service's answer): Not Found"),
    (403, b"<html>403 Forbidden</html>", "HTTP 403 (not the reward service's answer): <html>403 Forbidden</html>"),
    (401, b'{"error": "no auth"}', "HTTP 401 (not the reward service's answer): no auth"),
    (404, b"", "HTTP 404 (not the reward service's answer): no body"),
])
def test_a_4xx_that_is_not_the_services_own_error_is_retried_elsewhere(status: int, content: bytes, reason: str) -> None:
    with pytest.raises(Retryable) as caught:
        read_answer("http://x", status, {}, content, "results")
    assert caught.value.reason == reason


@pytest.mark.parametrize(("status", "content"), [
    (422, service_error("invalid_item")),
    (401, service_error("unauthorized")),
    (404, service_error("unknown_prompt")),  # the service's other 404s are about the request
    (404, service_error("admin_disabled")),
    (413, service_error("body_too_large")),
    (413, b"<html>413 Request Entity Too Large</html>"),  # a proxy's limit: the client splits the batch
])
def test_the_services_own_4xx_and_any_413_stay_final(status: int, content: bytes) -> None:
    with pytest.raises(BadRequest) as caught:
        read_answer("http://x", status, {}, content, "results")
    assert caught.value.status_code == status


def test_only_the_services_error_shape_counts_as_its_own() -> None:
    assert service_error_type(json.loads(service_error("invalid_item"))) == "invalid_item"
    assert service_error_type({"error": {"type": "x"}}) is None  # no message: not the service's shape
    assert service_error_type({"error": "x"}) is None
    assert service_error_type({"detail": "x"}) is None
    assert service_error_type("x") is None


def deleted_serve_app(_: bytes, __: int) -> Reply:
    return 404, {"content-type": "text/plain"}, SERVE_404


def test_a_deleted_serve_application_fails_over_to_the_next_url(server) -> None:
    with http_stub(deleted_serve_app) as (proxy, seen):
        with RewardClient([proxy, server.url], retry=RetryPolicy(max_attempts=2, backoff=0.01)) as client:
            assert client.score([YES]).rewards == [2.0]
            assert client.score([YES]).rewards == [2.0]  # the answering URL stays preferred
        assert len(seen) == 1
        with RewardClient(proxy, retry=RetryPolicy(max_attempts=3, backoff=0.01)) as client, \
                pytest.raises(ServerUnavailable) as caught:
            client.score([YES])
        assert [a.reason for a in caught.value.attempts] == [
            "HTTP 404 (not the reward service's answer): " + SERVE_404.decode()] * 3
