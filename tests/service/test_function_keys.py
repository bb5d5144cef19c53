"""Function keys are switched on in the test stack, as the real Functions host always enforces them: FUNCTION
routes refuse a request without a valid key (401, before the app sees it), the health check and the page stay
anonymous, and the metrics need the master key."""

from __future__ import annotations

import time

import httpx
import pytest


@pytest.fixture
def keyless(stack):
    with httpx.Client(base_url=stack.host.base_url, timeout=30) as client:
        yield client


def test_function_routes_without_a_key_get_401_and_do_nothing(stack, keyless):
    run_id = stack.start("x", metadata={"emulator_duration_ms": "0"}).json()["id"]
    probe = f"keyless-{time.time_ns()}"
    calls = [
        ("POST", "/api/runs", {"input": "x", "metadata": {"probe": probe}}),
        ("GET", f"/api/runs/{run_id}", None),
        ("POST", f"/api/runs/{run_id}/cancel", None),
        ("GET", f"/api/runs/{run_id}/stream", None),
        ("POST", f"/api/runs/{run_id}/webhook/redeliver", None),
        ("POST", "/api/sessions", None),
        ("GET", "/api/sessions/ses_000000000000000000000000", None),
    ]
    for method, path, body in calls:
        for headers in ({}, {"x-functions-key": "not-the-key"}):
            refused = keyless.request(method, path, json=body, headers=headers)
            assert (refused.status_code, refused.content) == (401, b""), (method, path, headers)
    assert stack.emulator.responses(probe=probe) == []  # the refused start never reached the service


def test_the_key_is_accepted_in_the_header_and_as_code(stack, keyless):
    run_id = stack.start("x", metadata={"emulator_duration_ms": "0"}).json()["id"]
    assert keyless.get(f"/api/runs/{run_id}", headers=stack.key_headers).status_code == 200
    assert keyless.get(f"/api/runs/{run_id}", params={"code": stack.function_key}).status_code == 200


def test_health_and_the_page_stay_anonymous_and_health_says_only_its_status(keyless):
    # The defect (issue 21): anonymous health told anyone the provider, the default model, the completion strategy
    # and how many callers and keys the facade has.
    health = keyless.get("/api/health")
    assert health.status_code == 200 and health.json() == {"status": "healthy"}
    assert keyless.get("/api/ui").status_code == 200


@pytest.mark.parametrize("path", ["/api/metrics", "/api/health/details"])
def test_metrics_and_health_details_need_the_master_key(stack, keyless, path):
    for headers in ({}, stack.key_headers):
        assert keyless.get(path, headers=headers).status_code == 401
    assert keyless.get(path, headers={"x-functions-key": stack.local.master_key}).status_code == 200
