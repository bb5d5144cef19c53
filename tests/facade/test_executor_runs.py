"""The facade's flows on runs the function app executes itself (RUN_BACKEND=executor: the emulator's Chat
Completions, no background mode): Agent Framework and the openai SDK cannot tell the difference."""
from __future__ import annotations

import asyncio

import httpx
import openai
import pytest
from agent_framework import Agent
from agent_framework.openai import OpenAIChatClient

from ..schemas import WireRecorder
from ..stack import EXECUTOR_HOST, FACADE_KEYS
from .conftest import MODEL, knobs


@pytest.fixture(scope="module")
def executor_host(stack):
    host = stack.start_host("facade-executor", **EXECUTOR_HOST)
    yield host
    host.stop()


@pytest.fixture
def agent(executor_host) -> Agent:
    client = OpenAIChatClient(model=MODEL, base_url=f"{executor_host.base_url}/api/v1", api_key=FACADE_KEYS["alice"])
    return Agent(client=client, name="writer", instructions="You are a helpful assistant.")


def backend_of(stack, executor_host, run_id: str) -> str:
    run = httpx.get(f"{executor_host.base_url}/api/runs/{run_id}", headers=stack.key_headers, timeout=30).json()
    return run["backend"]


async def test_agent_framework_polls_an_executor_run_with_its_continuation_token(agent, stack, executor_host):
    session = agent.create_session()
    response = await agent.run("Write a long essay about queues.", session=session,
                               options={"background": True, "metadata": knobs(2000, 300)})
    assert response.continuation_token is not None
    while response.continuation_token is not None:
        await asyncio.sleep(0.2)
        response = await agent.run(session=session, options={"continuation_token": response.continuation_token})
    assert len(response.text) == 300
    assert backend_of(stack, executor_host, response.response_id) == "executor"


async def test_agent_framework_resumes_a_broken_stream_of_an_executor_run(agent, stack, executor_host):
    session = agent.create_session()
    last_token = None
    async for update in agent.run("Write a story.", session=session, stream=True,
                                  options={"background": True, "metadata": knobs(2000, 300)}):
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
    second = await agent.run("Which word did I ask you to remember?", session=session,
                             options={"metadata": knobs(300, 80)})
    assert first.text and second.text and first.response_id != second.response_id
    assert backend_of(stack, executor_host, second.response_id) == "executor"


def test_the_sdk_stream_of_an_executor_run_is_openais_event_stream(stack, executor_host):
    recorder = WireRecorder()
    with openai.OpenAI(base_url=f"{executor_host.base_url}/api/v1", api_key=FACADE_KEYS["alice"],
                       http_client=recorder.sync_client(), max_retries=0) as client:
        events = list(client.responses.create(model=MODEL, input="Stream it", stream=True, background=True,
                                              metadata=knobs(1500, 200)))
        final = events[-1]
        assert final.type == "response.completed" and len(final.response.output_text) == 200
        seqs = [e.sequence_number for e in events]
        assert seqs == sorted(set(seqs))
        tail = list(client.responses.retrieve(final.response.id, stream=True, starting_after=seqs[3]))
        assert [e.sequence_number for e in tail] == seqs[4:]
        polled = client.responses.retrieve(final.response.id)
        assert polled.status == "completed" and polled.output_text == final.response.output_text
    recorder.assert_valid(at_least=3)
