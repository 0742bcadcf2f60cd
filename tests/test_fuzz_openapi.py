"""Schemathesis against the real server's /openapi.json: every check, zero failures allowed.

A fixed seed and derandomized generation make the run the same on every machine; the budget
(examples per operation) keeps it well under a minute on a CI runner. The server runs with both
tokens set, so the auth checks exercise real 401s; schemathesis is given the tokens per scheme.

One expectation is widened, on purpose and only this one: ``positive_data_acceptance`` allows
422, because a schema cannot say that a grounding truth needs four numbers or that a checkpoint
path must exist. Everything else (a 500, a 400, an undocumented status, a body that does not
match its schema, a 200 without a token, invalid data accepted) fails the test.
"""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.config import SchemathesisConfig
from serving import running_server

from reward_server.rewards.registry import default_registry

SCORING_TOKEN = "fuzz-scoring-token"
ADMIN_TOKEN = "fuzz-admin-token"
CONFIG = f"""
seed = 20260
[generation]
deterministic = true
[checks.positive_data_acceptance]
expected-statuses = ["2xx", "401", "404", "409", "422", "429"]
[auth.openapi.scoringToken]
bearer = "{SCORING_TOKEN}"
[auth.openapi.scoringTokenQuery]
api_key = "{SCORING_TOKEN}"
[auth.openapi.adminToken]
bearer = "{ADMIN_TOKEN}"
"""


@pytest.fixture(scope="module")
def fuzzed_server(default_table, tmp_path_factory):
    # Small limits so generated requests stay cheap; /admin/reload of the default reloads in ~1 s.
    # The difficulty state is on, so its routes are fuzzed for real rather than answering 404.
    state = tmp_path_factory.mktemp("fuzz-state") / "state.sqlite"
    with running_server(
        default_table, api_token=SCORING_TOKEN, admin_token=ADMIN_TOKEN, max_items_per_request=64,
        max_chars_per_text=4096, max_body_bytes=1 << 20, state_path=str(state),
    ) as srv:
        yield srv


@pytest.fixture(scope="module")
def api_schema(fuzzed_server):
    return schemathesis.openapi.from_url(
        fuzzed_server.url + "/openapi.json", config=SchemathesisConfig.from_str(CONFIG)
    )


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_openapi_contract(case) -> None:
    case.call_and_validate(timeout=60)


def test_openapi_documents_every_status_auth_and_task_names(fuzzed_server, server) -> None:
    document = httpx.get(fuzzed_server.url + "/openapi.json").json()
    paths = document["paths"]
    statuses = {(path, method): set(op["responses"]) for path, ops in paths.items() for method, op in ops.items()}
    assert statuses[("/score", "post")] >= {"200", "401", "413", "422", "429", "503"}
    assert statuses[("/get_reward", "post")] >= {"200", "401", "413", "422", "429", "503"}
    assert statuses[("/admin/reload", "post")] >= {"200", "401", "404", "409", "413", "422"}
    assert statuses[("/slime", "post")] >= {"200", "401", "413", "422", "429", "503"}
    assert statuses[("/v1/sample", "post")] >= {"200", "401", "404", "413", "422"}
    assert statuses[("/readyz", "get")] >= {"200", "503"}
    schemes = document["components"]["securitySchemes"]
    assert schemes["scoringToken"] == {"type": "http", "scheme": "bearer", "description": "REWARD_API_TOKEN"}
    assert schemes["scoringTokenQuery"]["in"] == "query" and schemes["scoringTokenQuery"]["name"] == "token"
    assert paths["/score"]["post"]["security"] == [{"scoringToken": []}]
    assert paths["/get_reward"]["post"]["security"] == [{"scoringToken": []}, {"scoringTokenQuery": []}]
    assert paths["/admin/reload"]["post"]["security"] == [{"adminToken": []}]
    assert paths["/slime"]["post"]["security"] == [{"scoringToken": []}, {"scoringTokenQuery": []}]
    assert paths["/v1/sample"]["post"]["security"] == [{"scoringToken": []}]
    assert not any(key.startswith("x-") for ops in paths.values() for op in ops.values() for key in op)
    item = document["components"]["schemas"]["RequestItem"]["properties"]["task_type"]
    assert item["enum"] == default_registry().accepted_names()  # the server's registry, not a hand-kept list
    assert {"yes_no", "mcq", "chart", "grounding", "open_ended", "multiple_choice", "bbox", "caption"} <= set(
        item["enum"]
    )
    # A server without tokens declares no security: a generated client must not send one nobody checks.
    open_paths = httpx.get(server.url + "/openapi.json").json()["paths"]
    assert all("security" not in op for ops in open_paths.values() for op in ops.values())


# The seven contract violations schemathesis found (the server refused what the schema allowed, or
# the reverse): each body is now refused by the server AND invalid under the published schema.
CONTRACT_CASES = [
    ("/score", "ScoreRequest", {"items": [{"response": "yes", "ground_truth": "yes", "task_type": "yes_no"}],
                                "options": {"profile": ""}}),
    ("/slime", "SlimeSample", {"prompt": "p", "response": "yes", "label": None}),
    ("/v1/pools/p1", "PoolRequest", {"prompt_ids": [""]}),
    ("/v1/sample", "SampleRequest", {"candidates": ["a"], "pool": "p1", "k": 1}),
    ("/v1/sample", "SampleRequest", {"candidates": ["a\x07b"], "k": 1}),
    ("/score", "ScoreRequest", {"items": [{"response": "yes", "ground_truth": "yes", "task_type": "yes_no",
                                           "prompt_id": "line\nbreak"}]}),
    ("/admin/reload", "ReloadRequest", {"model_path": ""}),
]


@pytest.mark.parametrize(("path", "schema_name", "body"), CONTRACT_CASES, ids=[f"{p}-{i}" for i, (p, _, _) in
                                                                           enumerate(CONTRACT_CASES)])
def test_the_schema_says_what_the_server_enforces(fuzzed_server, path: str, schema_name: str, body: dict) -> None:
    import jsonschema

    document = httpx.get(fuzzed_server.url + "/openapi.json").json()
    validator = jsonschema.Draft202012Validator({**document, "$ref": f"#/components/schemas/{schema_name}"})
    assert not validator.is_valid(body), (schema_name, body)
    token = ADMIN_TOKEN if path == "/admin/reload" else SCORING_TOKEN
    method = "PUT" if path.startswith("/v1/pools/") else "POST"
    answer = httpx.request(method, fuzzed_server.url + path, json=body, headers={"authorization": f"Bearer {token}"})
    assert answer.status_code == 422, answer.text
