"""SSE: event order, resume with starting_after, cuts, stream refusals (official SDK, sync + async)."""

from __future__ import annotations

import time

import openai
import pytest

from .conftest import admin

TERMINAL_EVENTS = {"response.completed", "response.failed", "response.incomplete"}
SLOW = {"emulator_duration_ms": "20000", "emulator_output_chars": "600"}  # 0.4 s at scale 0.02


def text_of(events) -> str:
    return "".join(e.delta for e in events if e.type == "response.output_text.delta")


def check_shape(events):
    types = [e.type for e in events]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert types[:4] == ["response.created", "response.queued", "response.in_progress", "response.output_item.added"]
    assert events[0].response.status == "queued"
    assert types[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert sum(t in TERMINAL_EVENTS for t in types) == 1
    assert len({e.response.id for e in events if hasattr(e, "response")}) == 1
    final = events[-1].response
    assert text_of(events) == final.output_text == events[-4].text


def test_full_stream_shape(client):
    events = list(client.responses.create(model="m", input="stream me", background=True, stream=True, metadata=SLOW))
    check_shape(events)
    assert events[-1].response.usage.output_tokens == 150
    # replay from 0 after the fact gives the identical log
    replay = list(client.responses.retrieve(events[0].response.id, stream=True))
    assert [e.model_dump() for e in replay] == [e.model_dump() for e in events]


@pytest.mark.parametrize("k", [0, 1, 2, 5, 17])
def test_resume_after_k_events(client, k):
    stream = client.responses.create(model="m", input=f"resume {k}", background=True, stream=True, metadata=SLOW)
    first = []
    for ev in stream:
        first.append(ev)
        if ev.sequence_number == k:
            break
    stream.close()
    rest = list(client.responses.retrieve(first[0].response.id, stream=True, starting_after=k))
    assert rest[0].sequence_number == k + 1
    check_shape(first + rest)  # no gap, no duplicate, text matches
    final = client.responses.retrieve(first[0].response.id)
    assert final.status == "completed" and text_of(first + rest) == final.output_text


def test_sdk_by_id_stream_helper(client):
    r = client.responses.create(model="m", input="helper", background=True, metadata=SLOW)
    with client.responses.stream(response_id=r.id, starting_after=3) as s:
        seqs = [e.sequence_number for e in s]
        final = s.get_final_response()
    assert seqs[0] == 4 and final.status == "completed" and len(final.output_text) == 600


def test_stream_cut_after_then_resume_sync(client, emu):
    meta = {**SLOW, "emulator_stream_cut_after": "7"}
    events, raised = [], 0
    stream = client.responses.create(model="m", input="cut me", background=True, stream=True, metadata=meta)
    while True:
        try:
            for ev in stream:
                events.append(ev)
            break
        except openai.APIConnectionError:
            raised += 1
            stream = client.responses.retrieve(
                events[0].response.id, stream=True, starting_after=events[-1].sequence_number
            )
    assert raised >= 3
    check_shape(events)
    assert admin(emu, "GET", "stats")["streams_cut"] >= raised


async def test_stream_cut_after_then_resume_async(aclient):
    meta = {**SLOW, "emulator_stream_cut_after": "5"}
    events, raised = [], 0
    stream = await aclient.responses.create(model="m", input="cut async", background=True, stream=True, metadata=meta)
    while True:
        try:
            async for ev in stream:
                events.append(ev)
            break
        except openai.APIConnectionError:
            raised += 1
            stream = await aclient.responses.retrieve(
                events[0].response.id, stream=True, starting_after=events[-1].sequence_number
            )
    assert raised >= 3
    check_shape(events)


def test_stream_refusals(emu, client):
    sync = client.responses.create(model="m", input="fg", metadata={"emulator_duration_ms": "0"})
    with pytest.raises(openai.BadRequestError) as exc:
        client.responses.retrieve(sync.id, stream=True)
    assert "not created with background=true" in exc.value.message
    polled = client.responses.create(model="m", input="bg", background=True, metadata={"emulator_duration_ms": "0"})
    assert list(client.responses.retrieve(polled.id, stream=True))[-1].type == "response.completed"
    admin(emu, "POST", "config", json={"require_stream_for_resume": True})
    try:
        with pytest.raises(openai.BadRequestError) as exc:
            client.responses.retrieve(polled.id, stream=True)
        assert "stream=true" in exc.value.message
    finally:
        admin(emu, "POST", "config", json={"require_stream_for_resume": False})
    admin(emu, "POST", "config", json={"resume_window_s": 0.05})
    try:
        time.sleep(0.1)
        with pytest.raises(openai.BadRequestError) as exc:
            client.responses.retrieve(polled.id, stream=True, starting_after=2)
        assert "can no longer be streamed" in exc.value.message
    finally:
        admin(emu, "POST", "config", json={"resume_window_s": 300})


def test_function_call_stream_events(client):
    tools = [
        {
            "type": "function",
            "name": "lookup",
            "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]},
        }
    ]
    events = list(
        client.responses.create(model="m", input="please call:lookup", tools=tools, background=True, stream=True)
    )
    types = [e.type for e in events]
    assert types[3] == "response.output_item.added" and events[3].item.type == "function_call"
    assert "response.function_call_arguments.delta" in types
    done = next(e for e in events if e.type == "response.function_call_arguments.done")
    args = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    assert args == done.arguments == '{"q":"emulated"}'
    assert types[-2:] == ["response.output_item.done", "response.completed"]
    assert events[-1].response.output[0].arguments == args and events[-1].response.output_text == ""


def test_synchronous_stream_and_store_false(client):
    events = list(
        client.responses.create(model="m", input="sync stream", stream=True, metadata={"emulator_output_chars": "50"})
    )
    types = [e.type for e in events]
    assert types[:2] == ["response.created", "response.in_progress"] and "response.queued" not in types
    assert events[0].response.status == "in_progress" and events[-1].type == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    # a foreground store=false response is not retrievable, like the real API
    r = client.responses.create(model="m", input="x", store=False, metadata={"emulator_duration_ms": "0"})
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r.id)
