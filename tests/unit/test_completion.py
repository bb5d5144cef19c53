"""Completion without the wait, on fakes: the provider's webhooks in (every refusal case), and watching."""

from __future__ import annotations

import base64
import json
import os
from datetime import UTC, datetime

import pytest
from standardwebhooks import Webhook

from shared.errors import InvalidRequest, Unavailable
from shared.provider import ProviderError
from shared.runs.requests import RunRequest

from .fakes import stream_event, world

SECRET = "whsec_" + base64.b64encode(os.urandom(32)).decode()
OLD_SECRET = "whsec_" + base64.b64encode(os.urandom(32)).decode()


def signed(event: dict, *, secret: str = SECRET, webhook_id: str = "wh_1", age: float = 0.0) -> tuple[bytes, dict]:
    body = json.dumps(event)
    when = datetime.fromtimestamp(int(datetime.now(UTC).timestamp() - age), tz=UTC)
    return body.encode(), {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(when.timestamp())),
        "webhook-signature": Webhook(secret).sign(webhook_id, when, body),
    }


def ended(response_id: str, kind: str = "response.completed") -> dict:
    return {"object": "event", "id": "evt_1", "type": kind, "created_at": 1, "data": {"id": response_id}}


async def pushed_run(monkeypatch, **fields):
    w = world(monkeypatch, PROVIDER_WEBHOOK_SECRETS=f"{OLD_SECRET} {SECRET}")
    run = (await w.services.starter.start(RunRequest(input="x", webhook_url="http://127.0.0.1:9/h", **fields))).run
    return w, run


async def test_push_is_the_default_with_a_secret_and_polls_only_as_a_slow_safety_net(monkeypatch):
    w, run = await pushed_run(monkeypatch)
    assert w.settings.completion.strategy == "push"
    # One early look (POLL_INITIAL_DELAY_SECONDS): the provider sends no event when it begins a run
    assert 0.8 <= w.poll_queue.sent[-1].delay <= 1.2
    w.backend.responses[run.response_id].status = "in_progress"
    assert await w.services.poll_step.handle(w.poll_queue.take()[0]) == "pending"
    assert (await w.run(run.id)).status == "in_progress"  # a caller can tell working from waiting
    assert 24 <= w.poll_queue.sent[-1].delay <= 36  # then SAFETY_POLL_INITIAL_SECONDS, not the 1 s of polling


async def test_a_provider_event_ends_its_run_and_sends_the_webhook_at_once(monkeypatch):
    w, run = await pushed_run(monkeypatch)
    w.backend.responses[run.response_id].complete("pushed")
    body, headers = signed(ended(run.response_id))
    assert await w.services.provider_events.receive(body, headers) == "completed"
    final = await w.run(run.id)
    assert final.result["output_text"] == "pushed" and final.webhook.state == "delivered"
    assert w.backend.count("observe") == 1 and len(w.sender.sent) == 1
    assert await w.services.provider_events.receive(body, headers) == "duplicate"
    assert w.backend.count("observe") == 1  # a duplicate does no work
    body, headers = signed(ended(run.response_id), webhook_id="wh_other")
    assert await w.services.provider_events.receive(body, headers) == "already-ended"


async def test_an_event_signed_with_the_previous_secret_is_accepted_during_a_rotation(monkeypatch):
    w, run = await pushed_run(monkeypatch)
    w.backend.responses[run.response_id].complete()
    body, headers = signed(ended(run.response_id), secret=OLD_SECRET)
    assert await w.services.provider_events.receive(body, headers) == "completed"


@pytest.mark.parametrize(
    "case", ["wrong secret", "altered body", "stale timestamp", "no signature", "no id", "not json", "not an event"]
)
async def test_bad_deliveries_are_refused_without_side_effects(monkeypatch, case):
    w, run = await pushed_run(monkeypatch)
    w.backend.responses[run.response_id].complete()
    body, headers = signed(ended(run.response_id))
    if case == "wrong secret":
        body, headers = signed(ended(run.response_id), secret="whsec_" + base64.b64encode(os.urandom(32)).decode())
    elif case == "altered body":
        body = body.replace(b"evt_1", b"evt_2")
    elif case == "stale timestamp":
        body, headers = signed(ended(run.response_id), age=301)
    elif case == "no signature":
        del headers["webhook-signature"]
    elif case == "no id":
        del headers["webhook-id"]
    elif case == "not json":
        body, headers = _signed_raw(b"{not json")
    elif case == "not an event":
        body, headers = _signed_raw(b"[1, 2, 3]")
    rows_before = dict(w.index.rows)
    with pytest.raises(InvalidRequest) as refused:
        await w.services.provider_events.receive(body, headers)
    assert refused.value.code == "invalid_provider_event"
    assert w.index.rows == rows_before and (await w.run(run.id)).is_active and w.backend.count("observe") == 0


def _signed_raw(body: bytes) -> tuple[bytes, dict]:
    when = datetime.now(UTC).replace(microsecond=0)
    return body, {
        "webhook-id": "wh_raw",
        "webhook-timestamp": str(int(when.timestamp())),
        "webhook-signature": Webhook(SECRET).sign("wh_raw", when, body.decode()),
    }


async def test_events_for_responses_that_are_not_ours_or_not_ends_are_acknowledged_and_ignored(monkeypatch):
    w, run = await pushed_run(monkeypatch)
    body, headers = signed(ended("resp_of_another_app"))
    assert await w.services.provider_events.receive(body, headers) == "not-ours"
    body, headers = signed({"type": "batch.completed", "data": {"id": "batch_1"}}, webhook_id="wh_2")
    assert await w.services.provider_events.receive(body, headers) == "ignored"
    assert not [k for k in w.index.rows if k[0].startswith("seen-")] and w.backend.count("observe") == 0
    assert (await w.run(run.id)).status == run.status  # our own run went on untouched


async def test_a_provider_hiccup_releases_the_event_so_the_providers_retry_is_handled(monkeypatch):
    w, run = await pushed_run(monkeypatch)
    w.backend.responses[run.response_id].complete()
    body, headers = signed(ended(run.response_id))
    w.backend.fail["observe"] = [ProviderError(transient=True, status=503, message="down")]
    with pytest.raises(Unavailable):
        await w.services.provider_events.receive(body, headers)
    assert await w.services.provider_events.receive(body, headers) == "completed"


async def test_an_event_ahead_of_the_providers_state_makes_the_chain_look_again_soon(monkeypatch):
    w, run = await pushed_run(monkeypatch)
    body, headers = signed(ended(run.response_id))
    assert await w.services.provider_events.receive(body, headers) == "still-running"
    assert w.poll_queue.sent[-1].delay <= 1.0


async def test_a_lost_provider_webhook_delays_a_run_but_never_loses_it(monkeypatch):
    w, run = await pushed_run(monkeypatch)
    w.backend.responses[run.response_id].complete("found by the safety net")
    assert await w.drain_polls() == ["completed"]  # no event ever came
    assert (await w.run(run.id)).result["output_text"] == "found by the safety net"


async def test_watching_returns_at_the_terminal_event_and_resumes_where_a_window_ended(monkeypatch):
    w = world(monkeypatch, COMPLETION_STRATEGY="watch", WATCH_WINDOW_SECONDS="0.3")
    run = (await w.services.starter.start(RunRequest(input="x"))).run
    assert w.poll_queue.sent[-1].delay == 0  # the first window starts at once
    response = w.backend.responses[run.response_id]
    w.backend.streams[run.response_id] = [stream_event("response.created", 0), stream_event("response.in_progress", 1)]
    w.backend.hang = 5  # the response goes on past the window
    response.status = "in_progress"
    assert await w.services.poll_step.handle(w.poll_queue.take()[0]) == "pending"
    assert (await w.run(run.id)).watch_position == 1 and w.poll_queue.sent[-1].delay == 0
    response.complete("watched")
    w.backend.streams[run.response_id].append(stream_event("response.completed", 2, response))
    w.backend.hang = 0
    retrieves = w.backend.count("observe")
    assert await w.services.poll_step.handle(w.poll_queue.take()[0]) == "completed"
    assert w.backend.count("observe") == retrieves  # ended by the stream, without a retrieve
    assert (await w.run(run.id)).result["output_text"] == "watched"


async def test_watching_a_response_that_cannot_stream_falls_back_to_asking(monkeypatch):
    w = world(monkeypatch, COMPLETION_STRATEGY="watch")
    run = (await w.services.starter.start(RunRequest(input="x"))).run
    w.backend.responses[run.response_id].complete()
    assert await w.services.poll_step.handle(w.poll_queue.take()[0]) == "completed"


async def test_a_provider_cancelled_event_for_a_run_past_its_deadline_ends_it_expired(monkeypatch):
    w, run = await pushed_run(monkeypatch, deadline_seconds=10)
    w.clock.advance(11)
    w.backend.responses[run.response_id].status = "cancelled"  # the deadline's own cancel, its step gone
    body, headers = signed(ended(run.response_id, "response.cancelled"))
    assert await w.services.provider_events.receive(body, headers) == "expired"
    assert (await w.run(run.id)).status == "expired"
