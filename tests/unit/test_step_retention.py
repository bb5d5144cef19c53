"""What a step holds must not outlive it. asyncio copies the current context into every callback it schedules,
the reader of each new connection among them, so a connection opened during a step (a storage, provider or
webhook client filling its keep-alive pool) keeps that step's context for as long as the connection lives; and
pooled connections live as long as traffic flows (aiohttp and httpx hand out the oldest idle one first, so none
idles long enough to be closed). Found by the soak (bench/soak.py): pooled connections kept the runs (their
inputs and outputs) of the steps that had opened them."""

from __future__ import annotations

import asyncio
import gc
import weakref
from types import SimpleNamespace

from shared import telemetry


class _Run(SimpleNamespace):  # SimpleNamespace itself takes no weak reference
    pass


async def test_a_connection_opened_during_a_step_does_not_keep_the_steps_run():
    server = await asyncio.start_server(lambda reader, writer: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    run = _Run(
        id="run_0123456789abcdef01234567",
        session_id=None,
        response_id=None,
        traceparent="",
        tracestate="",
        result={"output_text": "x" * 1_000_000},
    )
    gone = weakref.ref(run)
    with telemetry.run_step("a step that opens a connection", run, logger="tests"):
        _, writer = await asyncio.open_connection("127.0.0.1", port)  # a pool would keep it after the step
    del run
    gc.collect()
    try:
        assert gone() is None, "the idle connection's reader still holds the step's run"
    finally:
        writer.close()
        server.close()
        await server.wait_closed()
