"""Fixtures for the emulator tests: one shared emulator (thread) plus official SDK clients."""

from __future__ import annotations

import httpx
import openai
import pytest

from local.emulator import EmulatorServer
from tests.schemas import WireRecorder

SCALE = 0.02  # the default 2000 ms run takes 40 ms


@pytest.fixture(scope="session")
def emu() -> EmulatorServer:
    server = EmulatorServer(port=0, time_scale=SCALE).start_in_thread()
    yield server
    server.stop()


@pytest.fixture
def client(emu: EmulatorServer) -> openai.OpenAI:
    with openai.OpenAI(base_url=emu.base_url, api_key="test-key") as c:
        yield c


@pytest.fixture
async def aclient(emu: EmulatorServer) -> openai.AsyncOpenAI:
    async with openai.AsyncOpenAI(base_url=emu.base_url, api_key="test-key") as c:
        yield c


@pytest.fixture
def wire() -> WireRecorder:
    """Records every reply the w-clients read, for tests.schemas validation (wire.assert_valid())."""
    return WireRecorder()


@pytest.fixture
def wclient(emu: EmulatorServer, wire: WireRecorder) -> openai.OpenAI:
    with openai.OpenAI(base_url=emu.base_url, api_key="k", http_client=wire.sync_client()) as c:
        yield c


@pytest.fixture
async def awclient(emu: EmulatorServer, wire: WireRecorder) -> openai.AsyncOpenAI:
    async with openai.AsyncOpenAI(base_url=emu.base_url, api_key="k", http_client=wire.async_client()) as c:
        yield c


def admin(server: EmulatorServer, method: str, path: str, **kw) -> dict:
    """Call an /_emulator endpoint with plain httpx."""
    r = httpx.request(method, f"{server.base_url}/_emulator/{path}", timeout=30, **kw)
    r.raise_for_status()
    return r.json()


def record(server: EmulatorServer, resp_id: str) -> dict:
    rows = [r for r in admin(server, "GET", "responses")["data"] if r["id"] == resp_id]
    assert len(rows) == 1
    return rows[0]
