"""Key-like text is taken out of what a provider says before it reaches a caller, a stored run or a log (issue 21:
OpenAI's 401 text carries a masked key tail and was quoted to callers as it was)."""

from __future__ import annotations

import logging

import httpx
import openai
import pytest

from shared.errors import UpstreamError
from shared.executor.model_request import failed_event
from shared.executor.responses_passthrough import ResponsesRelabeller
from shared.provider import ProviderError
from shared.provider.errors import classify
from shared.redaction import REDACTED, redact
from shared.runs.requests import RunRequest
from shared.runs.results import result_from_response

from .fakes import world

OPENAI_401 = (
    "Incorrect API key provided: sk-proj-********************************************AbC9. You can find "
    "your API key at https://platform.openai.com/account/api-keys."
)
SECRETS = [
    "sk-proj-********************************************AbC9",
    "sk-abc***xyz9",
    "abcdef0123456789",
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    "q8ZbN7n0aQ+K1/3xQv5dS2mPzq0j4rT6uYcVbHnLkEo=",
    "hunter2",
    "Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5MGFiY2RlZmdo",
]


@pytest.mark.parametrize(
    "text, secret",
    [
        (OPENAI_401, SECRETS[0]),
        ("Incorrect API key provided: sk-abc***xyz9.", SECRETS[1]),
        ("upstream said: Authorization: Bearer abcdef0123456789", SECRETS[2]),
        ("proxy error: api-key: abcdef0123456789 is not valid", SECRETS[2]),
        ('{"error": {"message": "bad", "api_key": "abcdef0123456789"}}', SECRETS[2]),
        ("could not reach https://x.azurewebsites.net/api/runs?code=abcdef0123456789&a=1", SECRETS[2]),
        (f"token {SECRETS[3]} expired", SECRETS[3]),
        (f"signing key {SECRETS[4]} refused", SECRETS[4]),
        (f"key {SECRETS[5]} refused", SECRETS[5]),
        ("login failed: password=hunter2&user=a", SECRETS[6]),
        (f"x-api-key {SECRETS[7]}", SECRETS[7]),
    ],
)
def test_key_like_text_is_redacted(text, secret):
    redacted = redact(text)
    assert secret not in redacted and REDACTED in redacted
    assert redact(redacted) == redacted  # idempotent


@pytest.mark.parametrize(
    "text",
    [
        "Error code: 401 - invalid request",
        "The model gpt-4.1-mini-2025-04-14 does not exist",
        "No response found with id 'resp_67cb71b351908190a308f3859487620d06981a8637e6bc44'.",
        "request id 3f2c8a4e-1b2d-4c5e-9f60-7a8b9c0d1e2f",
        "run run_6b49d200eaebea5c4babbbdb",
        "You exceeded your current quota, please check your plan and billing details.",
    ],
)
def test_ordinary_provider_text_and_ids_are_kept(text):
    assert redact(text) == text


def _status_error(status: int, message: str) -> openai.APIStatusError:
    request = httpx.Request("POST", "https://api.openai.com/v1/responses")
    response = httpx.Response(status, json={"error": {"message": message}}, request=request)
    return openai.AuthenticationError(message, response=response, body={"message": message})


def test_every_provider_error_is_redacted_at_its_source():
    assert SECRETS[0] not in classify(_status_error(401, OPENAI_401)).message
    assert SECRETS[2] not in ProviderError(transient=True, status=None, message=f"Bearer {SECRETS[2]}").message
    event = failed_event({"id": "exec_1"}, "server_error", OPENAI_401)
    assert SECRETS[0] not in str(event)
    relabelled = ResponsesRelabeller({"id": "exec_1"}).feed(
        {"type": "response.failed", "response": {"status": "failed", "error": {"code": "x", "message": OPENAI_401}}}
    )
    assert SECRETS[0] not in str(relabelled)
    _, result = result_from_response(
        {"id": "resp_1", "status": "failed", "output": [], "error": {"code": "server_error", "message": OPENAI_401}}
    )
    assert SECRETS[0] not in str(result)


async def test_a_refused_start_a_refused_poll_and_their_logs_quote_no_key(monkeypatch, caplog):
    caplog.set_level(logging.INFO)
    w = world(monkeypatch)
    w.backend.fail["start"] = [classify(_status_error(401, OPENAI_401))]
    with pytest.raises(UpstreamError) as refused:
        await w.services.starter.start(RunRequest(input="x"))
    assert "Incorrect API key provided" in refused.value.message and SECRETS[0] not in refused.value.message
    run = (await w.services.starter.start(RunRequest(input="x"))).run
    w.backend.fail["observe"] = [classify(_status_error(401, OPENAI_401))]
    await w.drain_polls()
    failed = await w.run(run.id)
    assert failed.status == "failed" and "Incorrect API key" in failed.result["error"]["message"]
    assert SECRETS[0] not in str(failed.result) and SECRETS[0] not in caplog.text
