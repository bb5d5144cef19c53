"""The official `openai` SDK (sync and async, OpenAI and AzureOpenAI) against the facade."""
from __future__ import annotations

import asyncio
import time

import openai
import pytest

from ..stack import FACADE_KEYS
from .conftest import MODEL, emulator_text, knobs, provider_response


def test_background_create_then_poll_until_the_terminal_response(client, stack):
    created = client.responses.create(model=MODEL, input="Explain queues.", background=True,
                                      metadata=knobs(1500, 240))
    assert created.id.startswith("run_") and created.status in ("queued", "in_progress")
    assert created.background is True and created.output == [] and created.metadata == knobs(1500, 240)
    response = created
    while response.status in ("queued", "in_progress"):
        time.sleep(0.2)
        response = client.responses.retrieve(created.id)
    assert response.status == "completed" and response.id == created.id
    provider = provider_response(stack, created.id)
    assert response.output_text == emulator_text(stack, provider["id"]) and len(response.output_text) == 240
    assert response.usage.output_tokens > 0 and response.completed_at is not None


async def test_async_client_foreground_create_answers_the_terminal_response(aclient, stack):
    response = await aclient.responses.create(model=MODEL, input="quick one", metadata=knobs(800, 50))
    assert response.status == "completed" and len(response.output_text) == 50
    again = await aclient.responses.retrieve(response.id)
    assert again.output_text == response.output_text
