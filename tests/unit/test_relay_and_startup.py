"""Resources are released: a provider stream the relay never read, clients built by a failed cold start."""

from __future__ import annotations

import pytest

from shared import composition
from shared.runs.requests import RunRequest

from .fakes import world


class RecordingStream:
    def __init__(self) -> None:
        self.closed = False

    def __aiter__(self):
        return self

    async def __anext__(self):
        raise StopAsyncIteration

    async def close(self) -> None:
        self.closed = True


async def test_a_create_stream_is_closed_when_the_client_leaves_at_once(monkeypatch):
    w = world(monkeypatch)
    run = (await w.services.starter.start(RunRequest(input="x"))).run
    stream = RecordingStream()
    events = w.services.relays.relay(run, -1, stream).events()
    assert await events.__anext__() == b"retry: 1000\n\n"
    await events.aclose()  # the client disconnected before any provider event was read
    assert stream.closed


async def test_a_failed_cold_start_closes_the_clients_it_built(monkeypatch):
    closed = []

    class Storage:
        async def ensure_resources(self):
            raise ConnectionError("storage unreachable")

        async def close(self):
            closed.append("storage")

    class Provider:
        async def close(self):
            closed.append("provider")

    monkeypatch.setenv("AzureWebJobsStorage", "UseDevelopmentStorage=true")
    monkeypatch.setenv("RUN_TOKEN_KEY", "k" * 48)
    monkeypatch.setattr(composition, "open_storage", lambda settings: Storage())
    monkeypatch.setattr(composition, "open_provider", lambda settings: Provider())
    monkeypatch.setattr(composition, "_services", None)
    with pytest.raises(ConnectionError):
        await composition.services()
    assert sorted(closed) == ["provider", "storage"] and composition._services is None
