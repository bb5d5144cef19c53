"""Ending runs on fakes: terminal is sticky, cancels tell the truth, follow-ups happen once."""
from __future__ import annotations

import pytest

from shared.errors import Unavailable, UpstreamError
from shared.provider import ProviderError
from shared.runs.requests import RunRequest

from .fakes import world


async def start(w, **fields):
    return (await w.services.starter.start(RunRequest(input="hi", **fields))).run


async def test_a_cancel_racing_a_completion_cannot_be_undone(monkeypatch):
    w = world(monkeypatch)
    run = await start(w)
    message = w.poll_queue.take()[0]
    cancelled = await w.services.canceller.cancel(run.id)
    assert cancelled.status == "cancelled"
    w.backend.responses[run.response_id].complete("too late")
    assert await w.services.poll_step.handle(message) == "already-terminal"
    assert (await w.run(run.id)).status == "cancelled"


async def test_a_completion_saved_first_wins_over_a_cancel_in_flight(monkeypatch):
    w = world(monkeypatch)
    run = await start(w, webhook_url="http://127.0.0.1:9/hook")
    message = w.poll_queue.take()[0]

    async def completes_first():
        w.backend.before.pop("cancel")
        w.backend.responses[run.response_id].complete("first")
        await w.services.poll_step.handle(message)

    w.backend.before["cancel"] = completes_first
    ended = await w.services.canceller.cancel(run.id)
    assert ended.status == "completed" and ended.result["output_text"] == "first"
    assert len(w.webhook_queue.take()) == 1  # one event for one ending


async def test_a_provider_refusing_the_cancel_is_reported_and_the_run_goes_on(monkeypatch):
    # The defect: a 401/403/400 from the provider's cancel was swallowed and the run reported cancelled.
    w = world(monkeypatch)
    run = await start(w)
    w.backend.fail["cancel"] = [ProviderError(transient=False, status=403, message="not allowed")]
    with pytest.raises(UpstreamError) as refused:
        await w.services.canceller.cancel(run.id)
    assert "403" in refused.value.message and "not allowed" in refused.value.message
    assert refused.value.code == "cancel_refused"
    assert (await w.run(run.id)).is_active
    w.backend.fail["cancel"] = [ProviderError(transient=True, status=503, message="down", retry_after=4)]
    with pytest.raises(Unavailable) as unavailable:
        await w.services.canceller.cancel(run.id)
    assert unavailable.value.retry_after == 4 and (await w.run(run.id)).is_active


async def test_a_response_the_provider_forgot_is_cancelled_here(monkeypatch):
    w = world(monkeypatch)
    run = await start(w)
    del w.backend.responses[run.response_id]
    assert (await w.services.canceller.cancel(run.id)).status == "cancelled"


async def test_a_cancel_of_an_ended_run_changes_nothing(monkeypatch):
    w = world(monkeypatch)
    w.backend.finish_at_once = True
    run = await start(w)
    assert (await w.services.canceller.cancel(run.id)).status == "completed"
    assert w.backend.count("cancel") == 0


async def test_ending_advances_the_session_and_records_the_retention_date(monkeypatch):
    w = world(monkeypatch)
    session = await w.services.starter.open_session()
    run = await start(w, session_id=session.id)
    w.backend.responses[run.response_id].complete()
    await w.drain_polls()
    state, _ = await w.services.reader.session(session.id)
    assert state.active_run_id is None and state.last_response_id == run.response_id
    expiry = [key for key in w.index.rows if key[0].startswith("expires-") and key[1] == f"run:{run.id}"]
    assert len(expiry) == 1 and w.index.entity("open", run.id) is None
