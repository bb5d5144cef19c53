"""A run's webhook state: which message may act, when the next attempt is due, what is stored and read back."""

from __future__ import annotations

from shared.runs.webhook_state import MAX_RECORDED_ATTEMPTS, WebhookMessage, WebhookState
from shared.webhooks import Attempt

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
SCHEDULE = (0.0, 5.0, 10.0)


def failed(**fields) -> Attempt:
    return Attempt(at="2026-01-01T00:00:00.000Z", ok=False, status_code=500, **fields)


OK = Attempt(at="2026-01-01T00:00:00.000Z", ok=True, status_code=204)


def test_a_delivery_begins_pending_due_now_with_a_fresh_id_and_the_runs_trace_context():
    state = WebhookState.begin(100.0, TRACEPARENT, "v=1")
    assert state.id.startswith("msg_") and state.id != WebhookState.begin(100.0).id
    assert (state.state, state.seq, state.attempts, state.round_attempts, state.due_at) == ("pending", 0, [], 0, 100.0)
    assert state.message("run_a") == WebhookMessage("run_a", 0, TRACEPARENT, "v=1")
    assert (WebhookState.begin(1.0).traceparent, WebhookState.begin(1.0).tracestate) == ("", "")


def test_a_message_carries_the_trace_context_and_reads_back_as_sent():
    message = WebhookMessage("run_a", 3, TRACEPARENT, "v=1")
    assert message.to_dict() == {"run_id": "run_a", "seq": 3, "traceparent": TRACEPARENT, "tracestate": "v=1"}
    assert WebhookMessage.parse(message.to_dict()) == message
    assert WebhookMessage("run_a", 3).to_dict() == {"run_id": "run_a", "seq": 3}
    assert WebhookMessage.parse({"run_id": "run_a", "seq": "3", "traceparent": "garbage"}) == WebhookMessage("run_a", 3)


def test_only_the_current_message_of_a_pending_delivery_acts():
    state = WebhookState.begin(0.0)
    first = state.message("run_a")
    assert state.accepts(first)
    assert state.record(failed(), schedule=SCHEDULE, at=0.0) is not None
    assert not state.accepts(first) and state.accepts(state.message("run_a"))
    second = state.message("run_a")
    state.requeue(50.0)
    assert not state.accepts(second) and not state.accepts(first) and state.accepts(state.message("run_a"))
    assert state.record(OK, schedule=SCHEDULE, at=60.0) is None
    assert not state.accepts(state.message("run_a"))  # delivered: nothing acts any more


def test_every_change_of_the_next_message_makes_each_earlier_one_stale():
    state = WebhookState.begin(0.0)
    seen = [state.message("run_a")]
    state.record(failed(), schedule=SCHEDULE, at=0.0)
    seen.append(state.message("run_a"))
    state.requeue(1.0)
    seen.append(state.message("run_a"))
    state.record(failed(), schedule=SCHEDULE, at=2.0)
    state.record(failed(), schedule=SCHEDULE, at=3.0)  # the schedule is over: failed
    state.reopen(4.0)
    current = state.message("run_a")
    assert state.accepts(current) and not any(state.accepts(m) for m in seen)
    assert len({m.seq for m in seen} | {current.seq}) == len(seen) + 1


def test_failed_attempts_follow_the_schedule_and_a_receivers_retry_after_lengthens_it():
    schedule = (0.0, 1.0, 20.0)  # the first attempt at once, then about 1 s, then about 20 s
    state = WebhookState.begin(0.0)
    first = state.record(failed(retry_after_seconds=15.0), schedule=schedule, at=100.0)
    assert first == 15.0 and state.due_at == 115.0  # longer than the schedule's 1 s, within its longest wait
    second = state.record(failed(), schedule=schedule, at=200.0)
    assert 15.0 <= second <= 25.0 and state.due_at == 200.0 + second
    assert state.record(failed(), schedule=schedule, at=300.0) is None and state.state == "failed"
    assert state.round_attempts == 3 and len(state.attempts) == 3


def test_a_receiver_that_is_gone_or_refused_stops_the_delivery_at_once():
    for attempt in (failed(gone=True), failed(refused=True)):
        state = WebhookState.begin(0.0)
        assert state.record(attempt, schedule=SCHEDULE, at=1.0) is None and state.state == "failed"


def test_a_redelivery_starts_a_fresh_schedule_for_the_same_event():
    state = WebhookState.begin(0.0)
    for at in (1.0, 2.0, 3.0):
        state.record(failed(), schedule=SCHEDULE, at=at)
    ident = state.id
    state.reopen(10.0)
    assert (state.state, state.round_attempts, state.due_at, state.id) == ("pending", 0, 10.0, ident)
    assert 3.0 <= state.record(failed(), schedule=SCHEDULE, at=11.0) <= 7.0  # the schedule's first retry again
    assert len(state.attempts) == 4


def test_only_the_most_recent_attempts_are_kept():
    state = WebhookState.begin(0.0)
    for n in range(MAX_RECORDED_ATTEMPTS + 5):
        state.record(failed(error=f"e{n}"), schedule=(0.0,) * 100, at=float(n))
    assert (
        len(state.attempts) == MAX_RECORDED_ATTEMPTS and state.attempts[-1]["error"] == f"e{MAX_RECORDED_ATTEMPTS + 4}"
    )


def test_a_pending_delivery_is_stuck_only_once_past_its_slack():
    state = WebhookState.begin(100.0)
    assert not state.is_stuck(130.0, 30.0) and state.is_stuck(130.5, 30.0)
    state.record(OK, schedule=SCHEDULE, at=101.0)
    assert not state.is_stuck(1000.0, 30.0)


def test_a_delivery_queued_again_and_still_not_attempted_gets_twice_the_slack_each_time():
    # A queue with a backlog (after a receiver outage) must not be fed a new message per sweep: each would make
    # the one before it stale and the backlog longer, so that no message ever acts (seen in the chaos run).
    state = WebhookState.begin(0.0)
    waits = []
    for _ in range(6):
        due = state.due_at
        waits.append(next(w for w in (10, 20, 40, 80, 160, 320) if state.is_stuck(due + w + 0.5, 10.0)))
        assert not state.is_stuck(due + waits[-1], 10.0)
        state.requeue(due + waits[-1] + 0.5)
    assert waits == [10, 20, 40, 80, 160, 160]  # the slack, doubled per requeue, up to MAX_REQUEUE_BACKOFF times
    state.record(failed(), schedule=SCHEDULE, at=state.due_at)  # an attempt: the queue moves again
    assert state.requeues == 0 and not state.is_stuck(state.due_at + 10.0, 10.0)
    assert state.is_stuck(state.due_at + 10.5, 10.0)
    assert WebhookState.from_dict(state.to_dict()) == state


def test_a_state_reads_back_as_stored_and_an_old_stored_state_gets_the_defaults():
    state = WebhookState.begin(7.0, TRACEPARENT, "v=1")
    state.record(failed(), schedule=SCHEDULE, at=8.0)
    assert WebhookState.from_dict(state.to_dict()) == state
    old = WebhookState.from_dict({"id": "msg_old"})  # stored before the later fields existed
    assert old == WebhookState(
        id="msg_old", state="pending", seq=0, attempts=[], round_attempts=0, due_at=0.0, traceparent="", tracestate=""
    )
    assert WebhookState.from_dict({"id": "msg_old", "traceparent": None, "tracestate": None}).traceparent == ""
