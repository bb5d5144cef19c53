"""The poll step, branch by branch, on fakes: messages, provider answers, deadlines, conflicts."""
from __future__ import annotations

import pytest

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
    run = await started(w)
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
    assert safety.delay >= w.services.settings.webhook_timeout
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
