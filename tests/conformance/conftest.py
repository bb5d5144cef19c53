"""The executor against real OpenAI-compatible servers nobody here wrote: LiteLLM proxy (its own venv) serving the
scripted model of scripted_provider.py, and a local stack of its own whose host runs executor runs against the
proxy (`MODEL_PROVIDER=openai_compatible`). Both live for this folder's tests only. The proxy imports for 10-60 s;
the stack starts meanwhile."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import openai
import pytest

from local.azurite import REPO_ROOT
from local.stack import LocalStack

from ..facade import conftest as facade_fixtures
from ..stack import EXECUTOR_HOST, FUNCTION_KEY, MASTER_KEY, TEST_ENV, WEBHOOK_SECRETS, Stack
from .servers import LiteLLMProxy

# The facade's SDK fixtures, on base_url below (bound by name, as pytest finds fixtures).
client = facade_fixtures.client
recorder = facade_fixtures.recorder

WORK_DIR = REPO_ROOT / ".azurite" / f"model-servers-{os.getpid()}"  # their files and logs, beside the stacks' logs
MARKER = "#script"  # scripted_provider.MARKER (that module imports LiteLLM, which only its venv has)


def scripted(prompt: str = "Hello", **script) -> tuple[str, str]:
    """A script id of its own and the prompt that carries the script to the scripted model."""
    script_id = script.setdefault("id", f"s{time.time_ns()}")
    return script_id, f"{prompt} {MARKER} {json.dumps(script)}"


def words(count: int, prefix: str = "w") -> str:
    """A text whose every piece is distinct, so a gap or a repeat shows."""
    return " ".join(f"{prefix}{i}" for i in range(count))


# `strict` is given: the facade echoes a tool as it was given, and OpenAI's Response schema requires it.
TOOLS = [
    {
        "type": "function",
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        "strict": False,
    }
]
CHAT_TOOLS = [{"type": "function", "function": {k: v for k, v in TOOLS[0].items() if k != "type"}}]


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


def plain(messages: list[dict]) -> list[dict]:
    """Messages without their null fields (LiteLLM drops an assistant message's `content: null`)."""
    return [{k: v for k, v in message.items() if v is not None} for message in messages]


@pytest.fixture(scope="package")
def litellm() -> LiteLLMProxy:
    proxy = LiteLLMProxy(WORK_DIR / "litellm").start()
    yield proxy
    proxy.stop()


@contextmanager
def executor_stack(name: str, server) -> Iterator[Stack]:
    """A local stack of its own (its own Azurite, so no other test's host takes its queue messages) whose host runs
    executor runs against `server` (servers.py; started, and waited for here once the stack is up)."""
    env = {
        **TEST_ENV,
        **EXECUTOR_HOST,
        "MODEL_PROVIDER": "openai_compatible",
        "OPENAI_COMPATIBLE_BASE_URL": server.base_url,
        "OPENAI_COMPATIBLE_API_KEY": server.key,
        "DEFAULT_MODEL": server.model,
    }
    local = LocalStack(name, env=env, webhook_secrets=WEBHOOK_SECRETS, function_key=FUNCTION_KEY, master_key=MASTER_KEY)
    local.start()
    try:
        server.wait_ready()
        stack = Stack(local)
        yield stack
        stack.close()
    finally:
        local.stop()


@pytest.fixture(scope="package")
def conformance(litellm) -> Stack:
    with executor_stack("conformance", litellm) as stack:
        yield stack


@pytest.fixture(scope="module")
def responses_host(conformance) -> httpx.Client:
    """A second host of the stack with EXECUTOR_API=responses (LiteLLM's own Responses API, no background mode)."""
    host = conformance.start_host("conformance-responses", EXECUTOR_API="responses")
    with httpx.Client(base_url=host.base_url, timeout=30, headers=conformance.key_headers) as client:
        yield client
    host.stop()


@pytest.fixture
def base_url(conformance) -> str:
    """Where the facade's `client` fixture (the official SDK, every reply schema-checked) points here."""
    return f"{conformance.host.base_url}/api/v1"


def wait_response(client: openai.OpenAI, response_id: str, timeout: float = 60):
    """Retrieve until the Response is no longer queued or in progress."""
    deadline = time.monotonic() + timeout
    while True:
        response = client.responses.retrieve(response_id)
        if response.status not in ("queued", "in_progress") or time.monotonic() > deadline:
            return response
        time.sleep(0.2)
