"""Cancel semantics, function-call round trips and previous_response_id chaining."""

from __future__ import annotations

import json
import threading
import time

import openai
import pytest

from .conftest import record
from .test_lifecycle import poll

LONG = {"emulator_duration_ms": "100000"}  # 2 s at scale 0.02
WEATHER = [
    {
        "type": "function",
        "name": "get_weather",
        "description": "weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    }
]


def test_cancel_mid_run_ends_live_stream(client, emu):
    stream = client.responses.create(model="m", input="long", background=True, stream=True, metadata=LONG)
    events = []
    cancelled = {}
    threads = []

    def cancel_soon(resp_id):
        time.sleep(0.3)
        cancelled["obj"] = client.responses.cancel(resp_id)

    t0 = time.monotonic()
    for ev in stream:  # must end cleanly (no exception) after the cancel
        events.append(ev)
        if ev.sequence_number == 0:
            threads.append(threading.Thread(target=cancel_soon, args=(ev.response.id,)))
            threads[0].start()
    elapsed = time.monotonic() - t0
    threads[0].join()
    resp_id = events[0].response.id
    assert elapsed < 1.8  # well before the 2 s natural end
    assert not any(e.type in ("response.completed", "response.failed", "response.incomplete") for e in events)
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert cancelled["obj"].status == "cancelled" and cancelled["obj"].usage is None
    after = client.responses.retrieve(resp_id)
    assert after.status == "cancelled" and after.completed_at is None
    assert after.output[0].status == "incomplete"
    partial = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert after.output_text == partial
    # idempotent: cancelling again returns the same terminal object
    again = client.responses.cancel(resp_id)
    assert again.status == "cancelled" and again.output_text == partial
    # replay of a cancelled response ends cleanly at the same place
    replay = list(client.responses.retrieve(resp_id, stream=True))
    assert len(replay) == len(events)
    time.sleep(2.0 - elapsed + 0.1)  # the natural end passes: stays cancelled
    assert client.responses.retrieve(resp_id).status == "cancelled"
    rec = record(emu, resp_id)
    assert rec["status"] == "cancelled" and rec["counters"]["cancel"] == 2


async def test_cancel_async_queued(aclient):
    r = await aclient.responses.create(
        model="m", input="q", background=True, metadata={**LONG, "emulator_queue_ms": "50000"}
    )
    c = await aclient.responses.cancel(r.id)
    assert c.status == "cancelled" and c.output == []


def test_cancel_terminal_and_sync_responses(client):
    done = client.responses.create(model="m", input="x", background=True, metadata={"emulator_duration_ms": "0"})
    c = client.responses.cancel(done.id)
    assert c.status == "completed" and c.output_text == done.output_text
    sync = client.responses.create(model="m", input="x", metadata={"emulator_duration_ms": "0"})
    with pytest.raises(openai.BadRequestError):
        client.responses.cancel(sync.id)


def test_function_call_round_trip(client):
    r = client.responses.create(
        model="m", input='What is the weather? call:get_weather({"city": "Paris"})', tools=WEATHER, background=True
    )
    final, _ = poll(client, r.id)
    assert final.status == "completed" and final.output_text == ""
    call = final.output[0]
    assert call.type == "function_call" and call.name == "get_weather" and call.status == "completed"
    assert json.loads(call.arguments) == {"city": "Paris"}
    assert call.id.startswith("fc_") and call.call_id.startswith("call_")
    follow = client.responses.create(
        model="m",
        previous_response_id=r.id,
        tools=WEATHER,
        background=True,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": json.dumps({"temp_c": 21})}],
    )
    done, _ = poll(client, follow.id)
    assert done.status == "completed" and done.previous_response_id == r.id
    assert '{"temp_c": 21}' in done.output_text and "get_weather" in done.output_text
    assert all(item.type == "message" for item in done.output)
    # a call_id that was never issued is refused
    with pytest.raises(openai.BadRequestError):
        client.responses.create(
            model="m",
            previous_response_id=r.id,
            tools=WEATHER,
            background=True,
            input=[{"type": "function_call_output", "call_id": "call_bogus", "output": "1"}],
        )


async def test_function_call_via_metadata_async(aclient):
    meta = {"emulator_function_call": "get_weather", "emulator_duration_ms": "0"}
    r = await aclient.responses.create(model="m", input="anything", tools=WEATHER, background=True, metadata=meta)
    assert r.output[0].type == "function_call" and json.loads(r.output[0].arguments) == {"city": "emulated"}
    # the same metadata on the continuation must not loop back into another call
    follow = await aclient.responses.create(
        model="m",
        previous_response_id=r.id,
        tools=WEATHER,
        background=True,
        metadata=meta,
        input=[{"type": "function_call_output", "call_id": r.output[0].call_id, "output": "sunny"}],
    )
    assert follow.output[0].type == "message" and "sunny" in follow.output_text


def test_trigger_without_matching_tool_gives_text(client):
    r = client.responses.create(
        model="m", input="call:unknown_fn", tools=WEATHER, background=True, metadata={"emulator_duration_ms": "0"}
    )
    assert r.output[0].type == "message" and r.output_text


def test_previous_response_chaining(client):
    a = client.responses.create(model="m", input="turn one", background=True, metadata={"emulator_duration_ms": "0"})
    b = client.responses.create(
        model="m", input="turn two", previous_response_id=a.id, background=True, metadata={"emulator_duration_ms": "0"}
    )
    assert b.previous_response_id == a.id and f"Continuing from {a.id}" in b.output_text
    with pytest.raises(openai.NotFoundError) as exc:
        client.responses.create(model="m", input="x", previous_response_id="resp_missing", background=True)
    assert exc.value.param == "previous_response_id"
    running = client.responses.create(model="m", input="x", background=True, metadata=LONG)
    with pytest.raises(openai.BadRequestError):
        client.responses.create(model="m", input="x", previous_response_id=running.id, background=True)
    client.responses.cancel(running.id)
