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
    w.clock.advance(w.settings.sweep_grace + 5)
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
    ((run_id, _),) = w.runs.rows
    assert (await w.services.sweeper.sweep()).get("starts") is None
    w.clock.advance(w.services.starter.start_grace + w.settings.sweep_grace + 1)
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
    w.clock.advance(w.settings.webhook_timeout + w.settings.sweep_grace + 1)
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
    while messages := w.webhook_queue.take():
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
    w.clock.advance(w.settings.webhook_timeout + w.settings.sweep_grace + 1)
    assert (await w.services.sweeper.sweep())["webhooks"] == 1  # the first turn's follow-ups run again
    state, _ = await w.services.reader.session(session.id)
    assert state.last_response_id == second.response_id


async def test_a_run_that_cannot_be_read_does_not_keep_the_others_from_repair(monkeypatch):
    import pytest
    from azure.core.exceptions import ServiceRequestError

    w = world(monkeypatch)
    runs = [await start(w) for _ in range(3)]
    w.poll_queue.take()  # every message is lost
    w.clock.advance(w.settings.sweep_grace + 5)
    w.runs.fail_next = [ServiceRequestError("storage hiccup")]  # the first run's read fails
    with pytest.raises(ServiceRequestError):  # the pass still fails loudly...
        await w.services.sweeper.sweep()
    assert len(w.poll_queue.take()) == 2  # ...after repairing the two runs it could read
    assert (await w.services.sweeper.sweep())["polls"] == 1  # and the next pass repairs the third
    assert {m["run_id"] for m in w.poll_queue.take()} <= {r.id for r in runs}


def repair_lines(caplog) -> list[tuple[str, str, str]]:
    return [(r.name, r.run_id, r.bgruns_outcome) for r in caplog.records if getattr(r, "step", None) == "repair run"]


async def test_lost_poll_messages_are_sent_again_at_once_counted_noted_and_logged(monkeypatch, caplog):
    w = world(monkeypatch)
    runs = [await start(w), await start(w)]
    w.poll_queue.take()
    due = w.clock.now + 10
    for run in runs:
        await w.runs.update_entity({"PartitionKey": run.id, "RowKey": "run", "next_poll_at": due})
    w.clock.now = due + w.settings.sweep_grace  # due exactly the sweep grace ago: not overdue yet
    assert (await w.services.sweeper.sweep()) == {"open": 2}
    w.clock.advance(0.001)
    with caplog.at_level("INFO", logger="bgruns.sweeping"):
        assert (await w.services.sweeper.sweep()) == {"open": 2, "polls": 2}
    assert [s.delay for s in w.poll_queue.sent] == [0, 0]
    for run in runs:
        repaired = [e for e in w.timeline(await w.run(run.id)) if e["type"] == "repaired"]
        assert repaired == [{"at": w.clock.now, "type": "repaired", "next_poll_in": 0}]
    assert sorted(repair_lines(caplog)) == sorted(("bgruns.sweeping", r.id, "poll_chain_restarted") for r in runs)


async def test_a_repair_that_loses_to_another_writer_is_not_counted(monkeypatch):
    w = world(monkeypatch)
    run = await start(w)
    w.poll_queue.take()
    w.clock.advance(w.services.starter.start_grace + w.settings.sweep_grace + 1)

    async def the_chain_moves_on_first():
        w.runs.before.pop("update_entity")
        await w.runs.update_entity({"PartitionKey": run.id, "RowKey": "run", "poll_seq": 7, "poll_nonce": "other"})

    w.runs.before["update_entity"] = the_chain_moves_on_first
    assert (await w.services.sweeper.sweep()) == {"open": 1}


async def test_a_start_without_a_response_gets_the_start_grace_from_its_creation(monkeypatch, caplog):
    from shared.runs.results import failure_result

    w = world(monkeypatch, SWEEP_GRACE_SECONDS="1")
    run = await start(w)
    # stored by a start that died before the provider answered, due for a look at once
    await w.runs.update_entity(
        {"PartitionKey": run.id, "RowKey": "run", "response_id": "", "next_poll_at": run.created_at}
    )
    w.clock.advance(w.services.starter.start_grace - 1)
    assert (await w.services.sweeper.sweep()) == {"open": 1}
    w.clock.advance(1)  # exactly the start grace: given up
    with caplog.at_level("INFO", logger="bgruns.sweeping"):
        assert (await w.services.sweeper.sweep()) == {"open": 1, "starts": 1}
    stored = await w.services.reader.get(run.id)
    assert stored.status == "failed" and stored.result == failure_result(
        "start_interrupted", "The run's start was interrupted before the provider accepted it."
    )
    assert repair_lines(caplog) == [("bgruns.sweeping", run.id, "start_interrupted")]


async def test_an_index_entry_without_a_run_is_kept_through_the_whole_start_grace(monkeypatch):
    from shared.runs.requests import new_run_id

    w = world(monkeypatch)
    run_id = new_run_id(w.clock.now)
    await w.index.upsert_entity({"PartitionKey": "open", "RowKey": run_id})
    w.clock.advance(w.services.starter.start_grace)
    await w.services.sweeper.sweep()
    assert w.index.entity("open", run_id) is not None
    await w.index.upsert_entity({"PartitionKey": "open", "RowKey": "not-one-of-our-ids"})
    await w.services.sweeper.sweep()
    assert w.index.entity("open", "not-one-of-our-ids") is None


async def test_a_requeued_webhook_is_noted_and_logged(monkeypatch, caplog):
    w = world(monkeypatch)
    run = await start(w, webhook_url="http://127.0.0.1:9/hook")
    await w.services.canceller.cancel(run.id)
    w.webhook_queue.take()  # lost
    w.clock.advance(w.settings.webhook_timeout + w.settings.sweep_grace + 1)
    with caplog.at_level("INFO", logger="bgruns.sweeping"):
        assert (await w.services.sweeper.sweep())["webhooks"] == 1
    repaired = [e for e in w.timeline(await w.run(run.id)) if e["type"] == "repaired"]
    assert repaired == [{"at": w.clock.now, "type": "repaired", "what": "webhook_requeued"}]
    assert repair_lines(caplog) == [("bgruns.sweeping", run.id, "webhook_requeued")]


async def test_an_ended_run_is_followed_up_and_logged(monkeypatch, caplog):
    w = world(monkeypatch)
    run = await start(w)
    await w.runs.update_entity({"PartitionKey": run.id, "RowKey": "run", "status": "completed", "completed_at": 1.0})
    with caplog.at_level("INFO", logger="bgruns.sweeping"):
        assert (await w.services.sweeper.sweep()) == {"open": 1, "followed_up": 1}
    assert repair_lines(caplog) == [("bgruns.sweeping", run.id, "followed_up")]


async def test_a_failing_pass_waits_for_the_other_repairs_before_it_fails(monkeypatch):
    import asyncio

    import pytest
    from azure.core.exceptions import ServiceRequestError

    w = world(monkeypatch)
    for _ in range(3):
        await start(w)
    w.poll_queue.take()
    w.clock.advance(w.services.starter.start_grace + w.settings.sweep_grace + 1)
    saves = 0

    async def slow_save():
        nonlocal saves
        await asyncio.sleep(0.01)
        saves += 1

    w.runs.before["update_entity"] = slow_save
    w.runs.fail_next = [ServiceRequestError("storage hiccup")]
    with pytest.raises(ServiceRequestError):
        await w.services.sweeper.sweep()
    assert saves == 2  # both other repairs were saved before the pass failed


async def test_an_accepted_run_with_no_poll_due_gets_its_chain_restarted(monkeypatch):
    # The defect: the log line subtracted a missing next_poll_at, so the sweeper failed on such a run every pass.
    w = world(monkeypatch)
    run = await start(w)
    w.poll_queue.take()
    await w.runs.update_entity({"PartitionKey": run.id, "RowKey": "run", "next_poll_at": None})
    w.clock.advance(w.settings.sweep_grace + 1)
    assert (await w.services.sweeper.sweep()) == {"open": 1, "polls": 1}
    assert [s.delay for s in w.poll_queue.sent] == [0]


async def test_a_queued_runs_cut_create_gets_the_start_grace_from_the_create_not_from_the_run(monkeypatch):
    # A run that waited long for provider capacity, its try cut mid-create: the create may still be going for a
    # start grace from when it was made, whatever the run's age and whenever its next look was noted for (an
    # instance with a shorter start grace noted an earlier one).
    from .test_admission import queued, try_cut_mid_create

    w = world(monkeypatch)
    run = await queued(w)
    w.clock.advance(w.services.starter.start_grace + w.settings.sweep_grace + 10)
    await try_cut_mid_create(w)
    await w.runs.update_entity({"PartitionKey": run.id, "RowKey": "run", "next_poll_at": run.created_at})
    w.clock.advance(w.services.starter.start_grace - 1)
    assert (await w.services.sweeper.sweep()) == {"open": 1}
    w.clock.advance(1)  # exactly the start grace since the create: given up
    assert (await w.services.sweeper.sweep()) == {"open": 1, "starts": 1}
    assert (await w.run(run.id)).result["error"]["code"] == "start_interrupted"


async def sweep_every_second(w, seconds: float) -> list[float]:
    """Sweep once a second for `seconds`: when (seconds from now) a pass restarted a poll chain."""
    began, restarts = w.clock.now, []
    while w.clock.now - began < seconds:
        w.clock.advance(1)
        if (await w.services.sweeper.sweep()).get("polls"):
            restarts.append(w.clock.now - began)
    return restarts


async def test_a_chain_restarted_again_before_a_step_acted_waits_twice_as_long_each_time(monkeypatch):
    # Found by the executor chaos run: on a busy host poll messages came 10-16 s after they were due, past the
    # sweeper's grace (4 s); each restart made the message before it stale, so no step ever acted and the sweeper
    # restarted the chain again every grace (6,000 restarts in one run).
    w = world(monkeypatch, SWEEP_GRACE_SECONDS="4")
    run = await start(w)
    (late,) = w.poll_queue.take()  # late, not lost: it arrives after the restarts below
    await w.runs.update_entity({"PartitionKey": run.id, "RowKey": "run", "next_poll_at": w.clock.now})
    restarts = await sweep_every_second(w, 200)
    # The first restart after the grace, as for a lost message; then 8, 16, 32 and 64 s (the cap) after the last.
    assert restarts == [5, 14, 31, 64, 129, 194]
    assert (await w.run(run.id)).chain_restarts == 6
    assert await w.services.poll_step.handle(late, dequeue_count=5) == "stale"  # a stale message is no sign of life
    assert (await w.run(run.id)).chain_restarts == 6
    current = w.poll_queue.take()[-1]  # the last restart's message arrives: a step acts
    assert await w.services.poll_step.handle(current, dequeue_count=5) == "pending"
    stepped = await w.run(run.id)
    assert stepped.chain_restarts == 0
    w.poll_queue.take()  # and this chain's next message is lost: repaired after the plain grace again
    began = w.clock.now
    (restart,) = await sweep_every_second(w, stepped.next_poll_at + 4 + 1 - began)
    assert 0 < began + restart - (stepped.next_poll_at + 4) <= 1  # the first pass past the grace
    assert (await w.run(run.id)).chain_restarts == 1


# -- runs past their deadline (issue 22: a poll queue late under load made runs expire late) ----------------------
async def test_a_run_past_its_deadline_whose_chain_is_late_is_expired_by_the_sweeper(monkeypatch):
    w = world(monkeypatch)
    run = await start(w, deadline_seconds=10, webhook_url="http://127.0.0.1:9/hook")
    late = w.poll_queue.take()  # the chain's message waits in a slow queue
    w.clock.now = run.deadline_at  # at the deadline the chain's look is not due yet (it comes just after)
    assert (await w.services.sweeper.sweep()).get("expired") is None and not w.backend.count("cancel")
    w.clock.advance(1)  # well within the sweep grace: no chain restart would act yet
    assert (await w.services.sweeper.sweep())["expired"] == 1
    ended = await w.run(run.id)
    assert ended.status == "expired" and "deadline of 10 s" in ended.result["error"]["message"]
    assert w.backend.responses[run.response_id].status == "cancelled"  # cancelled at the provider, as the chain does
    assert not w.sender.sent  # a pass ending many runs leaves their webhooks to the queue, at once
    (hook,) = w.webhook_queue.sent
    assert hook.delay == 0 and await w.services.outbox.deliver(hook.message) == "delivered"
    assert [await w.services.poll_step.handle(m, dequeue_count=5) for m in late] == ["already-terminal"]


async def test_a_run_that_completed_by_its_deadline_keeps_its_output_when_the_sweeper_ends_it(monkeypatch):
    w = world(monkeypatch)
    run = await start(w, deadline_seconds=10)
    w.poll_queue.take()
    w.backend.responses[run.response_id].complete("in time")
    w.clock.now = run.deadline_at + 1
    assert (await w.services.sweeper.sweep())["expired"] == 1
    ended = await w.run(run.id)
    assert ended.status == "completed" and ended.result["output_text"] == "in time"


async def test_a_cancel_at_the_deadline_retried_on_the_chain_is_left_to_the_chain(monkeypatch):
    from shared.provider import ProviderError

    w = world(monkeypatch)
    run = await start(w, deadline_seconds=10)
    w.poll_queue.take()
    w.clock.now = run.deadline_at + 1
    w.backend.fail["cancel"] = [ProviderError(transient=True, status=503, message="down")]
    assert (await w.services.sweeper.sweep()).get("expired") is None  # the cancel failed: tried again on the chain
    assert len(w.poll_queue.sent) == 1 and (await w.run(run.id)).status != "expired"
    assert (await w.services.sweeper.sweep()).get("expired") is None  # its look is ahead: no second cancel
    assert w.backend.count("cancel") == 1
    assert await w.drain_polls() == ["expired"]


async def test_the_sweeper_and_a_poll_step_expiring_the_same_run_end_it_once(monkeypatch):
    w = world(monkeypatch)
    run = await start(w, deadline_seconds=10, webhook_url="http://127.0.0.1:9/hook")
    (message,) = w.poll_queue.take()
    w.clock.now = run.deadline_at + 1
    step: list[str] = []

    async def the_chain_step_arrives_meanwhile() -> None:
        del w.backend.before["cancel"]
        step.append(await w.services.poll_step.handle(message, dequeue_count=5))

    w.backend.before["cancel"] = the_chain_step_arrives_meanwhile  # the sweeper's cancel waits for the step
    await w.services.sweeper.sweep()
    assert step == ["expired"]
    ended = await w.run(run.id)
    assert ended.status == "expired"
    assert [e["type"] for e in w.timeline(ended)].count("finished") == 1
    assert len(w.sender.sent) == 1  # one webhook, one first attempt
