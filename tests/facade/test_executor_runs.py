"""The facade's flows on runs the function app executes itself (RUN_BACKEND=executor: the emulator's Chat
Completions, no background mode): Agent Framework and the openai SDK cannot tell the difference. What the
caller asks reaches the model (the emulator's log of chat calls shows it) or is refused by name."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import openai
import pytest
from agent_framework import Agent
from agent_framework.openai import OpenAIChatClient

from ..schemas import WireRecorder
from ..stack import EXECUTOR_HOST, FACADE_KEYS
from .conftest import MODEL, knobs

WEATHER = [
    {
        "type": "function",
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    }
]


@pytest.fixture(scope="module")
def executor_host(stack):
    # The poll chain looks only after 30 s here: a run's status while it streams can only come from the executor.
    host = stack.start_host(
        "facade-executor", **EXECUTOR_HOST, POLL_INITIAL_DELAY_SECONDS="30", POLL_MAX_DELAY_SECONDS="30"
    )
    yield host
    host.stop()


@pytest.fixture
def sdk(executor_host, recorder):
    with openai.OpenAI(
        base_url=f"{executor_host.base_url}/api/v1",
        api_key=FACADE_KEYS["alice"],
        http_client=recorder.sync_client(),
        max_retries=0,
    ) as client:
        yield client


def marked(duration_ms: int, chars: int = 200, **more: str) -> tuple[str, dict[str, str]]:
    """A marker for the emulator's log of chat calls, and the metadata carrying it."""
    mark = f"m{time.time_ns()}"
    return mark, knobs(duration_ms, chars, emulator_marker=mark, **more)


def chat_calls(stack, mark: str) -> list[dict]:
    return httpx.get(
        f"{stack.emulator.base_url}/_emulator/chat_completions", params={"knob.emulator_marker": mark}
    ).json()["data"]


@pytest.fixture
def agent(executor_host) -> Agent:
    client = OpenAIChatClient(model=MODEL, base_url=f"{executor_host.base_url}/api/v1", api_key=FACADE_KEYS["alice"])
    return Agent(client=client, name="writer", instructions="You are a helpful assistant.")


def backend_of(stack, executor_host, run_id: str) -> str:
    run = httpx.get(f"{executor_host.base_url}/api/runs/{run_id}", headers=stack.key_headers, timeout=30).json()
    return run["backend"]


async def test_agent_framework_polls_an_executor_run_with_its_continuation_token(agent, stack, executor_host):
    session = agent.create_session()
    response = await agent.run(
        "Write a long essay about queues.", session=session, options={"background": True, "metadata": knobs(2000, 300)}
    )
    assert response.continuation_token is not None
    while response.continuation_token is not None:
        await asyncio.sleep(0.2)
        response = await agent.run(session=session, options={"continuation_token": response.continuation_token})
    assert len(response.text) == 300
    assert backend_of(stack, executor_host, response.response_id) == "executor"


async def test_agent_framework_resumes_a_broken_stream_of_an_executor_run(agent, stack, executor_host):
    session = agent.create_session()
    last_token = None
    async for update in agent.run(
        "Write a story.", session=session, stream=True, options={"background": True, "metadata": knobs(2000, 300)}
    ):
        last_token = update.continuation_token or last_token
        break
    assert last_token is not None
    resumed = agent.run(session=session, stream=True, options={"continuation_token": last_token})
    texts = [update.text async for update in resumed if update.text]
    final = await resumed.get_final_response()
    assert len(final.text) == 300 and texts
    assert backend_of(stack, executor_host, final.response_id) == "executor"


async def test_a_two_turn_session_on_executor_runs(agent, stack, executor_host):
    session = agent.create_session()
    first = await agent.run("Remember the word 'harbour'.", session=session, options={"metadata": knobs(300, 60)})
    second = await agent.run(
        "Which word did I ask you to remember?", session=session, options={"metadata": knobs(300, 80)}
    )
    assert first.text and second.text and first.response_id != second.response_id
    assert backend_of(stack, executor_host, second.response_id) == "executor"


def test_the_sdk_stream_of_an_executor_run_is_openais_event_stream(stack, executor_host):
    recorder = WireRecorder()
    with openai.OpenAI(
        base_url=f"{executor_host.base_url}/api/v1",
        api_key=FACADE_KEYS["alice"],
        http_client=recorder.sync_client(),
        max_retries=0,
    ) as client:
        events = list(
            client.responses.create(
                model=MODEL, input="Stream it", stream=True, background=True, metadata=knobs(1500, 200)
            )
        )
        final = events[-1]
        assert final.type == "response.completed" and len(final.response.output_text) == 200
        seqs = [e.sequence_number for e in events]
        assert seqs == sorted(set(seqs))
        tail = list(client.responses.retrieve(final.response.id, stream=True, starting_after=seqs[3]))
        assert [e.sequence_number for e in tail] == seqs[4:]
        polled = client.responses.retrieve(final.response.id)
        assert polled.status == "completed" and polled.output_text == final.response.output_text
    recorder.assert_valid(at_least=3)


# -- the caller's parameters (issue 21, item 3) --------------------------------------------------------------------
def test_what_the_caller_asks_reaches_the_model_is_applied_and_is_what_the_response_says(stack, sdk):
    # Found by issue 21: these reached the model server as the token cap alone, and the Response claimed
    # tool_choice "auto" and plain text.
    mark, metadata = marked(300)
    asked = dict(
        temperature=0.3,
        top_p=0.8,
        tool_choice="none",
        parallel_tool_calls=False,
        text={"format": {"type": "json_object"}},
        max_output_tokens=400,
        reasoning={"effort": "low"},
        service_tier="flex",
        user="u-1",
        safety_identifier="s-1",
        prompt_cache_key="k-1",
    )
    response = sdk.responses.create(
        model=MODEL, input="call:get_weather for Paris, as JSON", tools=WEATHER, metadata=metadata, **asked
    )
    [call] = chat_calls(stack, mark)
    assert {
        k: call["request"].get(k)
        for k in (
            "temperature",
            "top_p",
            "tool_choice",
            "parallel_tool_calls",
            "response_format",
            "max_tokens",
            "reasoning_effort",
            "service_tier",
            "user",
            "safety_identifier",
            "prompt_cache_key",
        )
    } == {
        "temperature": 0.3,
        "top_p": 0.8,
        "tool_choice": "none",
        "parallel_tool_calls": False,
        "response_format": {"type": "json_object"},
        "max_tokens": 400,
        "reasoning_effort": "low",
        "service_tier": "flex",
        "user": "u-1",
        "safety_identifier": "s-1",
        "prompt_cache_key": "k-1",
    }
    assert call["tool_calls"] == [] and isinstance(json.loads(response.output_text), dict)  # none; JSON
    assert response.usage.output_tokens_details.reasoning_tokens == 32  # the server's, in the Responses shape
    for shown in (response, sdk.responses.retrieve(response.id)):
        assert (
            shown.temperature,
            shown.top_p,
            shown.tool_choice,
            shown.parallel_tool_calls,
            shown.text.format.type,
            shown.max_output_tokens,
            shown.reasoning.effort,
            shown.service_tier,
            shown.user,
            shown.safety_identifier,
            shown.prompt_cache_key,
        ) == (0.3, 0.8, "none", False, "json_object", 400, "low", "flex", "u-1", "s-1", "k-1")


def test_a_streamed_run_carries_token_logprobs_and_reads_in_progress_while_it_streams(stack, sdk):
    # Found by issue 21: a run read `queued` for seconds while its tokens already streamed.
    mark, metadata = marked(3000, 120, emulator_deltas="30")
    events, status_while_streaming = [], None
    for event in sdk.responses.create(
        model=MODEL,
        input="stream with logprobs",
        stream=True,
        background=True,
        include=["message.output_text.logprobs"],
        top_logprobs=2,
        metadata=metadata,
    ):
        events.append(event)
        if event.type == "response.output_text.delta" and status_while_streaming is None:
            status_while_streaming = sdk.responses.retrieve(events[0].response.id).status
    assert status_while_streaming == "in_progress"
    final = events[-1]
    assert final.type == "response.completed" and final.response.top_logprobs == 2
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert all(d.logprobs and len(d.logprobs[0].top_logprobs) == 2 for d in deltas)
    part = final.response.output[0].content[0]
    assert "".join(t.token for t in part.logprobs) == final.response.output_text
    assert sdk.responses.retrieve(final.response.id).output[0].content[0].logprobs == part.logprobs
    assert chat_calls(stack, mark)[0]["request"]["top_logprobs"] == 2


@pytest.mark.parametrize(
    "asked,param,code",
    [
        ({"prompt": {"id": "pmpt_1"}}, "prompt", "unsupported_parameter"),
        ({"max_tool_calls": 2}, "max_tool_calls", "unsupported_parameter"),
        ({"reasoning": {"effort": "low", "summary": "auto"}}, "reasoning.summary", "unsupported_parameter"),
        ({"tool_choice": {"type": "web_search_preview"}}, "tool_choice", "unsupported_value"),
        ({"tools": [{"type": "web_search"}]}, "tools[0]", "unsupported_value"),
    ],
)
def test_what_the_model_api_has_no_equivalent_for_is_refused_by_name_and_leaves_nothing(stack, sdk, asked, param, code):
    mark, metadata = marked(300)
    key = f"refused-{mark}"

    def run_ids() -> list[str]:
        return [run["id"] for run in stack.get("/api/runs", params={"limit": 20}).json()["data"]]

    before = run_ids()
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.responses.create(
            model=MODEL, input="hi", metadata=metadata, extra_headers={"Idempotency-Key": key}, **asked
        )
    assert (refused.value.status_code, refused.value.code, refused.value.param) == (400, code, param)
    assert refused.value.body["type"] == "invalid_request_error"
    assert run_ids() == before and not chat_calls(stack, mark)  # no run, no model call
    fixed = sdk.responses.create(model=MODEL, input="hi", metadata=metadata, extra_headers={"Idempotency-Key": key})
    assert fixed.status == "completed"  # the key was never taken


def test_the_native_api_refuses_it_too(stack, executor_host):
    refused = httpx.post(
        f"{executor_host.base_url}/api/runs",
        headers=stack.key_headers,
        json={"input": "hi", "reasoning": {"effort": "low", "summary": "auto"}},
        timeout=30,
    )
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "unsupported_parameter"
    assert refused.json()["error"]["param"] == "reasoning.summary"


def test_a_turn_with_text_and_a_tool_call_is_replayed_as_one_assistant_message(stack, sdk):
    # Found by issue 21 on a real server: the turn came back as two assistant messages, which a strict chat
    # template refuses, and the next prompt differed from a client-kept history.
    first = sdk.responses.create(
        model=MODEL,
        input="call:get_weather",
        tools=WEATHER,
        metadata=knobs(300, emulator_call_preamble="Let me look that up."),
    )
    assert [item.type for item in first.output] == ["message", "function_call"]
    mark, metadata = marked(300)
    call = first.output[1]
    second = sdk.responses.create(
        model=MODEL,
        previous_response_id=first.id,
        tools=WEATHER,
        metadata=metadata,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}],
    )
    assert second.output_text.startswith(f"Tool get_weather ({call.call_id}) returned sunny")
    [sent] = chat_calls(stack, mark)
    assert sent["messages"] == [
        {"role": "user", "chars": len("call:get_weather"), "tool_calls": 0},
        {"role": "assistant", "chars": len("Let me look that up."), "tool_calls": 1},
        {"role": "tool", "chars": len("sunny"), "tool_calls": 0},
    ]


def test_a_failed_run_reads_the_same_openai_error_on_the_stream_and_on_get(sdk):
    # Found by issue 21: the stream's response.failed carried our own code (provider_error) while GET said
    # server_error for the same run.
    events = list(
        sdk.responses.create(
            model=MODEL,
            input="refused",
            stream=True,
            background=True,
            metadata=knobs(300, emulator_http_errors="401:9"),
        )
    )
    final = events[-1]
    assert final.type == "response.failed" and final.response.error.code == "server_error"
    assert final.response.error.message.startswith("provider_error: ")
    assert sdk.responses.retrieve(final.response.id).error == final.response.error
