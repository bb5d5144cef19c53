"""Agent Framework's Agent with its OpenAI Responses client (`OpenAIChatClient(base_url=..., api_key=...)`), running
the background-responses flows as its documentation shows them, against the facade."""

from __future__ import annotations

import asyncio

import pytest
from agent_framework import Agent
from agent_framework.openai import OpenAIChatClient

from ..stack import FACADE_KEYS
from .conftest import MODEL, knobs, provider_response


@pytest.fixture
def agent(base_url) -> Agent:
    client = OpenAIChatClient(model=MODEL, base_url=base_url, api_key=FACADE_KEYS["alice"])
    return Agent(client=client, name="writer", instructions="You are a helpful assistant.")


async def test_background_run_polled_with_the_continuation_token_until_none(agent, stack):
    session = agent.create_session()
    response = await agent.run(
        "Write a long essay about queues.", session=session, options={"background": True, "metadata": knobs(2000, 300)}
    )
    assert response.continuation_token is not None
    polls = 0
    while response.continuation_token is not None:
        await asyncio.sleep(0.2)
        response = await agent.run(session=session, options={"continuation_token": response.continuation_token})
        polls += 1
    assert polls >= 3 and len(response.text) == 300
    run_id = response.response_id
    assert run_id.startswith("run_") and provider_response(stack, run_id)["status"] == "completed"


async def test_a_stream_broken_after_its_first_update_resumes_with_the_last_token(agent, stack):
    session = agent.create_session()
    last_token = None
    stream = agent.run(
        "Write a story.", session=session, stream=True, options={"background": True, "metadata": knobs(2000, 300)}
    )
    async for update in stream:
        last_token = update.continuation_token or last_token
        break  # the interruption, right after the first update (it carries the token)
    assert last_token is not None
    resumed = agent.run(session=session, stream=True, options={"continuation_token": last_token})
    texts = [update.text async for update in resumed if update.text]
    final = await resumed.get_final_response()
    assert len(final.text) == 300 and texts  # replayed from the start: the client resumes without starting_after
    provider = provider_response(stack, final.response_id)
    assert provider["status"] == "completed" and provider["counters"]["stream"] >= 1


async def test_a_two_turn_session_chains_through_previous_response_id(agent, stack):
    session = agent.create_session()
    first = await agent.run("Remember the word 'harbour'.", session=session, options={"metadata": knobs(300, 60)})
    second = await agent.run(
        "Which word did I ask you to remember?", session=session, options={"metadata": knobs(300, 200)}
    )
    assert first.response_id.startswith("run_") and second.response_id.startswith("run_")
    provider_first, provider_second = (
        provider_response(stack, first.response_id),
        provider_response(stack, second.response_id),
    )
    # Our run id went out as previous_response_id; the provider got its own response id.
    assert provider_second["previous_response_id"] == provider_first["id"]
    assert (
        second.text.startswith('Emulated reply to "Which word')
        and f"Continuing from {provider_first['id']}" in second.text
    )


async def test_a_function_tool_round_trip(base_url, stack):
    calls = []

    def get_weather(city: str) -> str:
        """The weather in a city."""
        calls.append(city)
        return f"Sunny in {city}"

    client = OpenAIChatClient(model=MODEL, base_url=base_url, api_key=FACADE_KEYS["alice"])
    agent = Agent(client=client, instructions="Use the tools.", tools=[get_weather])
    response = await agent.run('call:get_weather({"city": "Paris"})', options={"metadata": knobs(300, 80)})
    assert calls == ["Paris"]
    assert response.text.startswith("Tool get_weather (call_") and "Sunny in Paris" in response.text
    follow_up = provider_response(stack, response.response_id)
    assert follow_up["previous_response_id"] is not None  # the tool output continued the run that asked for it
