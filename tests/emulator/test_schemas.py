"""Every body and stream event the emulator sends validates against OpenAI's published schemas.

Each test drives one path with the official SDK through a WireRecorder (tests/schemas.py), which keeps the
raw bytes the client read; `wire.assert_valid()` then checks every JSON body against `Response`,
`ResponseItemList` or `ErrorResponse` and every complete SSE event against `ResponseStreamEvent`.
"""

from __future__ import annotations

import asyncio
import json
import time

import openai
import pytest

from tests.schemas import SchemaMismatch, errors, validate, validate_stream_event

from .conftest import admin

LONG = {"emulator_duration_ms": "100000"}  # 2 s at scale 0.02
SLOW = {"emulator_duration_ms": "20000", "emulator_output_chars": "600"}
WEATHER = [
    {
        "type": "function",
        "name": "get_weather",
        "description": "weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    }
]


# ------------------------------------------------------------------ the validator itself


def test_validator_rejects_what_the_schema_forbids():
    usage = {
        "input_tokens": 1,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 2,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 3,
    }
    assert any("cache_write_tokens" in e for e in errors("ResponseUsage", usage))  # the gap issue 15 names
    usage["input_tokens_details"]["cache_write_tokens"] = 0
    assert errors("ResponseUsage", usage) == []
    with pytest.raises(SchemaMismatch, match="sequence_number"):
        validate_stream_event(
            {
                "type": "response.output_text.delta",
                "item_id": "m",
                "output_index": 0,
                "content_index": 0,
                "delta": "x",
                "logprobs": [],
            }
        )
    with pytest.raises(SchemaMismatch, match="not a ResponseStreamEvent"):
        validate_stream_event({"type": "response.cancelled", "sequence_number": 3})
    with pytest.raises(SchemaMismatch, match="param"):
        validate("ErrorResponse", {"error": {"message": "m", "type": "t", "code": None}})


# ------------------------------------------------------------------ create / retrieve / stream


def test_background_lifecycle_bodies(wclient, wire):
    r = wclient.responses.create(model="m", input="hello", background=True, metadata=SLOW)
    assert r.status == "queued"
    seen = {r.status}
    while True:
        got = wclient.responses.retrieve(r.id)  # queued, in_progress with partial output, completed
        seen.add(got.status)
        if got.status == "completed":
            break
    assert {"queued", "completed"} <= seen
    assert got.usage.input_tokens_details.cache_write_tokens == 0
    wire.assert_valid(at_least=3)


def test_non_background_and_instant_bodies(wclient, wire):
    plain = wclient.responses.create(
        model="m", input="hi", instructions="be brief", temperature=0.5, metadata={"emulator_output_chars": "50"}
    )
    assert plain.status == "completed" and not plain.background
    wclient.responses.create(model="m", input="hi", store=False)
    wclient.responses.create(model="m", input="hi", background=True, metadata={"emulator_duration_ms": "0"})
    wire.assert_valid(at_least=3)


def test_stream_events_background_and_not(wclient, wire):
    bg = list(wclient.responses.create(model="m", input="s", background=True, stream=True, metadata=SLOW))
    fg = list(wclient.responses.create(model="m", input="s", stream=True, metadata=SLOW))
    assert bg[-1].type == fg[-1].type == "response.completed"
    assert wire.assert_valid() == len(bg) + len(fg)


@pytest.mark.parametrize("k", [0, 2, 5, 30])
def test_resume_with_starting_after(wclient, wire, k):
    first = wclient.responses.create(model="m", input=f"resume {k}", background=True, stream=True, metadata=SLOW)
    head = []
    for ev in first:
        head.append(ev)
        if ev.sequence_number == k:
            break
    first.close()
    rest = list(wclient.responses.retrieve(head[0].response.id, stream=True, starting_after=k))
    assert rest[0].sequence_number == k + 1 and rest[-1].type == "response.completed"
    replay = list(wclient.responses.retrieve(head[0].response.id, stream=True))  # after the end, from 0
    assert len(replay) == len(head) + len(rest)
    wire.assert_valid(at_least=len(replay))


async def test_async_paths(awclient, wire):
    r = await awclient.responses.create(model="m", input="async", background=True, metadata=SLOW)
    stream = await awclient.responses.retrieve(r.id, stream=True, starting_after=1)
    events = [ev async for ev in stream]
    assert events[-1].type == "response.completed"
    await awclient.responses.retrieve(r.id)
    await awclient.responses.input_items.list(r.id)
    async for _ev in await awclient.responses.create(model="m", input="a", stream=True):
        pass
    with pytest.raises(openai.NotFoundError):
        await awclient.responses.retrieve("resp_missing")
    wire.assert_valid(at_least=len(events) + 4)


def test_stream_cut_partial_events_still_valid(wclient, wire):
    meta = {**SLOW, "emulator_stream_cut_after": "6"}
    stream = wclient.responses.create(model="m", input="cut", background=True, stream=True, metadata=meta)
    got = []
    with pytest.raises(openai.APIConnectionError):  # noqa: PT012 - the loop keeps what arrived before the cut
        for ev in stream:
            got.append(ev)
    assert len(got) == 6
    assert wire.assert_valid() == 6


# ------------------------------------------------------------------ cancel / delete / input_items


def test_cancel_bodies(wclient, wire):
    r = wclient.responses.create(model="m", input="stop", background=True, metadata=LONG)
    while not wclient.responses.retrieve(r.id).output:  # in progress with partial output
        time.sleep(0.02)
    cancelled = wclient.responses.cancel(r.id)
    assert cancelled.status == "cancelled"
    assert wclient.responses.cancel(r.id).status == "cancelled"  # idempotent
    list(wclient.responses.retrieve(r.id, stream=True))  # a frozen log, no terminal event
    queued = wclient.responses.create(
        model="m", input="stop", background=True, metadata={**LONG, "emulator_queue_ms": "50000"}
    )
    assert wclient.responses.cancel(queued.id).status == "cancelled"
    wire.assert_valid(at_least=5)


def test_delete_and_input_items(wclient, wire):
    items = [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "earlier answer"},
        {"role": "user", "content": [{"type": "input_text", "text": "second"}]},
    ]
    r = wclient.responses.create(model="m", input=items, background=True, metadata={"emulator_duration_ms": "0"})
    page = wclient.responses.input_items.list(r.id, limit=2)
    assert len(page.data) == 2 and page.has_more
    everything = list(wclient.responses.input_items.list(r.id, limit=2))  # SDK pages through with `after`
    assert [i.type for i in everything] == ["message"] * 4
    empty = wclient.responses.input_items.list(r.id, after=everything[-1].id)
    assert empty.data == []
    wclient.responses.delete(r.id)
    with pytest.raises(openai.NotFoundError):
        wclient.responses.retrieve(r.id)
    wire.assert_valid(at_least=6)


# ------------------------------------------------------------------ function calls and outcomes


def test_function_call_round_trip(wclient, wire):
    events = list(
        wclient.responses.create(
            model="m",
            input='call:get_weather({"city":"Oslo"})',
            tools=WEATHER,
            background=True,
            stream=True,
            metadata=SLOW,
        )
    )
    final = events[-1].response
    call = final.output[0]
    assert call.type == "function_call" and json.loads(call.arguments) == {"city": "Oslo"}
    follow = wclient.responses.create(
        model="m",
        previous_response_id=final.id,
        tools=WEATHER,
        background=True,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": '{"temp": 3}'}],
        metadata={"emulator_duration_ms": "0"},
    )
    assert follow.output_text.startswith("Tool get_weather")
    wclient.responses.input_items.list(follow.id)
    tool_choice = wclient.responses.create(
        model="m",
        input="call:get_weather",
        tools=WEATHER,
        tool_choice={"type": "function", "name": "get_weather"},
        parallel_tool_calls=False,
    )
    assert tool_choice.output[0].type == "function_call"
    wire.assert_valid(at_least=len(events) + 3)


@pytest.mark.parametrize("outcome", ["failed", "incomplete"])
def test_failure_outcomes(wclient, wire, outcome):
    meta = {**SLOW, "emulator_outcome": outcome}
    events = list(wclient.responses.create(model="m", input="o", background=True, stream=True, metadata=meta))
    assert events[-1].type == f"response.{outcome}"
    final = wclient.responses.retrieve(events[0].response.id)
    assert final.status == outcome
    wire.assert_valid(at_least=len(events) + 1)


def test_max_output_tokens_incomplete(wclient, wire):
    r = wclient.responses.create(
        model="m", input="long", max_output_tokens=16, metadata={"emulator_output_chars": "400"}
    )
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    wire.assert_valid()


# ------------------------------------------------------------------ errors


def test_400_bodies(wclient, wire):
    nr = wclient.with_options(max_retries=0)
    with pytest.raises(openai.BadRequestError):
        nr.responses.create(model="", input="x")
    with pytest.raises(openai.BadRequestError):
        nr.responses.create(model="m", input="x", metadata={f"k{i}": "v" for i in range(17)})
    with pytest.raises(openai.BadRequestError):
        nr.responses.create(model="m", input="x", metadata={"emulator_outcome": "exploded"})
    sync = nr.responses.create(model="m", input="x", metadata={"emulator_duration_ms": "0"})
    with pytest.raises(openai.BadRequestError):
        nr.responses.cancel(sync.id)
    with pytest.raises(openai.BadRequestError):
        nr.responses.retrieve(sync.id, stream=True)
    with pytest.raises(openai.NotFoundError):
        nr.responses.create(model="m", input="x", previous_response_id="resp_nope")
    with pytest.raises(openai.NotFoundError):
        nr.responses.cancel("resp_nope")
    assert wire.statuses().count(400) == 5
    wire.assert_valid(at_least=8)


def test_401_when_keys_are_configured(emu, wire):
    admin(emu, "POST", "config", json={"api_keys": "sk-good"})
    try:
        with openai.OpenAI(
            base_url=emu.base_url, api_key="sk-wrong-key-123", http_client=wire.sync_client(), max_retries=0
        ) as bad:
            with pytest.raises(openai.AuthenticationError) as exc:
                bad.responses.create(model="m", input="x")
        assert exc.value.code == "invalid_api_key"
        with openai.AzureOpenAI(
            base_url=emu.azure_base_url, api_key="sk-good", api_version="preview", http_client=wire.sync_client()
        ) as azure:  # api-key header
            assert azure.responses.create(model="m", input="x", metadata={"emulator_duration_ms": "0"}).id
    finally:
        admin(emu, "POST", "config", json={"api_keys": ""})
    assert wire.statuses() == [401, 200]
    wire.assert_valid(at_least=2)


@pytest.mark.parametrize(
    "fault,error",
    [("429", openai.RateLimitError), ("500", openai.InternalServerError), ("503", openai.InternalServerError)],
)
def test_fault_bodies(wclient, wire, fault, error):
    with pytest.raises(error):
        wclient.with_options(max_retries=0).responses.create(
            model="m", input="x", extra_headers={"x-emulator-fault": fault}
        )
    r = wclient.responses.create(
        model="m",
        input="x",
        background=True,
        metadata={"emulator_http_errors": f"{fault}:2", "emulator_retry_after_ms": "10", "emulator_duration_ms": "0"},
    )
    assert wclient.responses.retrieve(r.id).status == "completed"  # two faulted attempts, then the body
    assert wire.statuses().count(int(fault)) == 3
    wire.assert_valid(at_least=5)


def test_unknown_route_and_bad_json(emu, wire):
    with openai.OpenAI(base_url=emu.base_url, api_key="k", http_client=wire.sync_client(), max_retries=0) as c:
        with pytest.raises(openai.NotFoundError):
            c.get("/nothing/here", cast_to=object)
        with pytest.raises(openai.BadRequestError):
            c.post(
                "/responses",
                cast_to=object,
                content=b"{not json",
                options={"headers": {"content-type": "application/json"}},
            )
    wire.assert_valid(at_least=2)


async def test_many_concurrent_streams_validate(awclient, wire):
    async def one(i: int) -> int:
        return len(
            [
                ev
                async for ev in await awclient.responses.create(
                    model="m", input=f"c{i}", background=True, stream=True, metadata=SLOW
                )
            ]
        )

    counts = await asyncio.gather(*(one(i) for i in range(20)))
    assert wire.assert_valid() == sum(counts)
