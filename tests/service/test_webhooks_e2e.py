"""Webhooks end to end: signed, retried with one stable webhook-id, recorded on the run,
redeliverable, never redirected, and delivered even when the host dies mid-delivery."""

from __future__ import annotations

import json
import time
from datetime import datetime

import standardwebhooks

from ..stack import WEBHOOK_SECRETS


def wait_for_webhook_state(stack, run_id: str, states: tuple[str, ...], timeout: float = 40) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = stack.get(f"/api/runs/{run_id}").json()
        if run.get("webhook", {}).get("state") in states:
            return run
        time.sleep(0.3)
    raise AssertionError(f"webhook of {run_id} never reached {states}: {run.get('webhook')}")


def test_a_finished_run_is_posted_signed_with_the_run(stack):
    name = f"ok-{time.time_ns()}"
    run = stack.start("notify me", webhook_url=stack.hook_url(name), metadata={"emulator_duration_ms": "800"}).json()
    assert run["webhook"]["state"] == "waiting"
    final = wait_for_webhook_state(stack, run["id"], ("delivered",))
    [delivery] = stack.received(name)
    for secret in WEBHOOK_SECRETS:  # one signature per rotation secret, each verifies on its own
        event = standardwebhooks.Webhook(secret).verify(delivery["body"], delivery["headers"])
    assert event["type"] == "run.completed"
    assert event["data"]["id"] == run["id"] and event["data"]["output_text"] == final["output_text"]
    assert len(delivery["headers"]["webhook-signature"].split()) == 2
    [attempt] = final["webhook"]["attempts"]
    assert attempt["ok"] and attempt["status_code"] == 204 and attempt["error"] is None
    # Sent after the run ended, and timed in whole ms (the local receiver answers at once).
    sent_at = datetime.fromisoformat(attempt["at"].replace("Z", "+00:00")).timestamp()
    assert final["completed_at"] - 0.001 <= sent_at <= time.time()
    assert isinstance(attempt["duration_ms"], int) and 0 <= attempt["duration_ms"] < 10_000, attempt


def test_a_receiver_failing_twice_gets_three_attempts_with_one_webhook_id(stack):
    name = f"flaky-{time.time_ns()}"
    run = stack.start("x", webhook_url=stack.hook_url(name, fail=2), metadata={"emulator_duration_ms": "0"}).json()
    final = wait_for_webhook_state(stack, run["id"], ("delivered",))
    deliveries = stack.received(name)
    assert len(deliveries) == 3
    assert len({d["headers"]["webhook-id"] for d in deliveries}) == 1
    assert [a["status_code"] for a in final["webhook"]["attempts"]] == [500, 500, 204]
    assert sum(a["ok"] for a in final["webhook"]["attempts"]) == 1


def test_a_receiver_that_never_answers_ends_failed_then_redeliver_succeeds(stack):
    name = f"silent-{time.time_ns()}"
    url = stack.hook_url(name, hang=4, hang_first=4)  # the schedule has 4 attempts; the 5th is answered
    run = stack.start("x", webhook_url=url, metadata={"emulator_duration_ms": "0"}).json()
    failed = wait_for_webhook_state(stack, run["id"], ("failed",), timeout=60)
    attempts = failed["webhook"]["attempts"]
    assert len(attempts) == 4
    assert all(not a["ok"] and a["status_code"] is None and a["error"] for a in attempts)
    again = stack.post(f"/api/runs/{run['id']}/webhook/redeliver")
    assert again.status_code == 202
    delivered = wait_for_webhook_state(stack, run["id"], ("delivered",))
    assert len(delivered["webhook"]["attempts"]) == 5 and delivered["webhook"]["attempts"][-1]["ok"]
    assert len({d["headers"]["webhook-id"] for d in stack.received(name)}) == 1


def test_410_gone_stops_retries(stack):
    name = f"gone-{time.time_ns()}"
    run = stack.start("x", webhook_url=stack.hook_url(name, status=410), metadata={"emulator_duration_ms": "0"}).json()
    final = wait_for_webhook_state(stack, run["id"], ("failed",))
    time.sleep(2.5)
    assert len(stack.received(name)) == 1
    assert final["webhook"]["attempts"][0]["gone"] is True


def test_a_redirect_is_not_followed(stack):
    name, target = f"redir-{time.time_ns()}", f"target-{time.time_ns()}"
    url = stack.hook_url(name, redirect=stack.hook_url(target), status=302)
    run = stack.start("x", webhook_url=url, metadata={"emulator_duration_ms": "0"}).json()
    final = wait_for_webhook_state(stack, run["id"], ("failed",), timeout=40)
    assert {a["status_code"] for a in final["webhook"]["attempts"]} == {302}
    assert stack.received(target) == []


def test_redeliver_needs_a_finished_run_with_a_webhook(stack):
    plain = stack.start("x", metadata={"emulator_duration_ms": "0"}).json()
    refused = stack.post(f"/api/runs/{plain['id']}/webhook/redeliver")
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "no_webhook", refused.text
    running = stack.start("x", webhook_url=stack.hook_url("later"), metadata={"emulator_duration_ms": "5000"}).json()
    early = stack.post(f"/api/runs/{running['id']}/webhook/redeliver")
    assert early.status_code == 409 and early.json()["error"]["code"] == "run_not_finished", early.text
    assert stack.get(f"/api/runs/{running['id']}").json()["webhook"]["attempts"] == []  # nothing was sent


def test_a_host_killed_during_delivery_still_delivers_after_restart(stack):
    name = f"crash-{time.time_ns()}"
    run = stack.start(
        "x", webhook_url=stack.hook_url(name, hang=30, hang_first=1), metadata={"emulator_duration_ms": "0"}
    ).json()
    deadline = time.monotonic() + 20
    while not stack.received(name) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert stack.received(name), "the first attempt never started"
    stack.host.kill()  # mid-delivery: the attempt is never recorded, its message never deleted
    stack.host.start(timeout=60)
    final = wait_for_webhook_state(stack, run["id"], ("delivered",), timeout=60)
    deliveries = stack.received(name)
    assert len(deliveries) >= 2 and len({d["headers"]["webhook-id"] for d in deliveries}) == 1
    assert json.loads(deliveries[-1]["body"])["data"]["id"] == run["id"]
    assert final["webhook"]["attempts"][-1]["ok"]
