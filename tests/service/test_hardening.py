"""Defects found by review and fuzzing, end to end over real HTTP on Azurite and the emulator (each of these
failed before its fix)."""

from __future__ import annotations

import threading
import time

import pytest
from openai import OpenAI

from .. import sse

EMOJI = "\U0001f600"


def test_an_emoji_heavy_input_is_accepted_and_reaches_the_provider_exactly(stack):
    # 29,000 emoji: 29,000 Python characters, 116,000 bytes as Table Storage counts them (was a 503).
    text = EMOJI * 29_000
    response = stack.start(text, metadata={"emulator_duration_ms": "500"})
    assert response.status_code in (200, 202), response.text
    final = stack.wait(response.json()["id"])
    assert final["status"] == "completed"
    provider = OpenAI(base_url=stack.emulator.base_url, api_key="t")
    items = provider.responses.input_items.list(final["provider_response_id"]).data
    assert items[0].content[0].text == text


def test_an_unresolvable_webhook_host_is_a_400_naming_the_field(stack):
    response = stack.start("x", webhook_url="https://no-such-host.invalid/hook")
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "webhook_url" and "does not resolve" in error["message"]


def stream_until_cancelled(stack, **metadata):
    """Stream a long run, cancel it after a few events, and read its stream to the end."""
    body = {
        "input": "long",
        "stream": True,
        "metadata": {"emulator_duration_ms": "20000", "emulator_output_chars": "2000", **metadata},
    }
    events: list[sse.Event] = []
    with stack.client.stream("POST", "/api/runs", json=body) as response:
        for event in sse.parse(response.iter_lines()):
            events.append(event)
            if len(events) == 4:  # cancel from another connection while this one keeps reading
                run_id = events[0].data["run_id"]
                threading.Thread(target=stack.post, args=(f"/api/runs/{run_id}/cancel",)).start()
    return events


@pytest.mark.parametrize("how", ["starting_after", "last-event-id", "token"])
def test_resuming_after_the_final_event_of_a_cancelled_run_gives_only_the_end_event(stack, how):
    # The defect: the final event was sent again, under a new id, at every resume.
    events = stream_until_cancelled(stack)
    final = events[-1]
    assert final.event == "run.cancelled" and final.id is not None
    run_id = final.data["run_id"]
    kwargs = {
        "starting_after": {"params": {"starting_after": final.id}},
        "last-event-id": {"headers": {"Last-Event-ID": str(final.id)}},
        "token": {"params": {"continuation_token": final.data["continuation_token"]}},
    }[how]
    for _ in range(2):  # and again: nothing accumulates
        after = sse.read(stack.client, "GET", f"/api/runs/{run_id}/stream", **kwargs)
        assert [e.event for e in after] == ["end"] and after[0].id is None


def test_resuming_a_cancelled_run_just_before_its_final_event_gives_that_event_once(stack):
    events = stream_until_cancelled(stack)
    run_id = events[0].data["run_id"]
    before_final = [e for e in events if e.id is not None][-2]
    tail = sse.read(stack.client, "GET", f"/api/runs/{run_id}/stream", params={"starting_after": before_final.id})
    assert [e.event for e in tail][-1] == "run.cancelled"
    assert [e.id for e in tail].count(events[-1].id) == 1


def test_the_fallback_stream_final_event_is_not_repeated_on_resume(stack):
    stack.emulator_config(require_stream_for_resume=True)
    try:
        run = stack.start("no stream", metadata={"emulator_duration_ms": "800"}).json()
        events = sse.read(stack.client, "GET", f"/api/runs/{run['id']}/stream")
        final = events[-1]
        assert final.event == "run.completed"
        again = sse.read(stack.client, "GET", f"/api/runs/{run['id']}/stream", params={"starting_after": final.id})
    finally:
        stack.emulator_config(require_stream_for_resume=False)
    assert [e.event for e in again] == ["end"]


def test_concurrent_starts_on_one_session_give_one_run_and_409s(stack):
    session = stack.post("/api/sessions").json()["id"]
    results: list = [None] * 6

    def start(i: int) -> None:
        results[i] = stack.post(
            "/api/runs", {"input": f"turn {i}", "session_id": session, "metadata": {"emulator_duration_ms": "3000"}}
        )

    threads = [threading.Thread(target=start, args=(i,)) for i in range(len(results))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    codes = sorted(r.status_code for r in results)
    assert codes.count(202) + codes.count(200) == 1 and codes.count(409) == len(results) - 1, codes
    assert {r.json()["error"]["code"] for r in results if r.status_code == 409} <= {"session_busy"}
    time.sleep(0.1)
    shown = stack.get(f"/api/sessions/{session}").json()
    assert len(shown["runs"]) == 1


def test_metrics_count_storage_requests_by_the_function_that_made_them(stack):
    # On Flex Consumption HTTP, queue and timer functions run on separate instances: the figures say whose.
    run = stack.start("counted", metadata={"emulator_duration_ms": "1500"}).json()
    stack.wait(run["id"])
    metrics = stack.get("/api/metrics", headers={"x-functions-key": stack.local.master_key}).json()
    by_function = metrics["storage_requests_by_function"]
    assert by_function["create_run"]["table.POST"] >= 1 and by_function["poll_run"]["table.GET"] >= 1
    assert sum(sum(c.values()) for c in by_function.values()) == metrics["storage_requests_total"]
    assert metrics["scope"] == "this process only"


@pytest.mark.parametrize("include", ["", "timeline,", ",timeline", "timeline,timeline", "everything"])
def test_an_include_that_names_nothing_known_is_a_400(stack, include):
    # Found by fuzzing: `?include=` (empty) was accepted.
    run = stack.start("x", metadata={"emulator_duration_ms": "0"}).json()
    response = stack.get(f"/api/runs/{run['id']}", params={"include": include})
    assert response.status_code == 400 and response.json()["error"]["param"] == "include"
    assert "timeline" in stack.get(f"/api/runs/{run['id']}", params={"include": "timeline"}).json()
