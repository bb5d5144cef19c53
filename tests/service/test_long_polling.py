"""Long polling end to end (real host, Azurite, emulator): a read with `Prefer: wait=N` is held until its run
changes (it begins, ends, needs action, is cancelled, here or on another instance) or N runs out, and says so
with `Preference-Applied`. The stack polls (poll chain every 1-2 s), so an end is seen at the chain's next look."""

from __future__ import annotations

import threading
import time

import httpx
import pytest


def held_get(client: httpx.Client, run_id: str, wait: int) -> tuple[httpx.Response, float]:
    began = time.monotonic()
    response = client.get(f"/api/runs/{run_id}", headers={"Prefer": f"wait={wait}"}, timeout=wait + 30)
    return response, time.monotonic() - began


def started(stack, duration_ms: int, input: str = "long poll", **fields) -> str:
    response = stack.start(input, metadata={"emulator_duration_ms": str(duration_ms)}, **fields)
    assert response.status_code == 202, response.text
    return response.json()["id"]


def until_working(client: httpx.Client, run_id: str) -> None:
    """Long-poll until the run has left `queued` (the chain's first look)."""
    for _ in range(5):
        response, _ = held_get(client, run_id, 10)
        if response.json()["status"] != "queued":
            return
    raise AssertionError(f"run {run_id} never began")


def test_a_held_read_answers_when_the_run_begins_and_when_it_ends(stack):
    run_id = started(stack, 3000)
    seen, gets, began = [], 0, time.monotonic()
    while not seen or seen[-1] not in ("completed", "failed"):
        response, held = held_get(stack.client, run_id, 30)
        gets += 1
        assert response.status_code == 200 and response.headers["preference-applied"] == "wait=30"
        assert held < 25  # answered by the change, long before the wait ran out
        seen.append(response.json()["status"])
    (record,) = stack.provider_responses(run_id)
    lag = time.time() - record["finished_at"]
    assert seen[-1] == "completed" and response.json()["output_text"]
    assert "in_progress" in seen and gets <= 3  # queued -> in_progress, then -> completed
    assert lag < 4.0  # the poll chain's next look (at most 2 s apart here) plus the answer
    assert time.monotonic() - began < 15


def test_a_held_read_runs_out_and_answers_the_run_as_it_is(stack):
    run_id = started(stack, 60_000)
    until_working(stack.client, run_id)
    response, held = held_get(stack.client, run_id, 2)
    assert response.status_code == 200 and response.json()["status"] == "in_progress"
    assert response.headers["preference-applied"] == "wait=2" and "retry-after" in response.headers
    assert 1.9 < held < 6
    polled = stack.post(
        "/api/runs", {"continuation_token": response.json()["continuation_token"]}, headers={"Prefer": "wait=1"}
    )  # the token poll holds too
    assert polled.status_code == 202 and polled.headers["preference-applied"] == "wait=1"
    stack.post(f"/api/runs/{run_id}/cancel")
    ended, held = held_get(stack.client, run_id, 999)  # bounded by MAX_READ_WAIT_SECONDS; an ended run: at once
    assert ended.headers["preference-applied"] == "wait=60" and ended.json()["status"] == "cancelled" and held < 3


def cancelled_while_held(
    holder: httpx.Client, canceller: httpx.Client, run_id: str, wait: int
) -> tuple[httpx.Response, float, float]:
    """Hold a read on the run through `holder` while `canceller` cancels it 1 s in; (answer, seconds held,
    seconds from the cancel to the answer)."""
    cancelled_at: list[float] = []

    def cancel_soon():
        time.sleep(1.0)
        cancelled_at.append(time.monotonic())
        assert canceller.post(f"/api/runs/{run_id}/cancel").json()["status"] == "cancelled"

    thread = threading.Thread(target=cancel_soon)
    thread.start()
    response, held = held_get(holder, run_id, wait)
    thread.join()
    return response, held, time.monotonic() - cancelled_at[0]


def test_a_cancel_answers_the_held_read(stack):
    run_id = started(stack, 60_000)
    until_working(stack.client, run_id)
    response, _, after_cancel = cancelled_while_held(stack.client, stack.client, run_id, 30)
    assert response.json()["status"] == "cancelled"
    assert after_cancel < 2.5  # this instance's own write wakes the read


def test_a_held_read_answers_when_the_run_needs_action(stack):
    tools = [{"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {}}}]
    run_id = started(stack, 2000, tools=tools, input="call:get_weather please")
    for _ in range(4):
        response, held = held_get(stack.client, run_id, 30)
        if response.json()["status"] not in ("queued", "in_progress"):
            break
    assert response.json()["status"] == "requires_action" and held < 25
    assert response.json()["required_action"]["calls"][0]["name"] == "get_weather"


@pytest.fixture(scope="module")
def other_instance(stack):
    """A second host on the same storage: another instance of the app."""
    host = stack.start_host("longpoll-other")
    yield httpx.Client(base_url=host.base_url, timeout=30, headers=stack.key_headers)
    host.stop()


def test_a_held_read_learns_of_an_end_made_on_another_instance(stack, other_instance):
    run_id = started(stack, 120_000)
    until_working(stack.client, run_id)
    response, held, after_cancel = cancelled_while_held(stack.client, other_instance, run_id, 40)
    assert response.json()["status"] == "cancelled"
    # Seen at the held read's next storage re-read (1 s growing to 5 s), long before its 40 s ran out
    assert after_cancel < 7.0 and held < 20
