"""Request building and retry rules, against a mock transport (no server)."""

from __future__ import annotations

import json
from dataclasses import dataclass

import httpx
import pytest
from bgruns import APIConnectionError, APIError, AsyncClient, Client

RUN = {"id": "run_1", "status": "completed", "output_text": "ok", "continuation_token": None}


async def test_start_sends_the_body_key_and_one_idempotency_key_across_retries():
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if len(seen) == 1:
            return httpx.Response(
                503,
                headers={"retry-after": "0"},
                json={"error": {"code": "provider_unavailable", "message": "later", "param": None}},
            )
        return httpx.Response(200, json=RUN)

    @dataclass
    class Message:  # like Agent Framework's chat messages: role + text
        role: str
        text: str

    async with AsyncClient("http://svc/api/", function_key="k3y", transport=httpx.MockTransport(handler)) as client:
        response = await client.run(
            [Message("user", "hi"), "and more"],
            session="sess_1",
            options={
                "metadata": {"a": "b"},
                "model": "m",
                "instructions": "be brief",
                "max_output_tokens": 50,
                "deadline_seconds": 60,
            },
        )
    assert response.text == "ok" and response.continuation_token is None
    assert len(seen) == 2 and all(r.url.path == "/api/runs" for r in seen)
    assert seen[0].headers["x-functions-key"] == "k3y"
    assert seen[0].headers["idempotency-key"] == seen[1].headers["idempotency-key"]
    assert json.loads(seen[0].content) == {
        "input": [{"role": "user", "content": "hi"}, {"role": "user", "content": "and more"}],
        "background": True,
        "session_id": "sess_1",
        "metadata": {"a": "b"},
        "model": "m",
        "instructions": "be brief",
        "max_output_tokens": 50,
        "deadline_seconds": 60,
    }


async def test_polling_by_token_sends_only_the_token_and_errors_carry_the_api_message():
    bodies = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        return httpx.Response(
            400,
            json={
                "error": {
                    "code": "invalid_token",
                    "param": "continuation_token",
                    "message": "The continuation token is invalid or was altered.",
                }
            },
        )

    async with AsyncClient("http://svc", transport=httpx.MockTransport(handler)) as client:
        with pytest.raises(APIError) as caught:
            await client.run("ignored", session="sess_1", options={"continuation_token": "tok"})
        with pytest.raises(ValueError, match="unknown run option"):
            client.run("x", options={"temperature": 1})
    assert bodies == [{"continuation_token": "tok"}]
    assert caught.value.status_code == 400 and caught.value.code == "invalid_token"
    assert caught.value.message == "The continuation token is invalid or was altered."


async def test_a_non_idempotent_post_is_retried_only_when_it_surely_was_not_sent():
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        if len(calls) == 1:
            raise httpx.ConnectError("refused", request=request)
        if len(calls) == 2:
            raise httpx.ReadError("reset", request=request)
        return httpx.Response(201, json={"id": "sess_1", "object": "session", "created_at": 1.0})

    async with AsyncClient("http://svc", transport=httpx.MockTransport(handler), max_retries=5) as client:
        with pytest.raises(APIConnectionError):
            await client.create_session()
    assert calls == ["/api/sessions", "/api/sessions"]  # the connect error was retried, the read error not


def test_the_blocking_client_has_the_same_shape():
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/sessions":
            return httpx.Response(201, json={"id": "sess_1", "object": "session", "created_at": 1.0})
        if request.url.path.endswith("/stream") or json.loads(request.content or b"{}").get("stream"):
            return httpx.Response(
                200,
                headers={"content-type": "text/event-stream"},
                content=(
                    "retry: 1000\n\n: keep-alive\n\n"
                    'id: 3\nevent: output_text.delta\ndata: {"run_id":"run_1","sequence_number":3,'
                    '"continuation_token":"t3","delta":"o"}\n\n'
                    'id: 4\nevent: output_text.delta\ndata: {"run_id":"run_1","sequence_number":4,'
                    '"continuation_token":"t4","delta":"k"}\n\n'
                    'id: 5\nevent: run.completed\ndata: {"run_id":"run_1","sequence_number":5,'
                    '"continuation_token":"t5",'
                    '"run":{"id":"run_1","status":"completed","output_text":"ok","continuation_token":null}}\n\n'
                ),
            )
        return httpx.Response(
            202, headers={"retry-after": "1"}, json={"id": "run_1", "status": "in_progress", "continuation_token": "t"}
        )

    with Client("http://svc", transport=httpx.MockTransport(handler)) as client:
        assert client.create_session().id == "sess_1"
        assert client.run(options={"continuation_token": "t"}).retry_after == 1.0
        updates = list(client.run(stream=True, options={"continuation_token": "t2"}))
    assert [(u.type, u.text, u.continuation_token, u.sequence_number) for u in updates] == [
        ("output_text.delta", "o", "t3", 3),
        ("output_text.delta", "k", "t4", 4),
        ("run.completed", "", "t5", 5),
    ]
    assert updates[-1].response.text == "ok" and updates[-1].status == "completed"
