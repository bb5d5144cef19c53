"""The server ends streams before the front end's limit with a `reconnect` event; the client follows
it with the token inside, and the caller's loop sees one stream. A second host with
STREAM_MAX_SECONDS=2 (sharing storage, queues and the token key with the main one)."""

from __future__ import annotations

import pytest
from bgruns import AsyncClient

from .conftest import emulated, reference_events


@pytest.fixture(scope="module")
def rotating_host(stack):
    host = stack.start_host("rotation", STREAM_MAX_SECONDS="2")
    yield host
    host.stop()


async def test_stream_rotation_is_resumed_transparently(rotating_host, stack):
    async with AsyncClient(rotating_host.base_url, function_key=stack.function_key) as client:
        stream = client.run("A long answer, please.", stream=True, options={"metadata": emulated(5000, 400)})
        updates = [update async for update in stream]
    final = updates[-1].response
    assert stream.rotations >= 2 and stream.reconnects == 0
    assert final.status == "completed" and "".join(u.text for u in updates) == final.text
    assert "reconnect" not in {u.type for u in updates}
    seqs = [u.sequence_number for u in updates]
    assert seqs == [seq for seq, _, _ in reference_events(stack.host.base_url, final.run_id)]
