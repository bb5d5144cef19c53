"""The sweeper on fakes: what it repairs, what it leaves alone, and that its cost follows the open runs."""
from __future__ import annotations

from shared.runs.requests import RunRequest
from shared.webhooks import Attempt

from .fakes import HostCrash, world


async def start(w, **fields):
    return (await w.services.starter.start(RunRequest(input="hi", **fields))).run


async def test_a_lost_poll_message_gets_its_chain_restarted_once_overdue(monkeypatch):
    w = world(monkeypatch)
    run = await start(w)
    w.poll_queue.take()  # the message is lost
    assert (await w.services.sweeper.sweep()).get("polls") is None  # not overdue yet
    w.clock.advance(w.services.settings.sweep_grace + 5)
    assert (await w.services.sweeper.sweep())["polls"] == 1
    w.backend.responses[run.response_id].complete()
    assert await w.drain_polls() == ["completed"]


async def test_an_interrupted_start_ends_failed_after_the_start_grace(monkeypatch):
    w = world(monkeypatch)
    w.backend.fail["start"] = [HostCrash("the host died here")]  # the start never returns
    try:
        await start(w)
    except HostCrash:
        pass
    (run_id, _), = w.runs.rows
    assert (await w.services.sweeper.sweep()).get("starts") is None
    w.clock.advance(w.services.starter.start_grace + w.services.settings.sweep_grace + 1)
    assert (await w.services.sweeper.sweep())["starts"] == 1
    run = await w.run(run_id)
    assert run.status == "failed" and run.result["error"]["code"] == "start_interrupted"
    assert w.index.entity("open", run_id) is None


async def test_a_crash_after_the_final_save_is_followed_up_session_included(monkeypatch):
    w = world(monkeypatch)
    session = await w.services.starter.open_session()
    run = await start(w, session_id=session.id)
    # The run ended, but the host died before its follow-ups: the session still names it as active.
    await w.runs.update_entity({"PartitionKey": run.id, "RowKey": "run", "status": "completed", "completed_at": 1.0})
    assert (await w.services.sweeper.sweep())["followed_up"] == 1
    state, _ = await w.services.reader.session(session.id)
    assert state.active_run_id is None and state.last_response_id == run.response_id
    assert w.index.entity("open", run.id) is None
    assert (await w.services.sweeper.sweep()) == {"open": 0}


async def test_a_stuck_webhook_is_queued_again_and_a_fresh_one_is_left_alone(monkeypatch):
    w = world(monkeypatch)
    run = await start(w, webhook_url="http://127.0.0.1:9/hook")
    w.backend.responses[run.response_id].complete()
    w.sender.results = [RuntimeError("the host dies during the inline attempt")]
    await w.drain_polls()
    lost = w.webhook_queue.take()  # and the safety-net message is lost too
    assert len(lost) == 1 and (await w.services.sweeper.sweep()).get("webhooks") is None
    w.clock.advance(w.services.settings.webhook_timeout + w.services.settings.sweep_grace + 1)
    assert (await w.services.sweeper.sweep())["webhooks"] == 1
    (again,) = w.webhook_queue.take()
    assert again["seq"] == lost[0]["seq"] + 1
    assert await w.services.outbox.deliver(lost[0]) == "stale"  # the lost one, if it comes back, does nothing
    assert await w.services.outbox.deliver(again) == "delivered"
    assert w.index.entity("open", run.id) is None


async def test_an_index_entry_without_a_run_is_kept_while_its_start_may_be_in_flight(monkeypatch):
    from shared.runs.requests import new_run_id

    w = world(monkeypatch)
    run_id = new_run_id(w.clock.now)
    await w.index.upsert_entity({"PartitionKey": "open", "RowKey": run_id})
    await w.services.sweeper.sweep()
    assert w.index.entity("open", run_id) is not None
    w.clock.advance(w.services.starter.start_grace + 1)
    await w.services.sweeper.sweep()
    assert w.index.entity("open", run_id) is None


async def test_the_sweeper_reads_only_the_open_runs_however_many_have_ended(monkeypatch):
    w = world(monkeypatch)
    w.backend.finish_at_once = True
    for _ in range(300):
        await start(w)
    w.backend.finish_at_once = False
    for _ in range(3):
        await start(w)
    requests_before = w.runs.requests + w.index.requests
    assert (await w.services.sweeper.sweep())["open"] == 3
    assert w.runs.requests + w.index.requests - requests_before == 1 + 3  # one index query, one read per open run
    assert w.blobs.downloads == 0


async def test_failed_deliveries_follow_the_schedule_then_fail_and_leave_the_index(monkeypatch):
    w = world(monkeypatch)
    run = await start(w, webhook_url="http://127.0.0.1:9/hook")
    w.backend.responses[run.response_id].complete()
    failing = Attempt(at="2026-01-01T00:00:00.000Z", ok=False, status_code=500, error="HTTP 500")
    w.sender.results = [failing] * 3
    await w.drain_polls()  # the first attempt is made inline by the step that ended the run
    outcomes = []
    while (messages := w.webhook_queue.take()):
        outcomes += [await w.services.outbox.deliver(m) for m in messages]
    assert outcomes == ["stale", "pending", "failed"]  # the safety net, then the schedule "0,5,10"
    final = await w.run(run.id)
    assert final.webhook.state == "failed" and len(final.webhook.attempts) == 3
    assert len({webhook_id for _, webhook_id, _ in w.sender.sent}) == 1  # one webhook-id throughout
    assert w.index.entity("open", run.id) is None
    redelivered = await w.services.outbox.redeliver(run.id)
    assert redelivered.webhook.state == "pending" and w.index.entity("open", run.id) is not None
    assert await w.services.outbox.deliver(w.webhook_queue.take()[0]) == "delivered"
    assert w.sender.sent[-1][1] == w.sender.sent[0][1]


async def test_a_410_stops_deliveries(monkeypatch):
    w = world(monkeypatch)
    run = await start(w, webhook_url="http://127.0.0.1:9/hook")
    await w.services.canceller.cancel(run.id)  # a cancel queues the delivery (no inline attempt)
    w.sender.results = [Attempt(at="2026-01-01T00:00:00.000Z", ok=False, status_code=410, gone=True)]
    assert await w.services.outbox.deliver(w.webhook_queue.take()[0]) == "failed"
    assert not w.webhook_queue.sent and (await w.run(run.id)).webhook.state == "failed"


async def test_a_late_follow_up_of_an_earlier_turn_never_moves_the_session_back(monkeypatch):
    # Found by the chaos run: the sweeper re-ran the follow-ups of an ended run whose webhook was stuck; the
    # session was idle, so the earlier turn's response overwrote the latest one and the next turn continued
    # from the wrong response.
    w = world(monkeypatch)
    session = await w.services.starter.open_session()
    first = await start(w, session_id=session.id, webhook_url="http://127.0.0.1:9/hook")
    w.backend.responses[first.response_id].complete()
    w.sender.results = [RuntimeError("the receiver is down")]
    await w.drain_polls()
    second = await start(w, session_id=session.id)
    w.backend.responses[second.response_id].complete()
    await w.drain_polls()
    w.webhook_queue.take()
    w.clock.advance(w.services.settings.webhook_timeout + w.services.settings.sweep_grace + 1)
    assert (await w.services.sweeper.sweep())["webhooks"] == 1  # the first turn's follow-ups run again
    state, _ = await w.services.reader.session(session.id)
    assert state.last_response_id == second.response_id


async def test_a_run_that_cannot_be_read_does_not_keep_the_others_from_repair(monkeypatch):
    import pytest
    from azure.core.exceptions import ServiceRequestError

    w = world(monkeypatch)
    runs = [await start(w) for _ in range(3)]
    w.poll_queue.take()  # every message is lost
    w.clock.advance(w.services.settings.sweep_grace + 5)
    w.runs.fail_next = [ServiceRequestError("storage hiccup")]  # the first run's read fails
    with pytest.raises(ServiceRequestError):  # the pass still fails loudly...
        await w.services.sweeper.sweep()
    assert len(w.poll_queue.take()) == 2  # ...after repairing the two runs it could read
    assert (await w.services.sweeper.sweep())["polls"] == 1  # and the next pass repairs the third
    assert {m["run_id"] for m in w.poll_queue.take()} <= {r.id for r in runs}
