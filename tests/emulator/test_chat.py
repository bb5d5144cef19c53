"""Chat Completions (streaming and not) with the Responses path's knobs, and a Responses API without
background mode. Every body and chunk is validated against the openai SDK's own types (ChatCompletion,
ChatCompletionChunk) through the WireRecorder, error bodies against OpenAI's ErrorResponse schema."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import openai
import pytest

from .conftest import SCALE, admin

HI = [{"role": "user", "content": "hello chat"}]
WEATHER = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]


def knobs(**values) -> dict:
    """The knob header: JSON, keys with or without the emulator_ prefix."""
    return {"x-emulator-knobs": json.dumps(values)}


def content_of(chunks) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


# ------------------------------------------------------------------ plain and streamed


def test_non_streaming_completion(wclient, wire):
    t0 = time.monotonic()
    r = wclient.chat.completions.create(
        model="m", messages=HI, extra_headers=knobs(duration_ms=20000, output_chars=300)
    )
    assert time.monotonic() - t0 >= 20000 * SCALE / 1000 - 0.02  # waited for the whole emulated run
    choice = r.choices[0]
    assert choice.finish_reason == "stop" and choice.message.role == "assistant"
    assert len(choice.message.content) == 300 and "hello chat" in choice.message.content
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")
    assert r.usage.completion_tokens == 75 and r.usage.total_tokens == r.usage.prompt_tokens + 75
    wire.assert_valid()


def test_stream_with_usage_matches_the_plain_text(wclient, wire):
    plain = wclient.chat.completions.create(model="m", messages=HI, extra_headers=knobs(output_chars=400))
    arrivals, chunks = [], []
    t0 = time.monotonic()
    for chunk in wclient.chat.completions.create(
        model="m",
        messages=HI,
        stream=True,
        stream_options={"include_usage": True},
        extra_headers=knobs(output_chars=400, deltas=20, duration_ms=20000),
    ):
        arrivals.append(time.monotonic() - t0)
        chunks.append(chunk)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert content_of(chunks) == plain.choices[0].message.content  # deterministic per input + knobs
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) == 20
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 100
    assert all(c.usage is None for c in chunks[:-1])
    assert arrivals[-1] - arrivals[1] >= 0.2  # paced over the 0.4 s run, not sent at once
    raw = b"".join(bytes(ex.body) for ex in wire.exchanges if ex.is_sse)
    assert raw.endswith(b"data: [DONE]\n\n")
    wire.assert_valid(at_least=len(chunks) + 1)


async def test_async_stream_without_usage(awclient, wire):
    stream = await awclient.chat.completions.create(model="m", messages=HI, stream=True)
    chunks = [c async for c in stream]
    assert chunks[-1].choices[0].finish_reason == "stop" and "usage" not in chunks[0].model_dump(exclude_unset=True)
    r = await awclient.chat.completions.create(model="m", messages=HI)
    assert content_of(chunks) == r.choices[0].message.content
    wire.assert_valid(at_least=len(chunks) + 1)


async def test_many_concurrent_streams(awclient, wire):
    async def one(i: int) -> str:
        stream = await awclient.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": f"c{i}"}],
            stream=True,
            extra_headers=knobs(duration_ms=20000),
        )
        return content_of([c async for c in stream])

    texts = await asyncio.gather(*(one(i) for i in range(100)))
    assert all(len(t) == 200 for t in texts) and len(set(texts)) == 100
    wire.assert_valid(at_least=100)


# ------------------------------------------------------------------ where knobs come from


def test_metadata_needs_store_like_openai(wclient, wire, emu):
    nr = wclient.with_options(max_retries=0)
    with pytest.raises(openai.BadRequestError) as exc:
        nr.chat.completions.create(model="m", messages=HI, metadata={"emulator_output_chars": "50"})
    assert exc.value.param == "metadata" and "store" in exc.value.message
    stored = nr.chat.completions.create(model="m", messages=HI, store=True, metadata={"emulator_output_chars": "50"})
    assert len(stored.choices[0].message.content) == 50
    header_wins = nr.chat.completions.create(
        model="m",
        messages=HI,
        store=True,
        metadata={"emulator_output_chars": "50"},
        extra_headers=knobs(emulator_output_chars=70),
    )
    assert len(header_wins.choices[0].message.content) == 70
    admin(emu, "POST", "config", json={"chat_metadata_requires_store": False})  # vLLM / Ollama style
    try:
        lax = nr.chat.completions.create(model="m", messages=HI, metadata={"emulator_output_chars": "60"})
        assert len(lax.choices[0].message.content) == 60
    finally:
        admin(emu, "POST", "config", json={"chat_metadata_requires_store": True})
    with pytest.raises(openai.BadRequestError):
        nr.chat.completions.create(model="m", messages=HI, extra_headers={"x-emulator-knobs": "{nope"})
    with pytest.raises(openai.BadRequestError):
        nr.chat.completions.create(model="m", messages=HI, extra_headers=knobs(outcome="exploded"))
    wire.assert_valid(at_least=6)


def test_request_validation(wclient, wire):
    nr = wclient.with_options(max_retries=0)
    for kwargs, param in (
        (dict(model="", messages=HI), "model"),
        (dict(model="m", messages=[]), "messages"),
        (dict(model="m", messages=HI, n=2), "n"),
        (dict(model="m", messages=HI, stream_options={"include_usage": True}), "stream_options"),
        (dict(model="m", messages=[{"content": "no role"}]), "messages"),
    ):
        with pytest.raises(openai.BadRequestError) as exc:
            nr.chat.completions.create(**kwargs)
        assert exc.value.param == param, kwargs
    wire.assert_valid(at_least=5)


# ------------------------------------------------------------------ tool calls


def test_tool_call_round_trip(wclient, wire):
    ask = [{"role": "user", "content": 'call:get_weather({"city": "Oslo"})'}]
    r = wclient.chat.completions.create(model="m", messages=ask, tools=WEATHER)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    [call] = choice.message.tool_calls
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Oslo"}
    with wclient.chat.completions.stream(model="m", messages=ask, tools=WEATHER) as stream:
        for _ev in stream:
            pass
        streamed = stream.get_final_completion().choices[0]
    assert streamed.finish_reason == "tool_calls"
    assert streamed.message.tool_calls[0].function.arguments == call.function.arguments
    history = ask + [
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": '{"temp": 3}'},
    ]
    answer = wclient.chat.completions.create(model="m", messages=history, tools=WEATHER)
    assert answer.choices[0].finish_reason == "stop"
    assert answer.choices[0].message.content.startswith(f'Tool get_weather ({call.id}) returned {{"temp": 3}}.')
    later = history + [answer.choices[0].message.model_dump(exclude_none=True), {"role": "user", "content": "thanks"}]
    assert (
        wclient.chat.completions.create(model="m", messages=later, tools=WEATHER).choices[0].finish_reason == "stop"
    )  # an earlier turn's trigger does not fire again
    assert (
        wclient.chat.completions.create(model="m", messages=ask, tools=WEATHER, tool_choice="none")
        .choices[0]
        .finish_reason
        == "stop"
    )
    by_knob = wclient.chat.completions.create(
        model="m", messages=HI, tools=WEATHER, extra_headers=knobs(function_call="get_weather")
    )
    assert json.loads(by_knob.choices[0].message.tool_calls[0].function.arguments) == {"city": "emulated"}
    wire.assert_valid(at_least=6)


# ------------------------------------------------------------------ parameters: checked, honoured, logged


def test_arguments_chat_completions_does_not_have_or_cannot_take_are_refused(wclient, wire):
    nr = wclient.with_options(max_retries=0)
    for kwargs, param, code in (
        (dict(extra_body={"max_output_tokens": 5}), "max_output_tokens", "unknown_parameter"),
        (dict(extra_body={"text": {"format": {"type": "json_object"}}}), "text", "unknown_parameter"),
        (dict(temperature=3), "temperature", "invalid_value"),
        (dict(tool_choice="none"), "tool_choice", "invalid_value"),  # without tools, as OpenAI
        (dict(parallel_tool_calls=False), "parallel_tool_calls", "invalid_value"),
        (dict(top_logprobs=2), "top_logprobs", "invalid_value"),  # without logprobs
        (dict(reasoning_effort="extreme"), "reasoning_effort", "invalid_value"),
        (
            dict(tools=WEATHER, tool_choice={"type": "function", "function": {"name": "nope"}}),
            "tool_choice",
            "invalid_value",
        ),
    ):
        with pytest.raises(openai.BadRequestError) as exc:
            nr.chat.completions.create(model="m", messages=HI, **kwargs)
        assert (exc.value.param, exc.value.code) == (param, code), kwargs
    wire.assert_valid(at_least=8)


def test_tool_choice_and_parallel_tool_calls_are_honoured(wclient, wire):
    two = [{"role": "user", "content": "call:get_weather call:get_time"}]
    tools = WEATHER + [{"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}]
    names = lambda r: [c.function.name for c in r.choices[0].message.tool_calls or []]  # noqa: E731
    assert names(wclient.chat.completions.create(model="m", messages=two, tools=tools)) == ["get_weather", "get_time"]
    assert names(wclient.chat.completions.create(model="m", messages=two, tools=tools, parallel_tool_calls=False)) == [
        "get_weather"
    ]
    assert names(wclient.chat.completions.create(model="m", messages=HI, tools=tools, tool_choice="required")) == [
        "get_weather"
    ]  # no trigger in the text: called all the same
    assert names(
        wclient.chat.completions.create(
            model="m", messages=two, tools=tools, tool_choice={"type": "function", "function": {"name": "get_time"}}
        )
    ) == ["get_time"]
    allowed = {
        "type": "allowed_tools",
        "allowed_tools": {"mode": "auto", "tools": [{"type": "function", "function": {"name": "get_time"}}]},
    }
    assert names(wclient.chat.completions.create(model="m", messages=two, tools=tools, tool_choice=allowed)) == [
        "get_time"
    ]
    assert names(wclient.chat.completions.create(model="m", messages=two, tools=tools, tool_choice="none")) == []
    wire.assert_valid(at_least=6)


def test_response_format_gives_json_text(wclient, wire):
    obj = wclient.chat.completions.create(model="m", messages=HI, response_format={"type": "json_object"})
    assert isinstance(json.loads(obj.choices[0].message.content), dict)
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}, "unit": {"enum": ["C", "F"]}},
        "required": ["city", "days", "unit"],
    }
    chunks = list(
        wclient.chat.completions.create(
            model="m",
            messages=HI,
            stream=True,
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "forecast", "schema": schema, "strict": True},
            },
        )
    )
    value = json.loads(content_of(chunks))
    assert set(value) == {"city", "days", "unit"} and value["days"] == 1 and value["unit"] == "C"
    wire.assert_valid(at_least=2)


def test_logprobs_service_tier_and_reasoning_effort_come_back(wclient, wire):
    chunks = list(
        wclient.chat.completions.create(
            model="m",
            messages=HI,
            stream=True,
            logprobs=True,
            top_logprobs=2,
            service_tier="flex",
            reasoning_effort="low",
            stream_options={"include_usage": True},
            extra_headers=knobs(output_chars=40, deltas=4),
        )
    )
    tokens = [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert "".join(t.token for t in tokens) == content_of(chunks) and all(len(t.top_logprobs) == 2 for t in tokens)
    assert {c.service_tier for c in chunks} == {"flex"}
    assert chunks[-1].usage.completion_tokens_details.reasoning_tokens == 32
    plain = wclient.chat.completions.create(model="m", messages=HI, extra_headers=knobs(output_chars=40))
    assert plain.choices[0].logprobs is None and plain.service_tier == "default"
    wire.assert_valid(at_least=len(chunks) + 1)


def test_a_call_preamble_gives_text_and_tool_calls_in_one_message(wclient, wire):
    ask = [{"role": "user", "content": "call:get_weather"}]
    r = wclient.chat.completions.create(
        model="m", messages=ask, tools=WEATHER, extra_headers=knobs(call_preamble="Let me check.")
    )
    message = r.choices[0].message
    assert message.content == "Let me check." and message.tool_calls[0].function.name == "get_weather"
    chunks = list(
        wclient.chat.completions.create(
            model="m", messages=ask, tools=WEATHER, stream=True, extra_headers=knobs(call_preamble="Let me check.")
        )
    )
    assert content_of(chunks) == "Let me check." and chunks[-1].choices[0].finish_reason == "tool_calls"
    wire.assert_valid(at_least=2)


def test_the_call_log_keeps_what_each_call_was_sent(emu, wclient):
    tag = f"log-{time.time()}"
    wclient.chat.completions.create(
        model="m",
        messages=HI + [{"role": "assistant", "content": "hi"}, HI[0]],
        tools=WEATHER,
        tool_choice="none",
        temperature=0.5,
        store=True,
        metadata={"tag": tag},
    )
    [row] = httpx.get(f"{emu.base_url}/_emulator/chat_completions", params={"metadata.tag": tag}).json()["data"]
    assert row["request"]["temperature"] == 0.5 and row["request"]["tool_choice"] == "none"
    assert row["tools"] == ["get_weather"] and "messages" not in row["request"]
    assert row["messages"] == [
        {"role": "user", "chars": 10, "tool_calls": 0},
        {"role": "assistant", "chars": 2, "tool_calls": 0},
        {"role": "user", "chars": 10, "tool_calls": 0},
    ]


# ------------------------------------------------------------------ faults and outcomes


def test_http_errors_with_retry_after(wclient, wire, emu):
    headers = knobs(http_errors="429:2", retry_after_ms=150, output_chars=40)
    t0 = time.monotonic()
    r = wclient.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "rl"}], extra_headers=headers
    )  # the SDK's own retries get through
    assert time.monotonic() - t0 >= 0.29 and len(r.choices[0].message.content) == 40
    assert wire.statuses() == [429, 429, 200]
    nr = wclient.with_options(max_retries=0)
    with pytest.raises(openai.RateLimitError) as exc:
        nr.chat.completions.create(model="m", messages=[{"role": "user", "content": "rl2"}], extra_headers=headers)
    assert exc.value.response.headers["retry-after-ms"] == "150" and exc.value.code == "rate_limit_exceeded"
    with pytest.raises(openai.InternalServerError):
        nr.chat.completions.create(model="m", messages=HI, extra_headers={"x-emulator-fault": "503"})
    admin(emu, "POST", "config", json={"fault_500_rate": 1.0})
    try:
        with pytest.raises(openai.InternalServerError):
            nr.chat.completions.create(model="m", messages=HI)
    finally:
        admin(emu, "POST", "config", json={"fault_500_rate": 0.0})
    wire.assert_valid(at_least=6)


def test_cut_mid_stream(wclient, wire):
    got = []
    with pytest.raises(openai.APIConnectionError):  # noqa: PT012 - the loop keeps what arrived before the cut
        for chunk in wclient.chat.completions.create(
            model="m", messages=HI, stream=True, extra_headers=knobs(stream_cut_after=5)
        ):
            got.append(chunk)
    assert len(got) == 5 and got[-1].choices[0].finish_reason is None
    assert wire.assert_valid() == 5


def test_cut_only_the_first_sends_of_a_body(client):
    body = dict(
        model="m",
        messages=[{"role": "user", "content": "cut me twice"}],
        stream=True,
        extra_headers=knobs(stream_cut_after=3, stream_cut_sends=2),
    )
    for _ in range(2):
        with pytest.raises(openai.APIConnectionError):
            list(client.chat.completions.create(**body))
    chunks = list(client.chat.completions.create(**body))
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_failed_outcome(wclient, wire):
    nr = wclient.with_options(max_retries=0)
    t0 = time.monotonic()
    with pytest.raises(openai.InternalServerError) as exc:
        nr.chat.completions.create(model="m", messages=HI, extra_headers=knobs(outcome="failed", duration_ms=10000))
    assert time.monotonic() - t0 >= 0.18 and exc.value.code == "server_error"  # fails at the end of the run
    got = []
    with pytest.raises(openai.APIError) as exc:  # noqa: PT012 - the loop keeps what arrived before the cut
        for chunk in nr.chat.completions.create(
            model="m", messages=HI, stream=True, extra_headers=knobs(outcome="failed", deltas=10)
        ):
            got.append(chunk)
    assert "emulator_outcome=failed" in exc.value.message
    assert sum(1 for c in got if c.choices[0].delta.content) == 5  # half the output, then the error
    wire.assert_valid(at_least=3)


def test_length_outcomes(wclient, wire):
    half = wclient.chat.completions.create(model="m", messages=HI, extra_headers=knobs(outcome="incomplete"))
    assert half.choices[0].finish_reason == "length" and len(half.choices[0].message.content) == 100
    capped = wclient.chat.completions.create(model="m", messages=HI, max_completion_tokens=10)
    assert capped.choices[0].finish_reason == "length" and capped.usage.completion_tokens == 10
    assert len(capped.choices[0].message.content) == 40
    chunks = list(wclient.chat.completions.create(model="m", messages=HI, max_tokens=10, stream=True))
    assert chunks[-1].choices[0].finish_reason == "length" and content_of(chunks) == capped.choices[0].message.content
    wire.assert_valid(at_least=3)


def test_azure_flavours_and_call_log(emu, wire):
    tag = f"az-{time.time()}"
    with openai.AzureOpenAI(
        azure_endpoint=emu.root_url, api_key="k", api_version="2024-10-21", http_client=wire.sync_client()
    ) as az:  # /openai/deployments/m/...
        r = az.chat.completions.create(model="m", messages=HI, store=True, metadata={"tag": tag})
    with openai.OpenAI(base_url=emu.azure_base_url, api_key="k", http_client=wire.sync_client()) as v1:
        list(v1.chat.completions.create(model="m", messages=HI, stream=True, store=True, metadata={"tag": tag}))
    assert r.choices[0].message.content
    assert [ex.path for ex in wire.exchanges] == [
        "/openai/deployments/m/chat/completions",
        "/openai/v1/chat/completions",
    ]
    rows = httpx.get(f"{emu.base_url}/_emulator/chat_completions", params={"metadata.tag": tag}).json()["data"]
    assert [(row["stream"], row["outcome"]) for row in rows] == [(False, "stop"), (True, "stop")]
    assert rows[1]["chunks_sent"] == rows[1]["chunks"] > 2
    stats = admin(emu, "GET", "stats")
    assert stats["requests"]["chat"] >= 1 and stats["requests"]["chat_stream"] >= 1 and stats["chat"]["calls"] >= 2
    wire.assert_valid(at_least=3)


# ------------------------------------------------------------------ a Responses API without background mode


def test_background_mode_off(emu, wclient, wire):
    admin(emu, "POST", "config", json={"background_mode": False})
    try:
        nr = wclient.with_options(max_retries=0)
        with pytest.raises(openai.BadRequestError) as exc:
            nr.responses.create(model="m", input="bg", background=True)
        assert exc.value.param == "background" and exc.value.code == "unsupported_parameter"
        with pytest.raises(openai.BadRequestError):
            nr.responses.create(model="m", input="bg", background=True, stream=True)
        events = list(nr.responses.create(model="m", input="plain stream", stream=True))
        assert events[0].response.status == "in_progress" and events[-1].type == "response.completed"
        assert nr.responses.create(model="m", input="plain").status == "completed"
        with pytest.raises(openai.BadRequestError):  # no resume without background
            nr.responses.retrieve(events[0].response.id, stream=True)
    finally:
        admin(emu, "POST", "config", json={"background_mode": True})
    wire.assert_valid(at_least=len(events) + 4)
