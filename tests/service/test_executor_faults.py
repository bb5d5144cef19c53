"""A host SIGKILLed while its executor streams a model call: the next attempt starts (the poll chain's
watchdog queues the run again, as it must on Azure where the dead host's message stays invisible for 10
minutes), followers see an explicit restart and no gap or repeat, one webhook is sent, and the run's output is
the last attempt's. Its own module: it kills a host, and no other executor host may take the run meanwhile."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from .. import sse
from ..stack import EXECUTOR_HOST


@pytest.fixture
def killable(stack):
    host = stack.start_host("executor-killed", **EXECUTOR_HOST, EXECUTOR_STALE_SECONDS="3")
    yield host
    host.stop()


def test_a_host_killed_mid_generation_restarts_the_output_and_sends_one_webhook(stack, killable):
    name = f"killed-{time.time_ns()}"
    client = httpx.Client(base_url=killable.base_url, timeout=30, headers=stack.key_headers)
    body = {
        "input": "survive this",
        "stream": True,
        "webhook_url": stack.hook_url(name),
        "metadata": {"emulator_duration_ms": "6000", "emulator_output_chars": "600", "emulator_deltas": "60"},
    }
    head = sse.read(client, "POST", "/api/runs", json=body, limit=12)
    assert sum(1 for e in head if e.event == "output_text.delta") >= 3
    run_id = head[0].data["run_id"]
    killable.kill()  # SIGKILL: the invocation, its model call and the stream it served die together
    killable.restart()
    # The client resumes where its stream broke, on whichever instance answers (here the session host).
    tail = sse.read(stack.client, "GET", f"/api/runs/{run_id}/stream", headers={"Last-Event-ID": str(head[-1].id)})
    events = head + tail
    ids = [e.id for e in events if e.id is not None]
    assert ids == list(range(ids[0], ids[0] + len(ids))), "an event is missing or repeated"
    restarts = [e for e in events if e.event == "output_restarted"]
    assert len(restarts) == 1 and restarts[0].data["attempt"] == 2
    final = stack.wait(run_id, timeout=30)
    assert events[-1].event == "run.completed" and final["status"] == "completed"
    last_attempt = "".join(e.delta for e in events[events.index(restarts[0]) + 1 :])
    assert final["output_text"] == last_attempt and len(last_attempt) == 600
    deadline = time.monotonic() + 20
    while not stack.received(name) and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(3)  # a second delivery would have come by now
    deliveries = stack.received(name)
    assert len(deliveries) == 1
    assert json.loads(deliveries[0]["body"])["data"]["output_text"] == last_attempt
