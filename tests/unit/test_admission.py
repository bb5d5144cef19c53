"""Admission on fakes: a start the provider has no capacity for is queued and started later, exactly once at the
provider; what cannot wait fails at once; a queued run is cancelled, bounded, expired, swept like any other."""

from __future__ import annotations

import httpx
import openai
import pytest

from shared.errors import Conflict, Unavailable, UpstreamError
from shared.provider import ProviderError
from shared.provider.errors import classify
from shared.runs.index import RunIndex
from shared.runs.requests import RunRequest

from .fakes import world


def busy(n: int = 1, retry_after: float | None = 7) -> list[ProviderError]:
    return [
        ProviderError(
            transient=True,
            status=429,
            message="Rate limit reached",
            retry_after=retry_after,
            code="rate_limit_exceeded",
        )
        for _ in range(n)
    ]


async def queued(w, **fields):
    w.backend.fail["start"] = busy()
    run = (await w.services.starter.start(RunRequest(input="hi", **fields))).run
    assert run.status == "queued" and run.response_id is None and run.admission is not None
    return run


async def next_step(w):
    """Handle the one message the poll queue holds (the run's next try or poll)."""
    (message,) = w.poll_queue.take()
    return await w.services.poll_step.handle(message)


async def test_a_start_the_provider_has_no_room_for_is_queued_then_started_once(monkeypatch):
    w = world(monkeypatch)
    run = await queued(w, webhook_url="http://127.0.0.1:9/h")
    sent = w.poll_queue.sent[-1]
    assert sent.delay >= 7  # the provider's Retry-After
    view = w.services.views.render(await w.run(run.id), timeline=True)
    assert view["status"] == "queued" and view["continuation_token"]
    assert view["admission"]["state"] == "waiting_for_capacity" and view["admission"]["attempts"] == 1
    assert view["admission"]["reason"] == "provider 429 rate_limit_exceeded"
    assert view["admission"]["next_try_at"] == pytest.approx(w.clock.now + sent.delay)
    assert "capacity_queued" in [e["type"] for e in view["timeline"]["entries"]]
    w.clock.advance(sent.delay)
    w.backend.fail["start"] = busy(retry_after=None)  # again: the backoff spaces the next try
    assert await next_step(w) == "capacity-waiting"
    assert (await w.run(run.id)).admission.attempts == 2
    w.clock.advance(w.poll_queue.sent[-1].delay)
    assert await next_step(w) == "capacity-granted"
    granted = await w.run(run.id)
    assert granted.response_id and granted.admission.granted_at is not None
    assert w.backend.count("start") == 3 and len(w.backend.responses) == 1  # three asked, one created
    assert "capacity_granted" in [e["type"] for e in w.timeline(granted)]
    w.backend.responses[granted.response_id].complete()
    assert await next_step(w) == "completed"
    assert w.sender.sent  # its webhook, as for any run


async def test_a_duplicated_try_never_makes_a_second_create(monkeypatch):
    w = world(monkeypatch)
    run = await queued(w)
    (message,) = w.poll_queue.take()
    assert await w.services.poll_step.handle(message) == "capacity-granted"
    assert await w.services.poll_step.handle(message) == "stale"
    assert w.backend.count("start") == 2 and (await w.run(run.id)).response_id


@pytest.mark.parametrize(
    "error",
    [
        ProviderError(
            transient=False, status=429, message="You exceeded your current quota", code="insufficient_quota"
        ),
        ProviderError(transient=False, status=401, message="Incorrect API key"),
    ],
)
async def test_what_no_waiting_fixes_fails_at_once(monkeypatch, error):
    w = world(monkeypatch)
    w.backend.fail["start"] = [error]
    with pytest.raises(UpstreamError):
        await w.services.starter.start(RunRequest(input="hi"))
    assert not w.runs.rows and not w.poll_queue.sent


def _status_error(status: int, body: dict, headers: dict | None = None) -> openai.APIStatusError:
    request = httpx.Request("POST", "https://provider/v1/responses")
    response = httpx.Response(status, json={"error": body}, headers=headers or {}, request=request)
    return openai.APIStatusError(body["message"], response=response, body=body)


def test_a_request_too_large_for_the_budget_is_not_worth_waiting_for():
    too_large = classify(
        _status_error(
            429,
            {
                "message": "Request too large for gpt-4o in organization org-x on tokens "
                "per min (TPM): Limit 30000, Requested 45000.",
                "type": "tokens",
                "code": "rate_limit_exceeded",
            },
        )
    )
    limited = classify(
        _status_error(
            429,
            {
                "message": "Rate limit reached for gpt-4o on requests per min (RPM)",
                "type": "requests",
                "code": "rate_limit_exceeded",
            },
            {"retry-after-ms": "250"},
        )
    )
    quota = classify(_status_error(429, {"message": "You exceeded your current quota", "code": "insufficient_quota"}))
    assert (too_large.transient, limited.transient, quota.transient) == (False, True, False)
    assert limited.retry_after == 0.25


async def test_an_unclear_create_is_refused_at_the_start_and_never_repeated_later(monkeypatch):
    w = world(monkeypatch)
    w.backend.fail["start"] = [ProviderError(transient=True, status=None, message="provider unreachable: timeout")]
    with pytest.raises(Unavailable):  # as before: the caller decides, nothing of it is kept
        await w.services.starter.start(RunRequest(input="hi"))
    run = await queued(w)
    w.clock.advance(10)
    w.backend.fail["start"] = [ProviderError(transient=True, status=None, message="provider unreachable: timeout")]
    assert await next_step(w) == "failed"
    ended = await w.run(run.id)
    assert ended.result["error"]["code"] == "start_interrupted" and "not repeated" in ended.result["error"]["message"]
    assert w.backend.count("start") == 3 and not w.poll_queue.sent


async def try_cut_mid_create(w):
    """Handle the queued run's next try with the host dying during its create; returns the try's message."""

    async def host_dies():
        raise KeyboardInterrupt  # a BaseException: nothing after the create runs

    w.backend.before["start"] = host_dies
    (message,) = w.poll_queue.take()
    with pytest.raises(KeyboardInterrupt):
        await w.services.poll_step.handle(message)
    del w.backend.before["start"]
    return message


async def test_a_try_cut_mid_create_is_ended_by_the_sweeper_never_repeated(monkeypatch):
    w = world(monkeypatch)
    run = await queued(w)
    w.clock.advance(10)
    message = await try_cut_mid_create(w)
    assert await w.services.poll_step.handle(message) == "stale"  # the redelivered message: consumed
    assert (await w.services.sweeper.sweep()).get("starts") is None  # within the start grace: maybe still going
    w.clock.advance(w.services.starter.start_grace + w.settings.sweep_grace + 1)
    assert (await w.services.sweeper.sweep())["starts"] == 1
    assert (await w.run(run.id)).result["error"]["code"] == "start_interrupted"
    assert w.backend.count("start") == 2


async def test_a_lost_try_is_restarted_by_the_sweeper(monkeypatch):
    w = world(monkeypatch)
    run = await queued(w)
    w.poll_queue.take()  # lost
    w.clock.advance(7 * 1.2 + w.settings.sweep_grace + 1)
    assert (await w.services.sweeper.sweep())["polls"] == 1
    assert await next_step(w) == "capacity-granted"
    assert (await w.run(run.id)).response_id


async def test_cancel_while_queued_never_reaches_the_provider(monkeypatch):
    w = world(monkeypatch)
    run = await queued(w)
    cancelled = await w.services.canceller.cancel(run.id)
    assert cancelled.status == "cancelled"
    assert await next_step(w) == "already-terminal"
    assert w.backend.count("start") == 1 and w.backend.count("cancel") == 0


async def test_a_cancel_during_the_try_cancels_the_response_it_got(monkeypatch):
    w = world(monkeypatch)
    run = await queued(w)

    async def cancelled_meanwhile():
        await w.services.canceller.cancel(run.id)

    w.backend.before["start"] = cancelled_meanwhile
    assert await next_step(w) == "stale"
    assert (await w.run(run.id)).status == "cancelled"
    (response,) = w.backend.responses.values()
    assert response.status == "cancelled"


async def test_the_deadline_counts_from_acceptance(monkeypatch):
    w = world(monkeypatch)
    run = await queued(w, deadline_seconds=20)
    for _ in range(2):
        w.clock.advance(w.poll_queue.sent[-1].delay)
        w.backend.fail["start"] = busy(retry_after=30)
        assert await next_step(w) in ("capacity-waiting", "expired")
        if not w.poll_queue.sent:
            break
    ended = await w.run(run.id)
    assert ended.status == "expired" and ended.result["error"]["code"] == "deadline_exceeded"
    assert "never started" in ended.result["error"]["message"]
    assert ended.completed_at - ended.created_at <= 21
    assert w.backend.count("start") == 2  # the tries made before the deadline; none after


async def test_the_wait_is_bounded(monkeypatch):
    w = world(monkeypatch, ADMISSION_MAX_WAIT_SECONDS="30")
    run = await queued(w)
    while w.poll_queue.sent:
        w.clock.advance(w.poll_queue.sent[-1].delay)
        w.backend.fail["start"] = busy(retry_after=12)
        await next_step(w)
    ended = await w.run(run.id)
    assert ended.status == "failed" and ended.result["error"]["code"] == "capacity_wait_exceeded"
    assert 30 <= ended.completed_at - ended.admission.queued_at <= 31


async def test_admission_off_refuses_as_before(monkeypatch):
    w = world(monkeypatch, ADMISSION_MAX_WAIT_SECONDS="0")
    w.backend.fail["start"] = busy()
    with pytest.raises(Unavailable) as refused:
        await w.services.starter.start(RunRequest(input="hi"))
    assert refused.value.retry_after == 7
    assert not w.runs.rows


async def test_a_queued_streaming_start_is_created_streaming_when_granted(monkeypatch):
    w = world(monkeypatch)
    run = await queued(w, stream=True)
    streamed = []
    start = w.backend.start

    async def noting(params, *, stream):
        streamed.append(stream)
        return await start(params, stream=stream)

    w.backend.start = noting
    assert await next_step(w) == "capacity-granted"
    assert streamed == [True] and (await w.run(run.id)).response_id


async def test_a_queued_run_holds_its_session_and_its_idempotency_key(monkeypatch):
    w = world(monkeypatch)
    session = await w.services.starter.open_session()
    w.backend.fail["start"] = busy()
    run = (await w.services.starter.start(RunRequest(input="hi", session_id=session.id), idempotency_key="k")).run
    again = (await w.services.starter.start(RunRequest(input="hi", session_id=session.id), idempotency_key="k")).run
    assert again.id == run.id and again.status == "queued"
    with pytest.raises(Conflict) as taken:
        await w.services.starter.start(RunRequest(input="other", session_id=session.id))
    assert taken.value.code == "session_busy"
    assert await next_step(w) == "capacity-granted"
    w.backend.responses[(await w.run(run.id)).response_id].complete()
    assert await next_step(w) == "completed"
    follow = (await w.services.starter.start(RunRequest(input="next", session_id=session.id))).run
    assert w.backend.responses[follow.response_id].params["previous_response_id"] == (await w.run(run.id)).response_id


async def test_with_provider_webhooks_a_granted_run_is_found_by_its_response(monkeypatch):
    w = world(monkeypatch, PROVIDER_WEBHOOK_SECRETS="whsec_" + "B" * 43)
    run = await queued(w)
    assert await next_step(w) == "capacity-granted"
    response_id = (await w.run(run.id)).response_id
    assert await RunIndex(w.index).run_for_response(response_id) == run.id  # the provider's events find it


async def test_a_create_that_ends_at_once_ends_the_run(monkeypatch):
    w = world(monkeypatch)
    run = await queued(w, webhook_url="http://127.0.0.1:9/h")
    w.backend.finish_at_once = True
    assert await next_step(w) == "completed"
    ended = await w.run(run.id)
    assert ended.result["output_text"] == "done" and ended.admission.granted_at and w.sender.sent


@pytest.mark.parametrize(("status", "queues"), [(503, True), (500, False), (502, False), (504, False)])
async def test_an_overloaded_provider_queues_the_start_and_an_unclear_5xx_does_not(monkeypatch, status, queues):
    # 503 (overloaded) proves nothing was created; after a 500/502/504 the create may have been made.
    w = world(monkeypatch)
    w.backend.fail["start"] = [ProviderError(transient=True, status=status, message="provider trouble")]
    if queues:
        run = (await w.services.starter.start(RunRequest(input="hi"))).run
        assert run.status == "queued" and run.admission.reason == "provider 503"
        assert await next_step(w) == "capacity-granted"
    else:
        with pytest.raises(Unavailable):
            await w.services.starter.start(RunRequest(input="hi"))
        assert not w.runs.rows and not w.poll_queue.sent
    assert w.backend.count("start") == (2 if queues else 1)


async def test_a_try_that_loses_its_claim_to_another_writer_makes_no_create(monkeypatch):
    # Exactly once: a try creates only after it has consumed the chain position; one that lost the run to
    # another writer (here a cancel) between its read and its claim leaves the create to nobody.
    w = world(monkeypatch)
    run = await queued(w)

    async def cancelled_first():
        w.runs.before.pop("update_entity")
        await w.services.canceller.cancel(run.id)

    w.runs.before["update_entity"] = cancelled_first
    assert await next_step(w) == "stale"
    assert w.backend.count("start") == 1 and not w.backend.responses
    assert (await w.run(run.id)).status == "cancelled"


async def test_a_run_deleted_during_its_create_has_the_response_it_got_cancelled_and_deleted(monkeypatch):
    w = world(monkeypatch)
    run = await queued(w)

    async def deleted_meanwhile():
        await w.runs.delete_entity(run.id, "run")

    w.backend.before["start"] = deleted_meanwhile
    assert await next_step(w) == "stale"
    assert [call for call in w.backend.calls if call[0] in ("cancel", "delete")] == [
        ("cancel", "resp_1"),
        ("delete", "resp_1"),
    ]
    assert not w.backend.responses


@pytest.mark.parametrize("limit", ["deadline", "max_wait"])
async def test_a_try_exactly_at_the_deadline_or_the_end_of_the_wait_is_not_made(monkeypatch, limit):
    w = world(monkeypatch, ADMISSION_MAX_WAIT_SECONDS="30")
    run = await queued(w, deadline_seconds=20 if limit == "deadline" else 60)
    w.clock.now = run.deadline_at if limit == "deadline" else run.admission.queued_at + 30
    assert await next_step(w) == ("expired" if limit == "deadline" else "failed")
    assert w.backend.count("start") == 1
