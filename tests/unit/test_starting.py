"""Starting runs on fakes: sessions under concurrent starts, failed starts, slow starts, idempotency, webhooks."""

from __future__ import annotations

import asyncio

import pytest

from shared.errors import Conflict, InvalidRequest, Unavailable, UpstreamError
from shared.provider import ProviderError
from shared.runs.idempotency import IdempotencyStore
from shared.runs.requests import RunRequest

from .fakes import world


async def test_concurrent_starts_on_one_session_give_exactly_one_run(monkeypatch):
    # The defect: the session names run A before A's row exists; a second start in that gap read A as
    # missing, took the session over, and both provider responses continued from the same response.
    w = world(monkeypatch)
    session = await w.services.starter.open_session()
    first_recording, let_first_go = asyncio.Event(), asyncio.Event()

    async def first_start_pauses_before_recording_its_run():
        w.runs.before.pop("create_entity")  # only the first start pauses here
        first_recording.set()
        await let_first_go.wait()

    w.runs.before["create_entity"] = first_start_pauses_before_recording_its_run
    first = asyncio.create_task(w.services.starter.start(RunRequest(input="one", session_id=session.id)))
    await first_recording.wait()  # the session is reserved for the first run, whose row does not exist yet
    with pytest.raises(Conflict) as second:
        await w.services.starter.start(RunRequest(input="two", session_id=session.id))
    assert second.value.code == "session_busy"
    let_first_go.set()
    run = (await first).run
    assert run.is_active and w.backend.count("start") == 1
    _, runs = await w.services.reader.session(session.id)
    assert [r.id for r in runs] == [run.id]


async def test_a_session_reservation_left_by_a_dead_start_is_taken_over_after_the_start_grace(monkeypatch):
    w = world(monkeypatch)
    session = await w.services.starter.open_session()
    await w.tables["sessions"].update_entity(
        {"PartitionKey": session.id, "RowKey": "session", "active_run_id": "run_deadbeef", "active_since": w.clock.now}
    )
    with pytest.raises(Conflict):
        await w.services.starter.start(RunRequest(input="x", session_id=session.id))
    w.clock.advance(w.services.starter.start_grace + 1)
    run = (await w.services.starter.start(RunRequest(input="x", session_id=session.id))).run
    assert run.is_active and run.session_id == session.id
    assert (await w.tables["sessions"].get_entity(session.id, "session"))["active_run_id"] == run.id


async def test_a_session_whose_run_ended_without_advancing_is_repaired_by_the_next_start(monkeypatch):
    w = world(monkeypatch)
    session = await w.services.starter.open_session()
    first = (await w.services.starter.start(RunRequest(input="one", session_id=session.id))).run
    # The first run ends, but the host dies before advancing the session.
    await w.runs.update_entity({"PartitionKey": first.id, "RowKey": "run", "status": "completed"})
    second = (await w.services.starter.start(RunRequest(input="two", session_id=session.id))).run
    assert w.backend.responses[second.response_id].params["previous_response_id"] == first.response_id


async def test_a_refused_start_leaves_nothing_behind(monkeypatch):
    w = world(monkeypatch)
    session = await w.services.starter.open_session()
    # (a 502: whether it created the response is unknown, so the start is refused; a 429/503 queues it instead)
    w.backend.fail["start"] = [ProviderError(transient=True, status=502, message="bad gateway", retry_after=3)]
    with pytest.raises(Unavailable) as refused:
        await w.services.starter.start(RunRequest(input="x", session_id=session.id), idempotency_key="k1")
    assert refused.value.retry_after == 3
    assert list(w.runs.rows) == [] and w.index.entity("open", "x") is None
    assert not [k for k in w.index.rows if k[0] == "open"]
    assert (await w.services.reader.session(session.id))[0].active_run_id is None
    assert not w.tables["idempotency"].rows  # the key is free again
    w.backend.fail["start"] = [ProviderError(transient=False, status=401, message="bad key")]
    with pytest.raises(UpstreamError):
        await w.services.starter.start(RunRequest(input="x"))
    w.backend.fail["start"] = [ProviderError(transient=False, status=400, message="no such model")]
    with pytest.raises(InvalidRequest) as rejected:
        await w.services.starter.start(RunRequest(input="x"))
    assert rejected.value.code == "provider_rejected"


async def test_a_failed_start_does_not_delete_a_run_a_concurrent_cancel_ended(monkeypatch):
    w = world(monkeypatch)

    async def cancelled_while_the_provider_is_asked():
        run_id = next(key[0] for key in w.runs.rows)
        await w.services.canceller.cancel(run_id)

    w.backend.before["start"] = cancelled_while_the_provider_is_asked
    w.backend.fail["start"] = [ProviderError(transient=True, status=502, message="bad gateway")]
    with pytest.raises(Unavailable):
        await w.services.starter.start(RunRequest(input="x", webhook_url="http://127.0.0.1:9/h"))
    ((run_id, _),) = w.runs.rows
    kept = await w.run(run_id)
    assert kept.status == "cancelled" and kept.webhook is not None  # its webhook still tells the caller


async def test_a_start_the_sweeper_gave_up_on_cancels_its_provider_response(monkeypatch):
    w = world(monkeypatch)

    async def too_slow():  # the sweeper fails the run as start_interrupted while the create is in flight
        w.clock.advance(w.services.starter.start_grace + w.settings.sweep_grace + 1)
        await w.services.sweeper.sweep()

    w.backend.before["start"] = too_slow
    run = (await w.services.starter.start(RunRequest(input="x"))).run
    assert run.status == "failed" and run.result["error"]["code"] == "start_interrupted"
    (response,) = w.backend.responses.values()
    assert response.status == "cancelled"  # not left running at the provider


async def test_storage_failing_after_the_provider_accepted_cancels_the_response(monkeypatch):
    from azure.core.exceptions import ServiceRequestError

    w = world(monkeypatch)

    async def storage_breaks():
        w.runs.fail_next.append(ServiceRequestError("storage down"))

    w.backend.before["start"] = storage_breaks
    with pytest.raises(ServiceRequestError):
        await w.services.starter.start(RunRequest(input="x"))
    # Stopped (it was running), then deleted with the run: nothing is left for the sweeper to fail.
    assert [name for name, _ in w.backend.calls] == ["start", "cancel", "delete"] and not w.backend.responses
    assert not w.runs.rows


async def test_an_idempotency_key_returns_the_same_run_and_refuses_another_body(monkeypatch):
    w = world(monkeypatch)
    first = (await w.services.starter.start(RunRequest(input="x"), idempotency_key="key-1")).run
    again = (await w.services.starter.start(RunRequest(input="x"), idempotency_key="key-1")).run
    assert again.id == first.id and w.backend.count("start") == 1
    with pytest.raises(Conflict) as reused:
        await w.services.starter.start(RunRequest(input="y"), idempotency_key="key-1")
    assert reused.value.code == "idempotency_key_reused"
    with pytest.raises(InvalidRequest):
        await w.services.starter.start(RunRequest(input="x"), idempotency_key="\x00bad")


async def test_an_idempotency_key_held_by_a_start_in_flight_is_busy_then_taken_over_if_it_died(monkeypatch):
    w = world(monkeypatch)
    # What a start in flight (or one that died) holds: the claim, and no run yet.
    await IdempotencyStore(w.tables["idempotency"]).claim("key-2", RunRequest(input="x").fingerprint(), "run_ghost")
    with pytest.raises(Conflict) as busy:
        await w.services.starter.start(RunRequest(input="x"), idempotency_key="key-2")
    assert busy.value.code == "idempotency_key_busy" and busy.value.retry_after == 1
    w.clock.advance(w.services.starter.start_grace + 1)
    run = (await w.services.starter.start(RunRequest(input="x"), idempotency_key="key-2")).run
    assert run.is_active and w.backend.count("start") == 1


async def test_webhooks_are_refused_when_no_signing_secret_is_set_and_runs_without_them_work(monkeypatch):
    w = world(monkeypatch, WEBHOOK_SIGNING_SECRETS="")
    with pytest.raises(InvalidRequest) as refused:
        await w.services.starter.start(RunRequest(input="x", webhook_url="https://example.com/hook"))
    assert refused.value.code == "webhooks_disabled" and refused.value.param == "webhook_url"
    assert (await w.services.starter.start(RunRequest(input="x"))).run.is_active


async def test_an_unresolvable_webhook_host_is_a_bad_request_naming_the_field(monkeypatch):
    w = world(monkeypatch, WEBHOOK_ALLOW_PRIVATE_ADDRESSES="false")
    with pytest.raises(InvalidRequest) as refused:
        await w.services.starter.start(RunRequest(input="x", webhook_url="http://no-such-host.invalid/hook"))
    assert refused.value.param == "webhook_url" and "does not resolve" in refused.value.message
    assert w.backend.count("start") == 0 and not w.runs.rows


async def test_a_run_finished_at_once_answers_with_its_result(monkeypatch):
    w = world(monkeypatch)
    w.backend.finish_at_once = True
    run = (await w.services.starter.start(RunRequest(input="x"))).run
    assert run.status == "completed" and run.result["output_text"] == "done"
    assert not w.poll_queue.sent and w.index.entity("open", run.id) is None


async def test_a_retry_with_the_same_key_never_gets_a_run_whose_start_may_still_fail(monkeypatch):
    # Found by the chaos run: the retry got the first start's run (not yet accepted by the provider); the
    # provider then refused the first start, its run was deleted, and the id the retry held answered 404.
    w = world(monkeypatch)
    asked, refuse = asyncio.Event(), asyncio.Event()

    async def the_provider_thinks():
        w.backend.before.pop("start")
        asked.set()
        await refuse.wait()

    w.backend.before["start"] = the_provider_thinks
    w.backend.fail["start"] = [ProviderError(transient=True, status=502, message="bad gateway")]
    first = asyncio.create_task(w.services.starter.start(RunRequest(input="x"), idempotency_key="k-race"))
    await asked.wait()
    with pytest.raises(Conflict) as busy:
        await w.services.starter.start(RunRequest(input="x"), idempotency_key="k-race")
    assert busy.value.code == "idempotency_key_busy"
    refuse.set()
    with pytest.raises(Unavailable):
        await first
    retried = (await w.services.starter.start(RunRequest(input="x"), idempotency_key="k-race")).run
    assert (await w.run(retried.id)).is_active
