"""The executor's real model call (ModelClient and the openai SDK) against a scripted server on an in-memory transport:
how it reads a Responses stream, and what a failure the model reports inside its stream means."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import httpx2
from openai import AsyncOpenAI

from shared.executor.attempts import Executor
from shared.executor.model_client import ModelClient

from .module_graph import ROOT
from .test_executor import FAST, executor_world, logged, start, text_after_last_restart


def chat_chunk(content: str | None = None, finish: str | None = None) -> dict:
    delta = {"content": content} if content is not None else {}
    return {
        "id": "c1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def sse(*events: dict, done: bool = True) -> str:
    body = "".join(f"data: {json.dumps(event)}\n\n" for event in events)
    return body + ("data: [DONE]\n\n" if done else "")


def message(text: str) -> dict:
    return {
        "type": "message",
        "id": "msg_1",
        "status": "completed",
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    }


def responses_stream(*deltas: str, end: dict) -> str:
    events = [
        {"type": "response.created", "sequence_number": 0, "response": {"id": "resp_1", "status": "in_progress"}},
        {
            "type": "response.output_item.added",
            "sequence_number": 1,
            "output_index": 0,
            "item": {**message(""), "status": "in_progress", "content": []},
        },
    ]
    events += [
        {
            "type": "response.output_text.delta",
            "sequence_number": 2 + n,
            "item_id": "msg_1",
            "output_index": 0,
            "content_index": 0,
            "delta": delta,
        }
        for n, delta in enumerate(deltas)
    ]
    return sse(*events, {**end, "sequence_number": 2 + len(deltas)})


def completed(text: str) -> dict:
    return {
        "type": "response.completed",
        "response": {
            "id": "resp_1",
            "object": "response",
            "status": "completed",
            "output": [message(text)],
            "usage": {"input_tokens": 1, "output_tokens": 2, "total_tokens": 3},
        },
    }


def server_answering(*answers: str) -> tuple[AsyncOpenAI, list[dict]]:
    """An OpenAI client whose server answers each call with the next SSE body (the last one again after that)."""
    calls: list[dict] = []

    def answer(request: httpx2.Request) -> httpx2.Response:
        calls.append(json.loads(request.content))
        return httpx2.Response(
            200,
            headers={"content-type": "text/event-stream"},
            content=answers[min(len(calls), len(answers)) - 1].encode(),
        )

    client = AsyncOpenAI(
        api_key="k",
        base_url="http://model.test/v1",
        max_retries=0,
        http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(answer)),
    )
    return client, calls


def with_model_client(w, client: AsyncOpenAI, api: str) -> None:
    executor = w.services.executor
    w.services.executor = Executor(
        executor._store,
        executor._log,
        executor._ending,
        ModelClient(client, api=api, idle_timeout=5, connect_timeout=5),
        executor._settings,
        FAST,
    )


# -- a server-side failure reported in the stream is a cut stream (issue 22) ---------------------------------------
async def test_a_server_error_chat_completions_reports_mid_stream_starts_the_next_attempt(monkeypatch):
    # LiteLLM reports an upstream 500 after output began as an error payload in the stream; the executor took it as
    # final and failed the run, where a dropped connection starts the next attempt.
    failing = sse(
        chat_chunk("Hel"),
        {"error": {"message": "upstream died", "type": "internal_server_error", "param": None, "code": "500"}},
        done=False,
    )
    client, calls = server_answering(failing, sse(chat_chunk("Hello"), chat_chunk(" world", finish="stop")))
    w = executor_world(monkeypatch)
    with_model_client(w, client, "chat_completions")
    run = await start(w)
    assert await w.execute() == ["completed"]
    events = await logged(w, run.id)
    restarts = [e for e in events if e["type"] == "response.output_restarted"]
    assert len(restarts) == 1 and "upstream died" in restarts[0]["reason"]
    assert text_after_last_restart(events) == "Hello world" and len(calls) == 2
    assert (await w.run(run.id)).result["output_text"] == "Hello world"


async def test_a_client_error_reported_mid_stream_stays_the_models_verdict(monkeypatch):
    failing = sse(
        chat_chunk("Hel"),
        {"error": {"message": "the prompt is refused", "type": "invalid_request_error", "param": None, "code": "400"}},
        done=False,
    )
    client, calls = server_answering(failing)
    w = executor_world(monkeypatch)
    with_model_client(w, client, "chat_completions")
    run = await start(w)
    assert await w.execute() == ["failed"]
    assert len(calls) == 1 and "the prompt is refused" in (await w.run(run.id)).result["error"]["message"]


async def test_a_responses_api_failing_with_a_server_error_mid_stream_starts_the_next_attempt(monkeypatch):
    # What LiteLLM's Responses API sends for an upstream 500 mid-generation: a failed response, server_error.
    failed = {
        "type": "response.failed",
        "response": {
            "id": "resp_1",
            "status": "failed",
            "output": [],
            "error": {"code": "server_error", "message": "litellm.InternalServerError: upstream died"},
        },
    }
    client, calls = server_answering(
        responses_stream("Hel", end=failed), responses_stream("Hello", " world", end=completed("Hello world"))
    )
    w = executor_world(monkeypatch)
    with_model_client(w, client, "responses")
    run = await start(w)
    assert await w.execute() == ["completed"]
    events = await logged(w, run.id)
    assert sum(e["type"] == "response.output_restarted" for e in events) == 1 and len(calls) == 2
    assert text_after_last_restart(events) == "Hello world"
    assert (await w.run(run.id)).result["output_text"] == "Hello world"


async def test_a_responses_api_refusing_in_its_stream_fails_the_run_once(monkeypatch):
    refused = {"type": "error", "code": "invalid_prompt", "message": "the prompt is refused", "param": None}
    client, calls = server_answering(responses_stream("Hel", end=refused))
    w = executor_world(monkeypatch)
    with_model_client(w, client, "responses")
    run = await start(w)
    assert await w.execute() == ["failed"]
    assert len(calls) == 1 and (await w.run(run.id)).result["error"]["code"] == "invalid_prompt"


# -- the Responses stream builds no SDK model on the event loop (issue 22) --------------------------------------------
FRESH_WORKER = textwrap.dedent("""
    import asyncio, json, time
    import httpx2, openai
    from openai import AsyncOpenAI
    from shared.executor.model_client import ModelClient
    from shared.executor.model_request import ModelRequest, response_skeleton
    from tests.unit.test_model_client import completed, responses_stream

    def subclasses(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)

    async def main():
        body = responses_stream("Hello", " world", end=completed("Hello world")).encode()
        answer = lambda request: httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=body)
        client = AsyncOpenAI(api_key="k", base_url="http://model.test/v1", max_retries=0,
                             http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(answer)))
        model = ModelClient(client, api="responses", idle_timeout=5, connect_timeout=5)
        request = ModelRequest.of({"model": "m", "input": "hi"})
        started = time.perf_counter()
        events = [event async for event in model.stream(request, response_skeleton("exec_1", {"model": "m"}, 0))]
        built = sorted(c.__name__ for c in subclasses(openai.BaseModel)
                       if c.__module__.startswith("openai.types") and c.__pydantic_complete__)
        print(json.dumps({"types": [e["type"] for e in events], "built": built,
                          "seconds": time.perf_counter() - started}))

    asyncio.run(main())
""")


def test_the_first_responses_stream_in_a_worker_builds_no_sdk_model():
    # EXECUTOR_API=responses held a fresh worker's event loop 3-5 s on its first stream (seen against LiteLLM): the
    # SDK built its pydantic Response models on first use, so an attempt's heartbeat stopped past
    # EXECUTOR_STALE_SECONDS=5 and the watchdog restarted the run. The stream is read as the server's JSON instead.
    done = subprocess.run([sys.executable, "-c", FRESH_WORKER], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["types"] == [
        "response.output_item.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.completed",
    ]
    assert result["built"] == []
