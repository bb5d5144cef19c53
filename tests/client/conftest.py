"""Helpers for the client tests: an AsyncClient on the local stack, emulator knobs, and the
reference event list of a run (read with the plain SSE reader in tests/sse.py, not with the client)."""

from __future__ import annotations

import httpx
import pytest
from bgruns import AsyncClient

from .. import sse
from ..stack import FUNCTION_KEY, KEY_HEADERS


def emulated(duration_ms: int, chars: int = 300) -> dict[str, str]:
    """Metadata that steers the emulator: how long the run takes and how much text it writes."""
    return {"emulator_duration_ms": str(duration_ms), "emulator_output_chars": str(chars)}


def reference_events(base_url: str, run_id: str) -> list[tuple[int, str, str]]:
    """(sequence number, type, delta) of every numbered event of a run's stream, from its start."""
    with httpx.Client(base_url=base_url, timeout=30, headers=KEY_HEADERS) as http:
        events = sse.read(http, "GET", f"/api/runs/{run_id}/stream")
    return [(e.id, e.event, e.delta) for e in events if e.id is not None]


@pytest.fixture
async def client(stack):
    async with AsyncClient(stack.host.base_url, function_key=FUNCTION_KEY, poll_initial=0.2) as instance:
        yield instance
