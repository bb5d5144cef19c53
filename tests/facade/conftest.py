"""The Responses API facade on the local stack, driven by the official clients unchanged but for `base_url` and
`api_key`. Every reply they read is recorded and validated against OpenAI's published schemas."""

from __future__ import annotations

import openai
import pytest

from ..schemas import WireRecorder
from ..stack import FACADE_KEYS

MODEL = "gpt-4.1-mini"


def knobs(duration_ms: int, chars: int = 200, **more: str) -> dict[str, str]:
    """Metadata that steers the emulator (the service passes the caller's metadata through)."""
    return {"emulator_duration_ms": str(duration_ms), "emulator_output_chars": str(chars), **more}


@pytest.fixture
def recorder() -> WireRecorder:
    wire = WireRecorder()
    yield wire
    wire.assert_valid(at_least=0)  # whatever a test read, the facade sent it in OpenAI's shapes


@pytest.fixture
def base_url(stack) -> str:
    return f"{stack.host.base_url}/api/v1"


@pytest.fixture
def client(base_url, recorder) -> openai.OpenAI:
    with openai.OpenAI(
        base_url=base_url, api_key=FACADE_KEYS["alice"], http_client=recorder.sync_client(), max_retries=0
    ) as instance:
        yield instance


@pytest.fixture
async def aclient(base_url, recorder) -> openai.AsyncOpenAI:
    async with openai.AsyncOpenAI(
        base_url=base_url, api_key=FACADE_KEYS["alice"], http_client=recorder.async_client(), max_retries=0
    ) as instance:
        yield instance


def provider_response(stack, run_id: str) -> dict:
    """The emulator's record of the run's one provider response (with its counters)."""
    responses = stack.provider_responses(run_id)
    assert len(responses) == 1, responses
    return responses[0]


def emulator_text(stack, provider_id: str) -> str:
    return openai.OpenAI(base_url=stack.emulator.base_url, api_key="x").responses.retrieve(provider_id).output_text
