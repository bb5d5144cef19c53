"""Retention on fakes: what is deleted, what is kept, and what a caller sees afterwards."""

from __future__ import annotations

import pytest

from shared.errors import NotFound
from shared.runs.requests import RunRequest

from .fakes import world

DAY = 86400


async def test_ended_runs_are_deleted_with_their_blobs_after_the_retention_period(monkeypatch):
    w = world(monkeypatch, RETENTION_DAYS="30")
    w.backend.finish_at_once = True
    ended = (await w.services.starter.start(RunRequest(input="e" * 50_000))).run
    w.backend.finish_at_once = False
    active = (await w.services.starter.start(RunRequest(input="still going"), idempotency_key="k")).run
    token = w.services.views.token(ended.id)
    assert [name.rsplit("-", 1)[0] for name in w.blobs.blobs] == [f"{ended.id}/request"]  # the 50,000 e
    w.clock.advance(29 * DAY)
    assert await w.services.purger.purge() == {"idempotency_keys": 1}
    assert (await w.run(ended.id)).status == "completed"
    w.clock.advance(2 * DAY)
    assert (await w.services.purger.purge())["runs"] == 1
    assert not w.blobs.blobs and (await w.run(active.id)).is_active
    with pytest.raises(NotFound) as by_token:
        await w.services.reader.get_by_token(token)
    assert by_token.value.code == "expired" and "30 days" in by_token.value.message
    with pytest.raises(NotFound) as by_id:
        await w.services.reader.get(ended.id)
    assert by_id.value.code == "expired"
    with pytest.raises(NotFound) as never:
        await w.services.reader.get("run_" + "0" * 24)
    assert never.value.code == "not_found"
    assert not w.tables["idempotency"].rows


async def test_a_run_whose_webhook_is_still_pending_is_kept_until_it_is_done(monkeypatch):
    w = world(monkeypatch, RETENTION_DAYS="1")
    w.backend.finish_at_once = True
    run = (await w.services.starter.start(RunRequest(input="x", webhook_url="http://127.0.0.1:9/h"))).run
    w.clock.advance(3 * DAY)
    assert not (await w.services.purger.purge()).get("runs")
    assert (await w.run(run.id)).webhook.is_pending
    await w.services.outbox.deliver(w.webhook_queue.take()[0])
    w.clock.advance(2 * DAY)
    assert (await w.services.purger.purge())["runs"] == 1


async def test_idle_sessions_are_deleted_and_used_ones_kept(monkeypatch):
    w = world(monkeypatch, RETENTION_DAYS="2")
    idle = await w.services.starter.open_session()
    used = await w.services.starter.open_session()
    w.clock.advance(1.5 * DAY)
    run = (await w.services.starter.start(RunRequest(input="x", session_id=used.id))).run
    w.backend.responses[run.response_id].complete()
    await w.drain_polls()
    w.clock.advance(1.5 * DAY)
    assert (await w.services.purger.purge()).get("sessions") == 1
    with pytest.raises(NotFound):
        await w.services.reader.session(idle.id)
    assert (await w.services.reader.session(used.id))[0].last_response_id == run.response_id
    w.clock.advance(3 * DAY)
    assert (await w.services.purger.purge()).get("sessions") == 1
    with pytest.raises(NotFound):
        await w.services.reader.session(used.id)
