"""Streaming over SSE: a token on every event, exact resume by Last-Event-ID, starting_after and
token, seamless rotation, invisible provider drops, replay of finished runs, stored fallback."""

from __future__ import annotations

import time

import httpx
import pytest

from .. import sse

RUN = {"emulator_duration_ms": "2500", "emulator_output_chars": "400"}


def start_streaming(stack, limit=None, **metadata):
    body = {"input": "stream please", "stream": True, "metadata": {**RUN, **metadata}}
    return sse.read(stack.client, "POST", "/api/runs", json=body, limit=limit)


def text_of(events) -> str:
    return "".join(e.delta for e in events)


def assert_whole(events, stored_text: str) -> None:
    ids = [e.id for e in events if e.id is not None]
    assert ids == sorted(set(ids)), "event ids repeat or go backwards"
    assert events[-1].event == "run.completed"
    assert text_of(events) == stored_text


def test_a_streamed_run_identifies_itself_first_and_carries_a_token_everywhere(stack):
    events = start_streaming(stack)
    first, last = events[0], events[-1]
    assert first.event == "run.created" and first.id == 0 and first.data["run"]["id"] == first.data["run_id"]
    assert all(e.data["continuation_token"] and e.data["run_id"] == first.data["run_id"] for e in events)
    stored = stack.get(f"/api/runs/{first.data['run_id']}").json()
    assert last.data["run"]["status"] == "completed" == stored["status"]
    assert_whole(events, stored["output_text"])


@pytest.mark.parametrize("how", ["last-event-id", "starting_after", "token"])
def test_a_cut_stream_resumes_exactly_where_it_broke(stack, how):
    head = start_streaming(stack, limit=7)
    run_id, last = head[0].data["run_id"], head[-1]
    if how == "last-event-id":
        kwargs = {"headers": {"Last-Event-ID": str(last.id)}}
    elif how == "starting_after":
        kwargs = {"params": {"starting_after": last.id}}
    else:
        kwargs = {"params": {"continuation_token": last.data["continuation_token"]}}
    tail = sse.read(stack.client, "GET", f"/api/runs/{run_id}/stream", **kwargs)
    assert tail[0].id == last.id + 1
    stored = stack.get(f"/api/runs/{run_id}").json()
    assert_whole(head + tail, stored["output_text"])


def test_a_stream_of_a_finished_run_replays_and_ends(stack):
    events = start_streaming(stack, emulator_duration_ms="300")
    run_id = events[0].data["run_id"]
    stack.wait(run_id)
    replay = sse.read(stack.client, "GET", f"/api/runs/{run_id}/stream")
    assert [e.id for e in replay] == [e.id for e in events]
    tail = sse.read(stack.client, "GET", f"/api/runs/{run_id}/stream", params={"starting_after": events[-3].id})
    assert [e.id for e in tail] == [e.id for e in events[-2:]]


def test_a_provider_stream_drop_is_invisible_to_the_client(stack):
    events = start_streaming(stack, emulator_stream_cut_after="6")
    stored = stack.get(f"/api/runs/{events[0].data['run_id']}").json()
    assert_whole(events, stored["output_text"])


def test_a_run_started_without_streaming_can_still_be_streamed(stack):
    run = stack.start("poll me", metadata=RUN).json()
    events = sse.read(stack.client, "GET", f"/api/runs/{run['id']}/stream")
    assert events[-1].event == "run.completed"
    assert events[-1].data["run"]["output_text"] == stack.wait(run["id"])["output_text"]


def test_where_the_provider_refuses_to_stream_the_stored_run_ends_the_stream(stack):
    stack.emulator_config(require_stream_for_resume=True)
    try:
        run = stack.start("no stream", metadata={**RUN, "emulator_duration_ms": "1500"}).json()
        events = sse.read(stack.client, "GET", f"/api/runs/{run['id']}/stream")
    finally:
        stack.emulator_config(require_stream_for_resume=False)
    final = events[-1]
    assert final.event == "run.completed"
    assert final.data["run"]["output_text"] == stack.get(f"/api/runs/{run['id']}").json()["output_text"]


def test_nobody_watching_still_finishes_the_run_and_sends_its_webhook(stack):
    name = f"unwatched-{time.time_ns()}"
    body = {"input": "x", "stream": True, "webhook_url": stack.hook_url(name), "metadata": RUN}
    head = sse.read(stack.client, "POST", "/api/runs", json=body, limit=1)
    final = stack.wait(head[0].data["run_id"])
    assert final["status"] == "completed"
    deadline = time.monotonic() + 20
    while not stack.received(name) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert stack.received(name)


@pytest.fixture
def rotating_host(stack):
    host = stack.start_host("rotation", STREAM_MAX_SECONDS="1.5")
    yield host
    host.stop()


def test_streams_rotate_before_the_maximum_duration_and_resume_seamlessly(stack, rotating_host):
    client = httpx.Client(base_url=rotating_host.base_url, timeout=30, headers=stack.key_headers)
    body = {
        "input": "long stream",
        "stream": True,
        "metadata": {"emulator_duration_ms": "5000", "emulator_output_chars": "300"},
    }
    events, segments = sse.read(client, "POST", "/api/runs", json=body), 1
    run_id = events[0].data["run_id"]
    while events[-1].event == "reconnect":
        segments += 1
        token = events[-1].data["continuation_token"]
        events = events[:-1] + sse.read(
            client, "GET", f"/api/runs/{run_id}/stream", params={"continuation_token": token}
        )
        assert segments < 20
    assert segments >= 3
    assert_whole(events, stack.get(f"/api/runs/{run_id}").json()["output_text"])


def test_last_event_id_wins_over_a_position_left_in_the_url(stack):
    head = start_streaming(stack, limit=6)
    run_id = head[0].data["run_id"]
    tail = sse.read(
        stack.client,
        "GET",
        f"/api/runs/{run_id}/stream",
        params={"starting_after": 2},
        headers={"Last-Event-ID": str(head[-1].id)},
    )
    assert tail[0].id == head[-1].id + 1


def test_resuming_after_the_final_event_sends_nothing_more(stack):
    events = start_streaming(stack, emulator_duration_ms="300")
    run_id = events[0].data["run_id"]
    after_final = sse.read(
        stack.client,
        "GET",
        f"/api/runs/{run_id}/stream",
        params={"continuation_token": events[-1].data["continuation_token"]},
    )
    assert [e.event for e in after_final] == ["end"] and after_final[0].id is None


def test_post_with_a_token_and_stream_true_resumes_the_stream(stack):
    head = start_streaming(stack, limit=5)
    tail = sse.read(
        stack.client,
        "POST",
        "/api/runs",
        json={"continuation_token": head[-1].data["continuation_token"], "stream": True},
    )
    assert tail[0].id == head[-1].id + 1
    assert_whole(head + tail, stack.get(f"/api/runs/{head[0].data['run_id']}").json()["output_text"])
