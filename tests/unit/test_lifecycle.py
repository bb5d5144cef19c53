"""Ending a run on fakes: one end whoever races, the follow-ups and their dates, the webhook's first message,
the run's trace context carried to its webhook."""

from __future__ import annotations

from datetime import UTC

from shared import telemetry
from shared.runs.index import RunIndex
from shared.runs.lifecycle import RunLifecycle
from shared.runs.poll_chain import PollMessage
from shared.runs.requests import RunRequest
from shared.runs.results import cancelled_result, failure_result
from shared.runs.sessions import SessionStore
from shared.runs.store import RunStore
from shared.runs.webhook_state import WebhookMessage

from .fakes import world

DAY = 86400
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
TRACESTATE = "vendor=opaque"
HOOK = "http://127.0.0.1:9/hook"


async def start(w, **fields):
    return (await w.services.starter.start(RunRequest(input="hi", **fields))).run


def store(w) -> RunStore:
    return RunStore(w.runs, w.blobs)


def lifecycle(w) -> RunLifecycle:
    """The world's lifecycle as composition builds it, on the same tables and queue."""
    settings = w.settings
    return RunLifecycle(
        store(w),
        SessionStore(w.tables["sessions"]),
        RunIndex(w.index),
        w.webhook_queue,
        settings.retention_seconds,
        inline_safety_delay=settings.webhook_timeout + 5,
    )


def expiry_day(w, kind: str, ident: str) -> str:
    (day,) = [partition for partition, row in w.index.rows if row == f"{kind}:{ident}"]
    return day


def day_of(at: float) -> str:
    from datetime import datetime

    return "expires-" + datetime.fromtimestamp(at, tz=UTC).strftime("%Y%m%d")


async def test_a_finish_that_loses_to_another_ending_returns_the_winners_run(monkeypatch):
    w = world(monkeypatch)
    run = await start(w)
    stale = await w.run(run.id)
    winner = await lifecycle(w).finish(await w.run(run.id), "failed", failure_result("first", "the first end"))
    ended = await lifecycle(w).finish(stale, "cancelled", cancelled_result())
    assert (ended.status, ended.result["error"]["code"]) == ("failed", "first")
    assert ended.completed_at == winner.completed_at
    stored = await w.services.reader.get(run.id)
    assert stored.status == "failed" and stored.result["error"]["code"] == "first"


async def test_a_finish_that_loses_to_a_write_that_did_not_end_the_run_still_ends_it(monkeypatch):
    w = world(monkeypatch)
    run = await start(w)
    stale = await w.run(run.id)
    noted = await w.run(run.id)
    telemetry.record(noted, "cancel_failed")  # another writer only added a timeline note
    await store(w).save(noted)
    ended = await lifecycle(w).finish(stale, "cancelled", cancelled_result())
    assert ended.status == "cancelled" and (await w.run(run.id)).status == "cancelled"


async def test_a_finish_of_a_run_deleted_meanwhile_returns_the_run_as_asked(monkeypatch):
    w = world(monkeypatch)
    run = await start(w)
    stale = await w.run(run.id)
    await store(w).purge(run.id)
    ended = await lifecycle(w).finish(stale, "cancelled", cancelled_result())
    assert ended.id == run.id and await store(w).get(run.id) is None


async def test_a_finish_without_an_inline_attempt_queues_the_webhook_at_once(monkeypatch):
    w = world(monkeypatch)
    run = await start(w, webhook_url=HOOK)
    await lifecycle(w).finish(await w.run(run.id), "cancelled", cancelled_result())
    (queued,) = w.webhook_queue.sent
    assert queued.delay == 0 and queued.message["run_id"] == run.id


async def test_a_finish_with_an_inline_attempt_queues_only_a_delayed_safety_net(monkeypatch):
    w = world(monkeypatch)
    run = await start(w, webhook_url=HOOK)
    await lifecycle(w).finish(await w.run(run.id), "cancelled", cancelled_result(), inline_webhook=True)
    (queued,) = w.webhook_queue.sent
    assert queued.delay == w.settings.webhook_timeout + 5


async def test_the_finish_is_in_the_runs_timeline_with_its_status(monkeypatch):
    w = world(monkeypatch)
    run = await start(w)
    await lifecycle(w).finish(await w.run(run.id), "cancelled", cancelled_result())
    entries = w.timeline(await w.run(run.id))
    assert [e["status"] for e in entries if e["type"] == "finished"] == ["cancelled"]


async def test_the_webhook_of_a_run_carries_the_runs_trace_context(monkeypatch):
    w = world(monkeypatch)
    with telemetry.incoming_request("start run", {"traceparent": TRACEPARENT, "tracestate": TRACESTATE}):
        run = await start(w, webhook_url=HOOK)
    assert (run.traceparent, run.tracestate) == (TRACEPARENT, TRACESTATE)
    (poll,) = w.poll_queue.sent
    assert PollMessage.parse(poll.message) == PollMessage(run.id, 1, poll.message["nonce"], TRACEPARENT, TRACESTATE)
    await lifecycle(w).finish(await w.run(run.id), "cancelled", cancelled_result())
    stored = await w.run(run.id)
    assert (stored.webhook.traceparent, stored.webhook.tracestate) == (TRACEPARENT, TRACESTATE)
    (queued,) = w.webhook_queue.take()
    assert queued == {"run_id": run.id, "seq": 0, "traceparent": TRACEPARENT, "tracestate": TRACESTATE}
    assert WebhookMessage.parse(queued) == WebhookMessage(run.id, 0, TRACEPARENT, TRACESTATE)
    assert await w.services.outbox.deliver(queued) == "delivered"
    assert w.sender.headers[-1] == {"traceparent": TRACEPARENT, "tracestate": TRACESTATE}


async def test_an_ended_run_and_its_session_are_kept_for_the_retention_period_from_the_end(monkeypatch):
    w = world(monkeypatch, RETENTION_DAYS="3")
    session = await w.services.starter.open_session()
    run = await start(w, session_id=session.id)
    w.clock.advance(2 * DAY)
    w.backend.responses[run.response_id].complete()
    await w.drain_polls()
    ended = await w.run(run.id)
    assert expiry_day(w, "run", run.id) == day_of(ended.completed_at + 3 * DAY)
    session_days = sorted(p for p, r in w.index.rows if r == f"session:{session.id}")
    assert session_days[-1] == day_of(w.clock.now + 3 * DAY)
    w.clock.advance(2 * DAY)
    await w.services.purger.purge()
    assert (await w.services.reader.session(session.id))[0].last_response_id == run.response_id
    assert (await w.run(run.id)).status == "completed"
    await lifecycle(w).follow_up(await w.run(run.id), send_webhook=False)  # again, later (the sweeper)
    assert expiry_day(w, "run", run.id) == day_of(ended.completed_at + 3 * DAY)  # still dated from its end


async def test_a_follow_up_of_a_run_without_an_end_time_dates_it_from_now(monkeypatch):
    w = world(monkeypatch, RETENTION_DAYS="3")
    run = await start(w)
    await w.runs.update_entity({"PartitionKey": run.id, "RowKey": "run", "status": "failed"})
    w.clock.advance(5 * DAY)
    await lifecycle(w).follow_up(await w.run(run.id), send_webhook=False)
    assert expiry_day(w, "run", run.id) == day_of(w.clock.now + 3 * DAY)


async def test_a_follow_up_queues_a_pending_webhook_at_once_unless_asked_for_a_delay(monkeypatch):
    w = world(monkeypatch)
    run = await start(w, webhook_url=HOOK)
    await lifecycle(w).finish(await w.run(run.id), "cancelled", cancelled_result())
    w.webhook_queue.take()
    await lifecycle(w).follow_up(await w.run(run.id), send_webhook=True)
    assert [s.delay for s in w.webhook_queue.sent] == [0]
    assert w.index.entity("open", run.id) is not None  # the delivery is still pending


async def test_a_run_that_ends_without_a_response_worth_continuing_frees_its_session_and_keeps_the_last(monkeypatch):
    w = world(monkeypatch)
    session = await w.services.starter.open_session()
    first = await start(w, session_id=session.id)
    w.backend.responses[first.response_id].complete()
    await w.drain_polls()
    second = await start(w, session_id=session.id)
    await w.services.canceller.cancel(second.id)
    state, _ = await w.services.reader.session(session.id)
    assert (state.active_run_id, state.last_response_id, state.active_since) == (None, first.response_id, 0.0)
    third = await start(w, session_id=session.id)
    assert w.backend.responses[third.response_id].params["previous_response_id"] == first.response_id


async def test_advancing_a_session_that_already_has_the_response_writes_nothing(monkeypatch):
    w = world(monkeypatch)
    session = await w.services.starter.open_session()
    run = await start(w, session_id=session.id)
    w.backend.responses[run.response_id].complete()
    await w.drain_polls()
    writes = w.tables["sessions"].requests
    await lifecycle(w).advance_session(await w.run(run.id))  # a follow-up again (the sweeper)
    assert w.tables["sessions"].requests == writes + 1  # one read, no write


async def test_a_session_advance_racing_another_writer_is_tried_again(monkeypatch):
    w = world(monkeypatch)
    session = await w.services.starter.open_session()
    run = await start(w, session_id=session.id)
    w.backend.responses[run.response_id].complete()
    sessions = w.tables["sessions"]

    async def another_writer_first():
        sessions.before.pop("update_entity")
        await sessions.update_entity({"PartitionKey": session.id, "RowKey": "session", "updated_at": 1.0})

    sessions.before["update_entity"] = another_writer_first
    await w.drain_polls()
    state, _ = await w.services.reader.session(session.id)
    assert state.active_run_id is None and state.last_response_id == run.response_id


async def test_a_session_that_keeps_changing_is_given_up_after_five_tries_without_an_error(monkeypatch):
    w = world(monkeypatch)
    session = await w.services.starter.open_session()
    run = await start(w, session_id=session.id)
    sessions, tries = w.tables["sessions"], 0

    async def another_writer_first():
        nonlocal tries
        tries += 1
        await sessions.upsert_entity({"PartitionKey": session.id, "RowKey": "session", "updated_at": float(tries)})

    sessions.before["update_entity"] = another_writer_first
    cancelled = await w.services.canceller.cancel(run.id)  # its follow-up tries five times, then gives up
    assert tries == 5
    await lifecycle(w).advance_session(cancelled)  # as the sweeper would, later
    assert tries == 10


async def test_a_run_whose_start_listed_it_only_in_part_is_listed_everywhere_when_it_ends(monkeypatch):
    from shared.runs.index import LIST_ALL, list_partition, list_row_key

    w = world(monkeypatch)
    session = await w.services.starter.open_session()
    run = await start(w, session_id=session.id)
    del w.index.rows[(LIST_ALL, list_row_key(run.created_at, run.id))]  # a crash cut the start's listing short
    w.backend.responses[run.response_id].complete()
    assert await w.drain_polls() == ["completed"]
    for partition in (LIST_ALL, list_partition(session_id=session.id)):
        assert w.index.entity(partition, list_row_key(run.created_at, run.id))["status"] == "completed"
    assert [listed["id"] for listed in (await w.services.lister.page()).runs] == [run.id]
    assert w.index.entity("open", run.id) is None  # and its follow-ups were done


async def test_a_late_follow_up_of_a_deleted_run_writes_nothing_back_and_sends_nothing(monkeypatch):
    w = world(monkeypatch)
    run = await start(w, webhook_url=HOOK)
    ended = await lifecycle(w).finish(await w.run(run.id), "cancelled", cancelled_result())
    await w.services.deleter.delete(run.id)
    w.webhook_queue.take()
    rows = dict(w.index.rows)
    await lifecycle(w).follow_up(ended, send_webhook=True)  # a finisher or the sweeper, late
    assert w.index.rows == rows and not w.webhook_queue.sent
    assert not (await w.services.lister.page()).runs
