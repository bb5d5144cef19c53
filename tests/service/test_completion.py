"""Completion without the wait, end to end: the emulator pushes signed provider webhooks to the function app
(push), or the poll chain holds the provider's stream (watch); polling stays as the safety net."""

from __future__ import annotations

import time

import httpx
import pytest

from local.azurite import start_for_tests


@pytest.fixture(scope="module")
def own_storage():
    """Storage of its own for each host: hosts sharing a queue would take each other's poll messages."""
    started = []

    def storage() -> str:
        started.append(start_for_tests(f"completion-{time.time_ns()}"))
        return started[-1].connection_string

    yield storage
    for azurite in started:
        azurite.stop()


def register_endpoint(stack) -> dict:
    reply = httpx.post(
        f"{stack.emulator.base_url}/webhook_endpoints",
        json={
            "url": "http://127.0.0.1:9/not-yet",
            "event_types": ["response.completed", "response.failed", "response.cancelled", "response.incomplete"],
        },
    )
    reply.raise_for_status()
    return reply.json()


@pytest.fixture(scope="module")
def push_host(stack, own_storage):
    endpoint = register_endpoint(stack)
    host = stack.start_host(
        "push",
        AzureWebJobsStorage=own_storage(),
        PROVIDER_WEBHOOK_SECRETS=endpoint["signing_secret"],
        SAFETY_POLL_INITIAL_SECONDS="6",
        SAFETY_POLL_MAX_SECONDS="8",
    )
    httpx.post(
        f"{stack.emulator.base_url}/webhook_endpoints/{endpoint['id']}", json={"url": host.url("api/provider/webhooks")}
    ).raise_for_status()
    yield httpx.Client(base_url=host.base_url, timeout=30, headers=stack.key_headers)
    httpx.delete(f"{stack.emulator.base_url}/webhook_endpoints/{endpoint['id']}")
    host.stop()


@pytest.fixture(scope="module")
def watch_host(stack, own_storage):
    host = stack.start_host(
        "watch", AzureWebJobsStorage=own_storage(), COMPLETION_STRATEGY="watch", WATCH_WINDOW_SECONDS="4"
    )
    yield httpx.Client(base_url=host.base_url, timeout=30, headers=stack.key_headers)
    host.stop()


def health_details(stack, client: httpx.Client) -> dict:
    return client.get("/api/health/details", headers={"x-functions-key": stack.local.master_key}).json()["checks"]


def run_to_webhook(stack, client: httpx.Client, name: str, **metadata) -> tuple[dict, dict, float]:
    """Start a run with a webhook; wait for the webhook; (final run, provider record, lag webhook - provider end)."""
    response = client.post(
        "/api/runs",
        json={
            "input": "x",
            "webhook_url": stack.hook_url(name),
            "metadata": {"emulator_duration_ms": "1500", **metadata},
        },
    )
    assert response.status_code == 202, response.text
    run_id = response.json()["id"]
    deadline = time.monotonic() + 40
    while not stack.received(name) and time.monotonic() < deadline:
        time.sleep(0.05)
    (hook,) = [r for r in stack.received(name) if r["verified"]][:1]
    (record,) = stack.provider_responses(run_id)
    final = client.get(f"/api/runs/{run_id}").json()
    return final, record, hook["at"] - record["finished_at"]


def test_push_ends_the_run_and_sends_the_webhook_right_after_the_provider(stack, push_host):
    assert health_details(stack, push_host)["completion"]["strategy"] == "push"
    final, record, lag = run_to_webhook(stack, push_host, f"push-{time.time_ns()}")
    assert final["status"] == "completed"
    assert lag < 3.0  # the safety-net poll would have come at 6 s +- 20 %
    # The one retrieve the event calls for, and the early look (at 1 s, to learn that the provider began) unless
    # the host's queue hands it over after the event ended the run
    assert record["counters"]["retrieve"] <= 2


def test_push_tells_a_working_run_from_a_waiting_one_and_asks_for_short_retries(stack, push_host):
    run = push_host.post("/api/runs", json={"input": "x", "metadata": {"emulator_duration_ms": "8000"}}).json()
    # The early look is due at 1 s, far before the safety net (6 s) and the end (8 s); a loaded machine's queue
    # may hand it over late, so the test waits for the first change of status rather than a fixed time.
    deadline = time.monotonic() + 7
    working = push_host.get(f"/api/runs/{run['id']}")
    while working.json()["status"] == "queued" and time.monotonic() < deadline:
        time.sleep(0.2)
        working = push_host.get(f"/api/runs/{run['id']}")
    assert working.json()["status"] == "in_progress"
    assert working.headers["retry-after"] == "1"  # the provider's webhook ends the run the moment it ends
    push_host.post(f"/api/runs/{run['id']}/cancel")


def test_push_with_the_providers_webhook_lost_still_ends_the_run_by_the_safety_net(stack, push_host):
    # 4 s: the early look (at 1 s) finds it working, so only the safety net (6 s later +- 20 %) can end it
    final, record, lag = run_to_webhook(
        stack, push_host, f"dropped-{time.time_ns()}", emulator_webhook_drop="true", emulator_duration_ms="4000"
    )
    assert final["status"] == "completed"
    assert 0.8 < lag < 25.0 and record["webhook"]["deliveries"][0]["state"] == "dropped"


def test_a_forged_provider_webhook_is_refused(stack, push_host):
    response = push_host.post(
        "/api/provider/webhooks",
        json={"type": "response.completed", "data": {"id": "resp_x"}},
        headers={
            "webhook-id": "wh_1",
            "webhook-timestamp": str(int(time.time())),
            "webhook-signature": "v1,bm90IGEgc2lnbmF0dXJl",
        },
    )
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_provider_event"


def test_without_a_provider_secret_the_webhook_route_says_it_is_off(stack):
    response = stack.post("/api/provider/webhooks", json={})
    assert response.status_code == 404 and response.json()["error"]["code"] == "provider_webhooks_off"


def test_watch_ends_the_run_at_the_providers_terminal_event(stack, watch_host):
    assert health_details(stack, watch_host)["completion"]["strategy"] == "watch"
    final, record, lag = run_to_webhook(stack, watch_host, f"watch-{time.time_ns()}", emulator_duration_ms="6000")
    assert final["status"] == "completed" and lag < 3.0
    assert record["counters"]["stream"] >= 2  # at least two windows of 4 s for a 6 s run
    assert record["counters"]["retrieve"] <= 2
