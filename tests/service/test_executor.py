"""Executor runs end to end (RUN_BACKEND=executor on a host of its own, the emulator's Chat Completions, real
Azurite): start, poll by token and by id, webhook, streaming and exact resume, cancel and deadline stopping the
model call, provider 429/500 before output, a cut mid-output, tool calls in a session, and a Responses API
without background mode."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from .. import sse
from ..stack import EXECUTOR_HOST, wait_for_run

RUN = {"emulator_duration_ms": "2500", "emulator_output_chars": "400", "emulator_deltas": "40"}


@pytest.fixture(scope="module")
def executor(stack):
    host = stack.start_host("executor", **EXECUTOR_HOST, EXECUTOR_STALE_SECONDS="5")
    client = httpx.Client(base_url=host.base_url, timeout=30, headers=stack.key_headers)
    assert client.get("/api/health").status_code == 200
    yield client
    client.close()
    host.stop()


def chat_calls(stack, marker: str) -> list[dict]:
    rows = httpx.get(
        f"{stack.emulator.base_url}/_emulator/chat_completions", params={"knob.emulator_marker": marker}
    ).json()["data"]
    return rows


def call_closed(stack, marker: str, timeout: float = 5) -> bool:
    """Whether the emulator saw the model call closed by its client within `timeout` (it notices at its next write)."""
    deadline = time.monotonic() + timeout
    while not chat_calls(stack, marker)[0]["disconnected"] and time.monotonic() < deadline:
        time.sleep(0.1)
    return bool(chat_calls(stack, marker)[0]["disconnected"])


def marker() -> str:
    return f"m{time.time_ns()}"


def received(stack, name: str, timeout: float = 20) -> list[dict]:
    deadline = time.monotonic() + timeout
    while not stack.received(name) and time.monotonic() < deadline:
        time.sleep(0.2)
    return stack.received(name)


def text_of(events) -> str:
    """The text of the last attempt: deltas after the last output_restarted event."""
    start = max((i for i, e in enumerate(events) if e.event == "output_restarted"), default=-1)
    return "".join(e.delta for e in events[start + 1 :])


def assert_whole(events, stored: dict) -> None:
    ids = [e.id for e in events if e.id is not None]
    assert ids == sorted(set(ids)), "event ids repeat or go backwards"
    assert ids == list(range(ids[0], ids[0] + len(ids))), "an event is missing"
    assert events[-1].event == f"run.{stored['status']}"
    assert text_of(events) == stored["output_text"]


def test_an_executor_run_is_polled_by_token_and_id_and_sends_one_webhook(stack, executor):
    name, mark = f"exec-{time.time_ns()}", marker()
    started = executor.post(
        "/api/runs",
        json={"input": "hello", "webhook_url": stack.hook_url(name), "metadata": {**RUN, "emulator_marker": mark}},
    )
    assert started.status_code == 202
    run = started.json()
    assert run["backend"] == "executor" and run["provider_response_id"].startswith("exec_")
    token = run["continuation_token"]
    while True:
        polled = executor.post("/api/runs", json={"continuation_token": token}).json()
        if polled["continuation_token"] is None:
            break
        time.sleep(0.3)
    by_id = executor.get(f"/api/runs/{run['id']}").json()
    assert polled["status"] == by_id["status"] == "completed" and len(by_id["output_text"]) == 400
    assert by_id["usage"]["output_tokens"] > 0
    calls = chat_calls(stack, mark)
    assert len(calls) == 1 and calls[0]["stream"] and not stack.provider_responses(run["id"])
    hooks = received(stack, name)
    time.sleep(2)
    assert len(stack.received(name)) == 1 and json.loads(hooks[0]["body"])["data"]["status"] == "completed"


def test_a_streamed_executor_run_reads_like_a_provider_run(executor):
    events = sse.read(executor, "POST", "/api/runs", json={"input": "stream", "stream": True, "metadata": RUN})
    assert events[0].event == "run.created" and events[0].id == 0
    assert events[0].data["run"]["backend"] == "executor"
    assert {"output_text.delta", "output_item.added", "content_part.added"} <= {e.event for e in events}
    stored = executor.get(f"/api/runs/{events[0].data['run_id']}").json()
    assert_whole(events, stored)


@pytest.mark.parametrize("cut_at,how", [(2, "last-event-id"), (9, "starting_after"), (30, "token")])
def test_a_cut_stream_resumes_with_exactly_the_missing_events(executor, cut_at, how):
    head = sse.read(executor, "POST", "/api/runs", json={"input": "cut", "stream": True, "metadata": RUN}, limit=cut_at)
    run_id, last = head[0].data["run_id"], head[-1]
    kwargs = {
        "last-event-id": {"headers": {"Last-Event-ID": str(last.id)}},
        "starting_after": {"params": {"starting_after": last.id}},
        "token": {"params": {"continuation_token": last.data["continuation_token"]}},
    }[how]
    tail = sse.read(executor, "GET", f"/api/runs/{run_id}/stream", **kwargs)
    assert tail[0].id == last.id + 1
    assert_whole(head + tail, executor.get(f"/api/runs/{run_id}").json())


def test_a_finished_executor_run_replays_from_its_log(executor):
    events = sse.read(
        executor,
        "POST",
        "/api/runs",
        json={"input": "x", "stream": True, "metadata": {**RUN, "emulator_duration_ms": "300"}},
    )
    run_id = events[0].data["run_id"]
    replay = sse.read(executor, "GET", f"/api/runs/{run_id}/stream")
    assert [(e.id, e.event) for e in replay] == [(e.id, e.event) for e in events]


def test_cancel_mid_generation_stops_the_model_call(stack, executor):
    mark = marker()
    body = {
        "input": "long",
        "stream": True,
        "metadata": {"emulator_duration_ms": "30000", "emulator_output_chars": "3000", "emulator_marker": mark},
    }
    head = sse.read(executor, "POST", "/api/runs", json=body, limit=6)
    run_id = head[0].data["run_id"]
    cancelled = executor.post(f"/api/runs/{run_id}/cancel").json()
    assert cancelled["status"] == "cancelled"
    assert call_closed(stack, mark), "the model call went on after the cancel"
    tail = sse.read(executor, "GET", f"/api/runs/{run_id}/stream", headers={"Last-Event-ID": str(head[-1].id)})
    assert tail[-1].event == "run.cancelled"


def test_the_deadline_stops_the_model_call_and_expires_the_run(stack, executor):
    mark = marker()
    run = executor.post(
        "/api/runs",
        json={
            "input": "too long",
            "deadline_seconds": 3,
            "metadata": {"emulator_duration_ms": "30000", "emulator_marker": mark},
        },
    ).json()
    final = wait_for_run(executor, run["id"], timeout=30)
    assert final["status"] == "expired" and "deadline of 3 s" in final["error"]["message"]
    # The run may read `expired` a moment before the emulator sees the connection close (the poll chain can end
    # it first; the attempt then stops its call at its next look, about a second later).
    assert call_closed(stack, mark), "the model call went on past the deadline"


def test_provider_429_and_500_before_output_are_retried_without_a_restart(stack, executor):
    events = sse.read(
        executor,
        "POST",
        "/api/runs",
        json={
            "input": "storm",
            "stream": True,
            "metadata": {**RUN, "emulator_http_errors": "429:2,500:1", "emulator_retry_after_ms": "100"},
        },
    )
    stored = executor.get(f"/api/runs/{events[0].data['run_id']}").json()
    assert stored["status"] == "completed"
    assert "output_restarted" not in {e.event for e in events}
    assert_whole(events, stored)


def test_a_stream_cut_mid_output_restarts_the_output_and_ends_with_the_last_attempt(executor):
    events = sse.read(
        executor,
        "POST",
        "/api/runs",
        json={
            "input": "cut me",
            "stream": True,
            "metadata": {**RUN, "emulator_stream_cut_after": "12", "emulator_stream_cut_sends": "1"},
        },
    )
    restarts = [e for e in events if e.event == "output_restarted"]
    assert len(restarts) == 1 and restarts[0].data["attempt"] == 2
    before = "".join(e.delta for e in events[: events.index(restarts[0])])
    assert before, "the first attempt's partial output was streamed before the restart"
    stored = executor.get(f"/api/runs/{events[0].data['run_id']}").json()
    assert_whole(events, stored)
    assert len(stored["output_text"]) == 400


def test_tool_calls_require_action_and_the_session_continues(executor):
    session = executor.post("/api/sessions").json()["id"]
    tools = [{"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {}}}]
    first = executor.post(
        "/api/runs",
        json={
            "input": "call:get_weather",
            "session_id": session,
            "tools": tools,
            "metadata": {"emulator_duration_ms": "500"},
        },
    ).json()
    first = wait_for_run(executor, first["id"])
    assert first["status"] == "requires_action"
    call = first["required_action"]["calls"][0]
    assert call["name"] == "get_weather"
    second = executor.post(
        "/api/runs",
        json={
            "session_id": session,
            "tools": tools,
            "metadata": {"emulator_duration_ms": "500"},
            "input": [{"type": "function_call_output", "call_id": call["call_id"], "output": "sunny"}],
        },
    ).json()
    second = wait_for_run(executor, second["id"])
    assert second["status"] == "completed"
    assert second["output_text"].startswith(f"Tool get_weather ({call['call_id']}) returned sunny")


@pytest.fixture
def responses_host(stack):
    stack.emulator_config(background_mode=False)
    host = stack.start_host("executor-responses", **EXECUTOR_HOST, EXECUTOR_API="responses")
    yield httpx.Client(base_url=host.base_url, timeout=30, headers=stack.key_headers)
    host.stop()
    stack.emulator_config(background_mode=True)


def test_a_responses_api_without_background_mode_is_streamed_by_the_executor(stack, responses_host):
    events = sse.read(
        responses_host, "POST", "/api/runs", json={"input": "no background here", "stream": True, "metadata": RUN}
    )
    run_id = events[0].data["run_id"]
    stored = responses_host.get(f"/api/runs/{run_id}").json()
    assert stored["backend"] == "executor"
    assert_whole(events, stored)
    made = stack.provider_responses(run_id)
    assert len(made) == 1 and made[0]["background"] is False and made[0]["stream"] is True
    # Found by issue 21: items were stored by the SDK's field names ("async_": null) with a null for every field
    # the server never sent.
    tools = [{"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {}}}]
    called = responses_host.post(
        "/api/runs", json={"input": "call:get_weather", "tools": tools, "metadata": {"emulator_duration_ms": "300"}}
    ).json()
    called = wait_for_run(responses_host, called["id"])
    assert called["status"] == "requires_action"
    for item in called["output"] + stored["output"]:
        assert not _sdk_names_or_nulls(item), item
    assert set(called["output"][0]) == {"type", "id", "call_id", "name", "arguments", "status"}  # what was sent
    assert called["usage"]["input_tokens_details"].keys() == {"cached_tokens", "cache_write_tokens"}


def _sdk_names_or_nulls(value) -> list[str]:
    """Keys of `value` (nested) that are the SDK's names (a trailing underscore) or null."""
    if isinstance(value, dict):
        return [k for k, v in value.items() if k.endswith("_") or v is None] + [
            k for v in value.values() for k in _sdk_names_or_nulls(v)
        ]
    if isinstance(value, list):
        return [k for v in value for k in _sdk_names_or_nulls(v)]
    return []
