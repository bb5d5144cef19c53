"""One trace per run on the fakes (in-memory span exporter): the caller's traceparent becomes the parent of the
start, every later step (polls, finish, webhook attempts, cancel, sweeper repairs, provider events) is in the
run's trace with the right parent, the context travels in every queue message, the webhook carries it, and
with telemetry off nothing is recorded while a caller's context still passes through."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from shared import telemetry
from shared.errors import UpstreamError
from shared.provider import ProviderError
from shared.runs.requests import RunRequest
from shared.telemetry.context import valid_traceparent
from shared.webhooks import Attempt
from tests.unit.fakes import world

CALLER_TRACE, CALLER_SPAN = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
CALLER = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
HOOK = "http://127.0.0.1:9/hook"


def hexid(value: int, width: int = 16) -> str:
    return format(value, f"0{width}x")


async def start(w, traceparent: str | None = CALLER, **fields):
    headers = {"traceparent": traceparent} if traceparent else {}
    with telemetry.incoming_request("POST /api/runs", headers, logger="bgruns.starting"):
        return (await w.services.starter.start(RunRequest(input="hello", **fields))).run


async def poll(w) -> list[str]:
    """Deliver the queued poll messages as the poll entry point does."""
    outcomes = []
    for message in w.poll_queue.take():
        with telemetry.consumed(
            "poll run", message, queue="runs-poll", logger="bgruns.polling", counter="poll_steps"
        ) as step:
            step.set(outcome=await w.services.poll_step.handle(message, 5))
            outcomes.append(step.fields["outcome"])
    return outcomes


async def deliver(w) -> list[str]:
    outcomes = []
    for message in w.webhook_queue.take():
        with telemetry.consumed(
            "deliver webhook", message, queue="runs-webhook", logger="bgruns.webhook_outbox"
        ) as step:
            step.set(outcome=await w.services.outbox.deliver(message))
            outcomes.append(step.fields["outcome"])
    return outcomes


async def test_a_run_is_one_trace_under_the_callers_span_with_the_right_parents(monkeypatch, recorded):
    w = world(monkeypatch)
    run = await start(w, webhook_url=HOOK)
    (started,) = recorded.spans("POST /api/runs")
    assert hexid(started.context.trace_id, 32) == CALLER_TRACE and hexid(started.parent.span_id) == CALLER_SPAN
    assert started.parent.is_remote and started.kind == SpanKind.SERVER
    assert run.traceparent == f"00-{CALLER_TRACE}-{hexid(started.context.span_id)}-01"
    assert started.attributes["bgruns.run_id"] == run.id

    w.backend.responses[run.response_id].status = "in_progress"
    assert await poll(w) == ["pending"]
    w.backend.responses[run.response_id].complete("the answer")
    assert await poll(w) == ["completed"]  # ends the run and makes the first webhook attempt inline
    assert await deliver(w) == ["stale"]  # the queued safety net finds the attempt recorded

    spans = recorded.spans()
    assert {hexid(s.context.trace_id, 32) for s in spans} == {CALLER_TRACE}
    by_id = {s.context.span_id: s for s in spans}
    polls = recorded.spans("poll run")
    assert len(polls) == 2 and all(s.parent.span_id == started.context.span_id for s in polls)
    assert all(s.kind == SpanKind.CONSUMER for s in polls)
    assert [s.attributes.get("bgruns.provider_status") for s in polls] == ["in_progress", "completed"]
    assert polls[0].attributes["bgruns.next_poll_in"] > 0 and polls[1].attributes["bgruns.outcome"] == "completed"
    (create,) = recorded.spans("provider create")
    assert create.parent.span_id == started.context.span_id and create.kind == SpanKind.CLIENT
    retrieves = recorded.spans("provider retrieve")
    assert [by_id[s.parent.span_id].name for s in retrieves] == ["poll run", "poll run"]
    (attempt,) = recorded.spans("webhook POST")
    assert attempt.parent.span_id == polls[1].context.span_id and attempt.kind == SpanKind.CLIENT
    assert attempt.attributes["http.response.status_code"] == 204
    (safety,) = recorded.spans("deliver webhook")
    assert safety.parent.span_id == started.context.span_id
    # The webhook POST carried its own span's context: the receiver's work continues the run's trace.
    assert w.sender.headers[0]["traceparent"] == f"00-{CALLER_TRACE}-{hexid(attempt.context.span_id)}-01"


async def test_without_a_caller_context_the_start_is_the_root_of_the_runs_trace(monkeypatch, recorded):
    w = world(monkeypatch)
    run = await start(w, traceparent="00-not-a-traceparent-01")
    (started,) = recorded.spans("POST /api/runs")
    assert started.parent is None and valid_traceparent(run.traceparent)
    await poll(w)
    assert recorded.spans("poll run")[0].context.trace_id == started.context.trace_id


async def test_every_queue_message_of_a_run_carries_its_trace_context(monkeypatch, recorded):
    w = world(monkeypatch, WEBHOOK_RETRY_SCHEDULE="0,5,10")
    run = await start(w, webhook_url=HOOK)
    context = {"traceparent": run.traceparent}
    assert all(s.message["traceparent"] == run.traceparent for s in w.poll_queue.sent)
    # a provider hiccup re-enqueues with the context ...
    message = w.poll_queue.take()[0]
    w.backend.fail["observe"] = [ProviderError(transient=True, status=503, message="busy")]
    assert await w.services.poll_step.handle(message) == "retry"
    # ... so does the sweeper restarting a lost chain ...
    w.poll_queue.take()
    w.clock.advance(3600 * 0.5)
    with telemetry.timed("sweep runs", logger="bgruns.sweeping"):
        assert (await w.services.sweeper.sweep()).get("polls") == 1
    (repaired,) = w.poll_queue.take()
    assert repaired["traceparent"] == run.traceparent
    # ... and every webhook message: the first, the retries, a redelivery.
    w.sender.results = [Attempt(at="2026-01-01T00:00:00.000Z", ok=False, status_code=500, error="HTTP 500")]
    w.backend.responses[run.response_id].complete()
    assert await w.services.poll_step.handle(repaired) == "completed"
    assert all(s.message.items() >= context.items() for s in w.webhook_queue.sent)
    assert len(w.webhook_queue.sent) == 2  # the safety net and the retry after the failed inline attempt
    w.webhook_queue.take()
    await w.services.outbox.redeliver(run.id)
    assert all(s.message.items() >= context.items() for s in w.webhook_queue.sent)
    # the repair is in the run's trace (a child of its start), linked to the sweep that found it
    (repair,) = recorded.spans("repair run")
    (sweep,) = recorded.spans("sweep runs")
    started = recorded.spans("POST /api/runs")[0]
    assert repair.parent.span_id == started.context.span_id and repair.context.trace_id == started.context.trace_id
    assert [link.context.span_id for link in repair.links] == [sweep.context.span_id]
    assert sweep.context.trace_id != started.context.trace_id
    assert repair.attributes["bgruns.outcome"] == "poll_chain_restarted"


async def test_steps_without_a_message_continue_the_runs_trace_and_link_the_invocation(monkeypatch, recorded):
    w = world(monkeypatch)
    run = await start(w)
    other = "00-11111111111111111111111111111111-2222222222222222-01"
    w.backend.fail["cancel"] = [ProviderError(transient=False, status=403, message="not allowed")]
    with telemetry.incoming_request(
        "POST /api/runs/{run_id}/cancel", {"traceparent": other}, logger="bgruns.cancelling"
    ):
        with pytest.raises(UpstreamError):
            await w.services.canceller.cancel(run.id)
    (cancel,) = recorded.spans("cancel run")
    (entry,) = recorded.spans("POST /api/runs/{run_id}/cancel")
    started = recorded.spans("POST /api/runs")[0]
    assert cancel.parent.span_id == started.context.span_id and cancel.context.trace_id == started.context.trace_id
    assert [link.context.span_id for link in cancel.links] == [entry.context.span_id]
    assert entry.context.trace_id == 0x11111111111111111111111111111111
    (refused,) = recorded.spans("provider cancel")
    assert refused.parent.span_id == cancel.context.span_id and refused.attributes["error.type"] == "provider_403"


async def test_a_refused_cancel_is_in_the_timeline_and_the_poll_chain_saves_over_its_note(monkeypatch, recorded):
    w = world(monkeypatch)
    run = await start(w)
    message = w.poll_queue.take()[0]
    w.backend.fail["cancel"] = [ProviderError(transient=False, status=403, message="not allowed")]

    async def cancel_meanwhile():  # lands between the poll step's read and its save
        w.backend.before.pop("observe")
        with pytest.raises(UpstreamError):
            await w.services.canceller.cancel(run.id)

    w.backend.before["observe"] = cancel_meanwhile
    assert await w.services.poll_step.handle(message) == "pending"
    fresh = await w.run(run.id)
    (next_message,) = w.poll_queue.take()
    assert (next_message["seq"], next_message["nonce"]) == (fresh.poll_seq, fresh.poll_nonce)  # the chain goes on
    kinds = [e["type"] for e in fresh.timeline.view()["entries"]]
    assert kinds == ["created", "provider_accepted", "cancel_requested", "cancel_refused", "poll"]


async def test_with_telemetry_off_nothing_is_recorded_and_the_callers_context_passes_through(monkeypatch):
    exporter = InMemorySpanExporter()
    TracerProvider().add_span_processor(SimpleSpanProcessor(exporter))  # exists, but the service was not given it
    w = world(monkeypatch)
    run = await start(w, webhook_url=HOOK)
    assert not telemetry.enabled() and run.traceparent == CALLER
    assert w.poll_queue.sent[0].message["traceparent"] == CALLER
    w.backend.responses[run.response_id].complete()
    assert await poll(w) == ["completed"]
    assert w.sender.headers == [{"traceparent": CALLER}]
    assert exporter.get_finished_spans() == ()
    # the run's timeline is kept all the same: it is part of the API, not of the telemetry
    timeline = w.services.views.render(await w.run(run.id), timeline=True)["timeline"]
    assert {"finished", "webhook_attempt"} <= {e["type"] for e in timeline["entries"]}
    assert timeline["trace_id"] == CALLER_TRACE
