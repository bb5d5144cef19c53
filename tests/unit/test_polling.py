"""The poll step, branch by branch, on fakes: messages, provider answers, deadlines, conflicts."""

from __future__ import annotations

import pytest

from shared.errors import UpstreamError
from shared.provider import ProviderError
from shared.runs.poll_chain import Backoff
from shared.runs.polling import EarlyMessage
from shared.runs.requests import RunRequest

from .fakes import world


async def started(w, **fields):
    result = await w.services.starter.start(RunRequest(input="hi", **fields))
    return result.run


async def test_a_malformed_or_unknown_message_is_dropped_without_a_provider_call(monkeypatch):
    w = world(monkeypatch)
    assert await w.services.poll_step.handle({"run_id": "run_x"}) == "malformed"
    assert await w.services.poll_step.handle({"run_id": "run_x", "seq": "one", "nonce": "n"}) == "malformed"
    assert await w.services.poll_step.handle({"run_id": "run_missing", "seq": 1, "nonce": "n"}) == "unknown-run"
    assert w.backend.count("observe") == 0


async def test_a_pending_run_is_polled_again_with_backoff_and_its_status_kept(monkeypatch):
    w = world(monkeypatch)
    run = await started(w)
    first = w.poll_queue.sent[-1]
    assert 0.8 <= first.delay <= 1.2 and first.message["seq"] == 1
    w.backend.responses[run.response_id].status = "in_progress"
    assert await w.services.poll_step.handle(w.poll_queue.take()[0]) == "pending"
    assert (await w.run(run.id)).status == "in_progress"
    second = w.poll_queue.sent[-1]
    assert second.message["seq"] == 2 and 1.2 <= second.delay <= 1.8


async def test_stale_and_duplicate_messages_do_nothing(monkeypatch):
    w = world(monkeypatch)
    await started(w)
    message = w.poll_queue.take()[0]
    assert await w.services.poll_step.handle(message) == "pending"
    assert await w.services.poll_step.handle(message) == "stale"  # the duplicate of a handled message
    assert await w.services.poll_step.handle({**message, "nonce": "other"}) == "stale"
    assert w.backend.count("observe") == 1 and len(w.poll_queue.sent) == 1  # one chain, not two


async def test_a_message_ahead_of_its_run_is_retried_then_dropped(monkeypatch):
    w = world(monkeypatch)
    run = await started(w)
    current = w.poll_queue.take()[0]
    ahead = {**current, "seq": current["seq"] + 1, "nonce": "not-saved-yet"}
    with pytest.raises(EarlyMessage):
        await w.services.poll_step.handle(ahead, dequeue_count=1)
    assert await w.services.poll_step.handle(ahead, dequeue_count=3) == "stale"
    assert w.backend.count("observe") == 0 and run.id


async def test_a_completed_run_is_finished_once_with_its_output(monkeypatch):
    w = world(monkeypatch)
    run = await started(w, webhook_url="http://127.0.0.1:9/hook")
    w.backend.responses[run.response_id].complete("the answer")
    assert await w.drain_polls() == ["completed"]
    final = await w.run(run.id)
    assert final.status == "completed" and final.result["output_text"] == "the answer"
    # The step that ended the run made the first webhook attempt itself (no queue hop) ...
    assert len(w.sender.sent) == 1 and final.webhook.state == "delivered"
    assert w.index.entity("open", run.id) is None
    # ... and queued a delayed safety-net message, which now does nothing.
    (safety,) = w.webhook_queue.sent
    assert safety.delay >= w.settings.webhook_timeout
    assert await w.services.outbox.deliver(safety.message) == "stale"


async def test_a_transient_provider_error_is_retried_honouring_retry_after(monkeypatch):
    w = world(monkeypatch)
    run = await started(w)
    w.backend.fail["observe"] = [ProviderError(transient=True, status=429, message="slow down", retry_after=7)]
    assert await w.services.poll_step.handle(w.poll_queue.take()[0]) == "retry"
    assert w.poll_queue.sent[-1].delay >= 7
    assert (await w.run(run.id)).is_active


async def test_a_permanent_provider_error_fails_the_run_with_the_providers_message(monkeypatch):
    w = world(monkeypatch)
    run = await started(w)
    w.backend.fail["observe"] = [ProviderError(transient=False, status=401, message="bad key")]
    assert await w.services.poll_step.handle(w.poll_queue.take()[0]) == "failed"
    final = await w.run(run.id)
    assert final.status == "failed" and "bad key" in final.result["error"]["message"]
    assert "401" in final.result["error"]["message"]


async def test_a_run_that_completes_just_before_its_deadline_keeps_its_output(monkeypatch):
    # The defect: the step checked the deadline before asking the provider, so this run ended expired.
    w = world(monkeypatch)
    run = await started(w, deadline_seconds=30)
    message = w.poll_queue.take()[0]
    w.backend.responses[run.response_id].complete("made it")
    w.clock.advance(30.4)  # the last poll is scheduled for just after the deadline
    assert await w.services.poll_step.handle(message) == "completed"
    final = await w.run(run.id)
    assert final.status == "completed" and final.result["output_text"] == "made it"
    assert w.backend.count("cancel") == 0


async def test_a_run_still_going_at_its_deadline_is_cancelled_and_expires_quoting_its_own_deadline(monkeypatch):
    w = world(monkeypatch)
    run = await started(w, deadline_seconds=45)
    w.clock.advance(46)
    assert await w.services.poll_step.handle(w.poll_queue.take()[0]) == "expired"
    final = await w.run(run.id)
    assert final.status == "expired" and final.result["error"]["code"] == "deadline_exceeded"
    assert "45 s" in final.result["error"]["message"]  # not the global RUN_DEADLINE_SECONDS (3600)
    assert w.backend.responses[run.response_id].status == "cancelled"


async def test_a_run_that_finished_while_being_expired_keeps_its_result(monkeypatch):
    w = world(monkeypatch)
    run = await started(w, deadline_seconds=10)
    message = w.poll_queue.take()[0]

    async def completes_meanwhile():
        w.backend.responses[run.response_id].complete("just in time")

    w.backend.before["cancel"] = completes_meanwhile
    w.clock.advance(11)
    assert await w.services.poll_step.handle(message) == "completed"
    assert (await w.run(run.id)).result["output_text"] == "just in time"


async def test_a_transient_error_past_the_deadline_expires_the_run(monkeypatch):
    w = world(monkeypatch)
    run = await started(w, deadline_seconds=10)
    w.clock.advance(11)
    w.backend.fail["observe"] = [ProviderError(transient=True, status=503, message="down")]
    assert await w.services.poll_step.handle(w.poll_queue.take()[0]) == "expired"
    assert (await w.run(run.id)).status == "expired"


async def test_a_run_changed_while_scheduling_leaves_its_new_message_stale(monkeypatch):
    w = world(monkeypatch)
    run = await started(w)
    message = w.poll_queue.take()[0]

    async def another_writer_meanwhile():  # e.g. the sweeper restarting the chain
        await w.runs.update_entity({"PartitionKey": run.id, "RowKey": "run", "poll_nonce": "theirs"})

    w.backend.before["observe"] = another_writer_meanwhile
    assert await w.services.poll_step.handle(message) == "pending"
    assert (await w.run(run.id)).poll_nonce == "theirs"  # their save stands; ours conflicted
    assert await w.services.poll_step.handle(w.poll_queue.take()[0], dequeue_count=3) == "stale"  # ours is stale


def test_backoff_never_overflows_on_a_very_long_chain():
    backoff = Backoff(initial=1, maximum=10, multiplier=1.5)
    assert 8 <= backoff.delay(2_000) <= 12 and 8 <= backoff.delay(10**9) <= 12
    steep = Backoff(initial=0.05, maximum=600, multiplier=1000)
    assert 480 <= steep.delay(5_000) <= 720
    flat = Backoff(initial=2, maximum=2, multiplier=1)
    assert 1.6 <= flat.delay(10**6) <= 2.4


async def test_a_cancel_at_the_deadline_that_fails_for_now_is_tried_again_before_the_run_expires(monkeypatch):
    # Found by the chaos run: the cancel was tried once; when it hit a provider fault the run ended expired
    # while the provider went on (and billed).
    w = world(monkeypatch)
    run = await started(w, deadline_seconds=10)
    w.clock.advance(11)
    w.backend.fail["cancel"] = [ProviderError(transient=True, status=503, message="down")]
    assert await w.services.poll_step.handle(w.poll_queue.take()[0]) == "retry"
    assert (await w.run(run.id)).is_active and w.backend.responses[run.response_id].status == "queued"
    assert await w.services.poll_step.handle(w.poll_queue.take()[0]) == "expired"
    assert w.backend.responses[run.response_id].status == "cancelled"


async def test_a_provider_refusing_the_cancel_at_the_deadline_is_said_in_the_expiry(monkeypatch):
    w = world(monkeypatch)
    run = await started(w, deadline_seconds=10)
    w.clock.advance(11)
    w.backend.fail["cancel"] = [ProviderError(transient=False, status=403, message="not yours")]
    assert await w.services.poll_step.handle(w.poll_queue.take()[0]) == "expired"
    message = (await w.run(run.id)).result["error"]["message"]
    assert "10 s" in message and "refused to cancel" in message and "403" in message


async def test_a_run_cancelled_at_the_provider_for_its_deadline_ends_expired_even_after_a_crash(monkeypatch):
    # Found by the chaos run: the host died after cancelling at the provider for the deadline and before saving
    # the expiry; the redelivered message saw the provider's `cancelled` and ended the run cancelled.
    w = world(monkeypatch)
    run = await started(w, deadline_seconds=10)
    message = w.poll_queue.take()[0]
    w.clock.advance(11)
    w.backend.responses[run.response_id].status = "cancelled"  # what the crashed step did before dying
    assert await w.services.poll_step.handle(message, dequeue_count=2) == "expired"
    final = await w.run(run.id)
    assert final.status == "expired" and "10 s" in final.result["error"]["message"]


async def test_a_cancel_at_the_deadline_that_fails_for_now_is_retried_with_backoff_not_at_once(monkeypatch):
    # The defect: past the deadline every step was clamped to the deadline's 0.5 s slack, so a cancel the
    # provider answered with 503 and Retry-After: 30 was tried again twice a second for ten minutes.
    w = world(monkeypatch)
    run = await started(w, deadline_seconds=10)
    w.clock.advance(11)
    w.backend.fail["cancel"] = [ProviderError(transient=True, status=503, message="down", retry_after=30)]
    assert await w.services.poll_step.handle(w.poll_queue.take()[0]) == "retry"
    assert w.poll_queue.sent[-1].delay == 30
    w.backend.fail["cancel"] = [ProviderError(transient=True, status=503, message="down")]
    assert await w.services.poll_step.handle(w.poll_queue.take()[0]) == "retry"
    assert w.poll_queue.sent[-1].delay >= 0.8  # the retry backoff, not the deadline's slack
    stored = await w.run(run.id)
    assert stored.next_poll_at == w.clock.now + w.poll_queue.sent[-1].delay


async def test_the_chains_steps_back_off_until_the_deadline_then_land_just_after_it(monkeypatch):
    w = world(monkeypatch)
    run = await started(w, deadline_seconds=20)
    w.backend.responses[run.response_id].status = "in_progress"
    delays = [w.poll_queue.sent[-1].delay]
    for _ in range(3):
        assert await w.services.poll_step.handle(w.poll_queue.take()[0]) == "pending"
        delays.append(w.poll_queue.sent[-1].delay)
        stored = await w.run(run.id)
        assert stored.next_poll_at == w.clock.now + delays[-1] and stored.poll_count == len(delays)
    for n, delay in enumerate(delays):  # initial 1 s, times 1.5 (POLL_MULTIPLIER) a step, ±20 %
        assert 0.8 * 1.5**n <= delay <= 1.2 * 1.5**n
    w.clock.advance(19.9)
    assert await w.services.poll_step.handle(w.poll_queue.take()[0]) == "pending"
    assert w.poll_queue.sent[-1].delay == pytest.approx(0.6)  # 0.1 s to the deadline, then its 0.5 s slack
    polls = [e for e in w.timeline(await w.run(run.id)) if e["type"] == "poll"]
    assert polls[-1] == {
        "at": w.clock.now,
        "type": "poll",
        "provider_status": "in_progress",
        "next_poll_in": round(w.poll_queue.sent[-1].delay, 2),
    }
    assert {p["next_poll_in"] for p in polls} == {round(d, 2) for d in delays[1:]} | {0.6}


async def test_a_provider_hiccup_is_noted_on_the_chain_and_retried_on_the_retry_backoff(monkeypatch):
    w = world(monkeypatch, COMPLETION_STRATEGY="watch")  # the chain itself steps at once; retries back off
    run = await started(w)
    w.backend.fail["events"] = [ProviderError(transient=True, status=None, message="reset")]
    w.backend.fail["observe"] = [ProviderError(transient=True, status=None, message="reset")]
    assert await w.services.poll_step.handle(w.poll_queue.take()[0]) == "retry"
    assert 1.2 <= w.poll_queue.sent[-1].delay <= 1.8  # the poll backoff's second step
    w.backend.fail["events"] = [ProviderError(transient=True, status=502, message="bad gateway")]
    w.backend.fail["observe"] = [ProviderError(transient=True, status=502, message="bad gateway")]
    assert await w.services.poll_step.handle(w.poll_queue.take()[0]) == "retry"
    errors = [e.get("error") for e in w.timeline(await w.run(run.id)) if e["type"] == "poll"]
    assert errors[-2:] == ["provider unreachable", "provider 502"]


async def test_a_provider_refusing_to_report_fails_the_run_saying_so(monkeypatch):
    from shared.runs.results import failure_result

    w = world(monkeypatch)
    run = await started(w)
    w.backend.fail["observe"] = [ProviderError(transient=False, status=401, message="bad key")]
    assert await w.services.poll_step.handle(w.poll_queue.take()[0]) == "failed"
    assert (await w.run(run.id)).result == {
        **failure_result("provider_error", "The provider refused to report on the run (401): bad key"),
        "output_text": "",
    }


@pytest.mark.parametrize("hiccup", [False, True])
async def test_a_run_still_going_exactly_at_its_deadline_expires(monkeypatch, hiccup):
    w = world(monkeypatch)
    run = await started(w, deadline_seconds=10)
    w.clock.now = run.deadline_at
    if hiccup:
        w.backend.fail["observe"] = [ProviderError(transient=True, status=503, message="down")]
    assert await w.services.poll_step.handle(w.poll_queue.take()[0]) == "expired"
    assert (await w.run(run.id)).result["error"]["message"] == "The run did not finish within its deadline of 10 s."


async def test_a_response_cancelled_exactly_at_the_deadline_ends_the_run_expired(monkeypatch):
    w = world(monkeypatch)
    run = await started(w, deadline_seconds=10)
    message = w.poll_queue.take()[0]
    w.clock.now = run.deadline_at
    w.backend.responses[run.response_id].status = "cancelled"
    assert await w.services.poll_step.handle(message) == "expired"
    assert (await w.run(run.id)).result["error"] == {
        "code": "deadline_exceeded",
        "message": "The run did not finish within its deadline of 10 s.",
    }


async def test_a_cancel_at_the_deadline_that_keeps_failing_ends_the_run_expired_saying_so(monkeypatch):
    from shared.runs.expiry import CANCEL_RETRY_WINDOW_SECONDS

    w = world(monkeypatch)
    run = await started(w, deadline_seconds=10)
    w.clock.now = run.deadline_at + CANCEL_RETRY_WINDOW_SECONDS
    w.backend.fail["cancel"] = [ProviderError(transient=True, status=503, message="down")]
    assert await w.services.poll_step.handle(w.poll_queue.take()[0]) == "expired"
    assert (await w.run(run.id)).result["error"]["message"] == (
        "The run did not finish within its deadline of 10 s. Cancelling it at the provider kept failing: down."
    )
    run2 = await started(w, deadline_seconds=10)
    w.clock.advance(11)
    w.backend.fail["cancel"] = [ProviderError(transient=False, status=403, message="not yours")]
    assert await w.services.poll_step.handle(w.poll_queue.take()[0]) == "expired"
    assert (await w.run(run2.id)).result["error"]["message"] == (
        "The run did not finish within its deadline of 10 s. The provider refused to cancel it (403): not yours."
    )


async def test_a_step_that_loses_only_to_a_timeline_note_keeps_the_note_and_its_chain(monkeypatch):
    w = world(monkeypatch)
    run = await started(w)
    message = w.poll_queue.take()[0]
    w.backend.responses[run.response_id].status = "in_progress"

    async def a_refused_cancel_notes_the_run_first():
        w.runs.before.pop("update_entity")
        w.backend.fail["cancel"] = [ProviderError(transient=False, status=403, message="no")]
        with pytest.raises(UpstreamError, match=r"refused to cancel the run \(403\)"):
            await w.services.canceller.cancel(run.id)

    w.runs.before["update_entity"] = a_refused_cancel_notes_the_run_first
    assert await w.services.poll_step.handle(message) == "pending"
    stored = await w.run(run.id)
    assert (stored.poll_seq, stored.status) == (message["seq"] + 1, "in_progress")
    kinds = [e["type"] for e in w.timeline(stored)]
    assert "cancel_refused" in kinds and kinds.count("poll") == 1
    assert await w.services.poll_step.handle(w.poll_queue.take()[0]) == "pending"  # the chain goes on


async def test_a_repair_that_loses_twice_to_timeline_notes_is_left_to_the_next_pass(monkeypatch):
    w = world(monkeypatch)
    run = await started(w)
    w.poll_queue.take()
    w.clock.advance(w.services.starter.start_grace + w.settings.sweep_grace + 1)
    notes = 0

    async def a_note_first():
        nonlocal notes
        notes += 1
        if notes == 2:
            w.runs.before.pop("update_entity")
        noted = await w.run(run.id)
        noted.timeline.record("cancel_failed", w.clock.now)
        await w.runs.upsert_entity({"PartitionKey": run.id, "RowKey": "run", "timeline": noted.timeline.dumps()})

    w.runs.before["update_entity"] = a_note_first
    assert (await w.services.sweeper.sweep()) == {"open": 1}
    assert (await w.run(run.id)).poll_seq == 1  # the repair's message is stale: the next pass repairs again


def test_a_backoff_without_delays_still_honours_a_retry_after_within_bounds():
    none = Backoff(initial=0, maximum=0, multiplier=1)
    assert none.delay(7) == 0.0 and none.delay(7, retry_after=5) == 5 and none.delay(7, retry_after=10**6) == 600
    small = Backoff(initial=0.5, maximum=1, multiplier=2)
    assert small.delay(0, rng=lambda: 0.5) == 0.5 and small.delay(9, rng=lambda: 0.5) == 1.0


def test_a_poll_message_carries_the_trace_context_and_reads_back_as_sent():
    from shared.runs.poll_chain import PollMessage

    tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    message = PollMessage("run_a", 4, "n0nce", tp, "v=1")
    assert message.to_dict() == {"run_id": "run_a", "seq": 4, "nonce": "n0nce", "traceparent": tp, "tracestate": "v=1"}
    assert PollMessage.parse(message.to_dict()) == message
    assert PollMessage("run_a", 4, "n").to_dict() == {"run_id": "run_a", "seq": 4, "nonce": "n"}


async def test_watching_a_stream_that_ends_without_a_terminal_event_asks_the_provider(monkeypatch):
    from types import SimpleNamespace

    from .fakes import stream_event

    w = world(monkeypatch, COMPLETION_STRATEGY="watch", WATCH_WINDOW_SECONDS="5")
    run = await started(w)
    w.backend.streams[run.response_id] = [SimpleNamespace(type="keepalive"), stream_event("response.in_progress", 1)]
    w.backend.responses[run.response_id].status = "cancelled"
    assert await w.services.poll_step.handle(w.poll_queue.take()[0]) == "cancelled"
    assert w.backend.count("observe") == 1 and (await w.run(run.id)).watch_position == 1


async def test_watching_skips_events_without_a_position_and_ends_at_the_terminal_event(monkeypatch):
    from types import SimpleNamespace

    from .fakes import stream_event

    w = world(monkeypatch, COMPLETION_STRATEGY="watch", WATCH_WINDOW_SECONDS="5")
    run = await started(w)
    response = w.backend.responses[run.response_id]
    response.complete("streamed")
    w.backend.streams[run.response_id] = [
        stream_event("response.in_progress", 1),
        SimpleNamespace(type="keepalive"),
        stream_event("response.completed", 2, response),
    ]
    assert await w.services.poll_step.handle(w.poll_queue.take()[0]) == "completed"
    assert w.backend.count("observe") == 0


async def test_watching_holds_the_stream_no_longer_than_its_window(monkeypatch):
    import time

    from .fakes import stream_event

    w = world(monkeypatch, COMPLETION_STRATEGY="watch", WATCH_WINDOW_SECONDS="0.1")
    run = await started(w)
    w.backend.streams[run.response_id] = [stream_event("response.in_progress", 1)]
    w.backend.hang = 5  # the response goes on
    began = time.monotonic()
    assert await w.services.poll_step.handle(w.poll_queue.take()[0]) == "pending"
    assert time.monotonic() - began < 0.9


async def test_a_cancel_failing_for_now_exactly_at_the_deadline_is_retried_after_the_providers_retry_after(monkeypatch):
    # At its deadline a run is past it (it expires): the deadline's slack no longer shortens the retry.
    w = world(monkeypatch)
    run = await started(w, deadline_seconds=10)
    w.clock.now = run.deadline_at
    w.backend.fail["cancel"] = [ProviderError(transient=True, status=503, message="down", retry_after=30)]
    assert await w.services.poll_step.handle(w.poll_queue.take()[0]) == "retry"
    assert w.poll_queue.sent[-1].delay == 30


async def test_watching_reports_a_terminal_event_as_the_state_a_retrieve_gives(monkeypatch):
    from shared.runs.polling import RetrieveObserver, StreamWatcher

    from .fakes import stream_event

    w = world(monkeypatch, COMPLETION_STRATEGY="watch", WATCH_WINDOW_SECONDS="5")
    run = await started(w)
    response = w.backend.responses[run.response_id]
    response.complete("streamed")
    w.backend.streams[run.response_id] = [stream_event("response.completed", 1, response)]
    watched = await StreamWatcher(w.backend, 5).observe(run)
    retrieved = await RetrieveObserver(w.backend).observe(run)
    assert (
        (watched.response_id, watched.status, watched.is_active)
        == (retrieved.response_id, retrieved.status, retrieved.is_active)
        == (run.response_id, "completed", False)
    )
    assert watched.response == retrieved.response


async def test_a_start_whose_first_save_loses_to_a_timeline_note_keeps_the_providers_answer(monkeypatch):
    # The start's first step saves the whole run (what the provider answered), not only the chain: so does its
    # second try over another writer's note.
    w = world(monkeypatch)

    async def a_note_first():
        w.runs.before.pop("update_entity")
        ((run_id, _),) = w.runs.rows
        noted = await w.run(run_id)
        noted.timeline.record("cancel_failed", w.clock.now)
        await w.runs.upsert_entity({"PartitionKey": run_id, "RowKey": "run", "timeline": noted.timeline.dumps()})

    w.runs.before["update_entity"] = a_note_first
    run = await started(w)
    stored = await w.run(run.id)
    assert stored.response is not None and stored.response["id"] == run.response_id
    assert (stored.poll_seq, stored.status) == (1, "queued")
    entries = {e["type"]: e for e in w.timeline(stored)}
    assert "cancel_failed" in entries
    assert entries["provider_accepted"] == {
        "at": w.clock.now,
        "type": "provider_accepted",
        "provider_status": "queued",
        "next_poll_in": round(w.poll_queue.sent[-1].delay, 2),
    }


async def test_a_message_for_a_run_whose_start_never_got_an_answer_is_stale(monkeypatch):
    # Recorded by a start that died before the provider answered (no response, not queued for capacity): only
    # the sweeper may end it, after the start grace; a poll step must neither poll nor try to create it.
    w = world(monkeypatch)
    run = await started(w)
    await w.runs.update_entity({"PartitionKey": run.id, "RowKey": "run", "response_id": ""})
    (message,) = w.poll_queue.take()
    assert await w.services.poll_step.handle(message) == "stale"
    assert w.backend.count("observe") == 0 and w.backend.count("start") == 1
    assert (await w.run(run.id)).status == "queued" and not w.poll_queue.sent
