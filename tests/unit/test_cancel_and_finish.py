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


async def test_a_cancel_stops_the_response_at_the_provider_and_ends_the_run_cancelled(monkeypatch, caplog):
    from shared.runs.results import cancelled_result

    w = world(monkeypatch)
    run = await start(w)
    with caplog.at_level("INFO", logger="bgruns.cancelling"):
        ended = await w.services.canceller.cancel(run.id)
    assert ("cancel", run.response_id) in w.backend.calls
    assert w.backend.responses[run.response_id].status == "cancelled"
    stored = await w.services.reader.get(run.id)
    assert ended.status == stored.status == "cancelled" and stored.result == cancelled_result()
    assert [e["type"] for e in w.timeline(stored)][-2:] == ["cancel_requested", "finished"]
    (line,) = [r for r in caplog.records if getattr(r, "step", None) == "cancel run"]
    assert line.name == "bgruns.cancelling" and line.run_id == run.id


async def test_a_run_that_finished_before_the_cancel_landed_keeps_its_real_result(monkeypatch):
    w = world(monkeypatch)
    run = await start(w)

    async def it_finishes_first():
        w.backend.responses[run.response_id].complete("the answer")

    w.backend.before["cancel"] = it_finishes_first
    ended = await w.services.canceller.cancel(run.id)
    stored = await w.services.reader.get(run.id)
    assert ended.status == stored.status == "completed" and stored.result["output_text"] == "the answer"


async def test_a_run_still_starting_is_cancelled_without_asking_the_provider(monkeypatch):
    w = world(monkeypatch)
    run = await start(w)
    await w.runs.update_entity({"PartitionKey": run.id, "RowKey": "run", "response_id": ""})
    assert (await w.services.canceller.cancel(run.id)).status == "cancelled"
    assert w.backend.count("cancel") == 0


@pytest.mark.parametrize("transient, entry", [(False, "cancel_refused"), (True, "cancel_failed")])
async def test_a_cancel_the_provider_did_not_take_is_noted_in_the_runs_timeline(monkeypatch, transient, entry):
    w = world(monkeypatch)
    run = await start(w)
    w.backend.fail["cancel"] = [ProviderError(transient=transient, status=503 if transient else 403, message="no")]
    with pytest.raises((Unavailable, UpstreamError)):
        await w.services.canceller.cancel(run.id)
    stored = await w.services.reader.get(run.id)
    noted = [e for e in w.timeline(stored) if e["type"] not in ("created", "provider_accepted", "poll")]
    assert noted == [
        {"at": w.clock.now, "type": "cancel_requested"},
        {"at": w.clock.now, "type": entry, "provider_status_code": 503 if transient else 403},
    ]


async def test_a_refused_cancel_says_why_in_the_error(monkeypatch):
    w = world(monkeypatch)
    run = await start(w)
    cases = [
        (
            ProviderError(transient=True, status=503, message="down"),
            ("provider_unavailable", "Could not cancel at the provider: down", None, 2),
        ),
        (
            ProviderError(transient=True, status=None, message="timeout", retry_after=0.2),
            ("provider_unavailable", "Could not cancel at the provider: timeout", None, 1),
        ),
        (
            ProviderError(transient=False, status=403, message="not allowed"),
            (
                "cancel_refused",
                "The provider refused to cancel the run (403): not allowed. The run was not cancelled and goes on.",
                None,
                None,
            ),
        ),
    ]
    for error, expected in cases:
        w.backend.fail["cancel"] = [error]
        with pytest.raises((Unavailable, UpstreamError)) as refused:
            await w.services.canceller.cancel(run.id)
        got = refused.value
        assert (got.code, got.message, got.param, got.retry_after) == expected


async def test_a_webhook_receiver_that_hangs_holds_the_step_that_ended_the_run_no_longer_than_its_budget(monkeypatch):
    import asyncio

    from shared.runs import ending

    monkeypatch.setattr(ending, "INLINE_WEBHOOK_BUDGET_SECONDS", 0.05)
    w = world(monkeypatch)
    run = await start(w, webhook_url="http://127.0.0.1:9/hook")
    w.backend.responses[run.response_id].complete()
    receiver = asyncio.Event()

    async def hangs(*_, **__):
        await receiver.wait()  # never set: the receiver does not answer

    w.sender.send = hangs
    assert await asyncio.wait_for(w.drain_polls(), 5) == ["completed"]
    ended = await w.run(run.id)
    assert ended.status == "completed" and ended.webhook.is_pending  # the inline attempt was given up
    (safety_net,) = w.webhook_queue.sent  # and the queued message delivers it later
    assert safety_net.message["run_id"] == run.id and safety_net.delay > 0


@pytest.mark.parametrize("status, ends", [("cancelled", "expired"), ("completed", "completed")])
async def test_a_plain_json_response_cancelled_past_the_deadline_expires_the_run_as_an_sdk_one_does(
    monkeypatch, status, ends
):
    # The executor hands its terminal response over as plain JSON; the deadline rule must read its status too.
    from shared.runs.ending import ProviderEnded, verdict

    w = world(monkeypatch)
    run = await start(w, deadline_seconds=10)
    w.clock.advance(11)
    got, result = verdict(run, ProviderEnded({"id": run.response_id, "status": status, "output": []}))
    assert got == ends
    if ends == "expired":
        assert result["error"]["message"] == "The run did not finish within its deadline of 10 s."
