"""DELETE (the facade's DELETE /responses/{id}) on fakes: it removes every row the run owns, and no interleaving
with the run's end or with its own start in flight leaves a row, a ghost in the run lists, or the provider's
stored response behind (issue 21).

The races are forced exhaustively: the other operation is counted step by step once (every storage request,
queue message and provider call it makes), then, for each step in turn and in a fresh world, the DELETE runs to
completion right before that step, and the other operation goes on.
"""

from __future__ import annotations

from functools import partial

import pytest

from shared.runs.requests import RunRequest

from .fakes import Steps, world

SECRET = "whsec_" + "B" * 43
HOOK = "http://127.0.0.1:9/h"


def traces_of(w, run_id: str) -> list:
    """Every row of every table that names the run (its key, its run_id), and its blobs. The Idempotency-Key's
    row is the caller's, not the run's: it stays its 24 hours (a retry with it after the start grace starts a
    new run), and retention removes it."""
    found = [
        (name, key)
        for name, table in w.tables.items()
        if name != "idempotency"
        for key, (data, _) in table.rows.items()
        if run_id in key[0] or run_id in key[1] or data.get("run_id") == run_id
    ]
    return found + [blob for blob in w.blobs.blobs if blob.startswith(run_id)]


async def assert_gone(w, run_id: str, response_id: str | None, where: str = "") -> None:
    assert traces_of(w, run_id) == [], where
    if response_id:
        assert response_id not in w.backend.responses, where  # the provider's stored response was deleted
        assert not [key for key in w.index.rows if key[0] == f"response-{response_id}"], where
    assert not (await w.services.lister.page()).runs, where  # no ghost in GET /api/runs
    sent = len(w.sender.sent)
    for message in w.webhook_queue.take():  # a webhook queued for the run finds nothing to send
        assert await w.services.outbox.deliver(message) == "stale", where
    assert len(w.sender.sent) == sent, where


async def a_run(w, session, **fields):
    request = RunRequest(input="hi", session_id=session.id if session else None, webhook_url=HOOK, **fields)
    return (await w.services.starter.start(request, idempotency_key="k")).run


async def test_delete_removes_every_row_the_run_owns(monkeypatch):
    # The defect: the `response-<id>` (push) and `expires-<day>` index rows stayed forever, and the session's row.
    w = world(monkeypatch, PROVIDER_WEBHOOK_SECRETS=SECRET)
    session = await w.services.starter.open_session()
    run = await a_run(w, session, instructions="x" * 70_000)  # a request part in a blob
    w.backend.responses[run.response_id].complete()
    await w.drain_polls()
    for message in w.webhook_queue.take():
        await w.services.outbox.deliver(message)
    assert len(traces_of(w, run.id)) >= 6  # run, blob, list rows (all, session), expiry, session row
    await w.services.deleter.delete(run.id)
    await assert_gone(w, run.id, run.response_id)


async def ending_run(monkeypatch, **env):
    """A run whose provider response has completed: its next poll ends it."""
    w = world(monkeypatch, **env)
    session = await w.services.starter.open_session()
    run = await a_run(w, session)
    w.backend.responses[run.response_id].complete()
    return w, run


async def steps_of(w, operation) -> list[str]:
    steps = Steps()
    steps.wrap_world(w)
    with steps.counting():
        await operation()
    return steps.names


async def delete_the_only_run(w, deleted: list) -> None:
    run_id = next(key[0] for key in w.runs.rows)
    deleted.append(await w.services.deleter.delete(run_id))


async def interleaved(w, operation, at: int, other):
    """`operation`, with `other` run to completion right before its step number `at`."""
    racing = Steps(at, pause=other)
    racing.wrap_world(w)
    with racing.counting():
        return await operation()


@pytest.mark.parametrize("push", [False, True])
async def test_a_delete_racing_the_runs_end_at_any_step_leaves_no_ghost(monkeypatch, push):
    env = {"PROVIDER_WEBHOOK_SECRETS": SECRET} if push else {}
    w, _ = await ending_run(monkeypatch, **env)
    names = await steps_of(w, w.drain_polls)
    assert "runs.update_entity" in names  # the terminal save, then the follow-ups
    for at, name in enumerate(names):
        w, run = await ending_run(monkeypatch, **env)
        await interleaved(w, w.drain_polls, at, partial(w.services.deleter.delete, run.id))
        await assert_gone(w, run.id, run.response_id, f"DELETE before step {at} of the end ({name})")


async def test_an_end_racing_a_delete_at_any_step_leaves_no_ghost(monkeypatch):
    w, run = await ending_run(monkeypatch)
    names = await steps_of(w, lambda: w.services.deleter.delete(run.id))
    for at, name in enumerate(names):
        w, run = await ending_run(monkeypatch)
        await interleaved(w, partial(w.services.deleter.delete, run.id), at, w.drain_polls)
        await assert_gone(w, run.id, run.response_id, f"the end before step {at} of the DELETE ({name})")


@pytest.mark.parametrize("finish_at_once", [False, True])
async def test_a_delete_during_the_start_takes_the_provider_response_too(monkeypatch, finish_at_once):
    # The defect: the start saw its run gone and cancelled the provider response, which stayed stored there.
    async def fresh():
        w = world(monkeypatch, PROVIDER_WEBHOOK_SECRETS=SECRET)
        w.backend.finish_at_once = finish_at_once
        return w, await w.services.starter.open_session()

    w, session = await fresh()
    names = await steps_of(w, lambda: a_run(w, session))
    recorded = names.index("runs.create_entity") + 1  # from then on a DELETE can find the run
    for at, name in list(enumerate(names))[recorded:]:
        w, session = await fresh()
        deleted: list = []
        await interleaved(w, partial(a_run, w, session), at, partial(delete_the_only_run, w, deleted))
        where = f"DELETE before step {at} of the start ({name})"
        (run_id,) = deleted
        assert not w.backend.responses, where  # created, then cancelled and deleted
        await assert_gone(w, run_id, None, where)
        assert await w.drain_polls() in ([], ["unknown-run"]), where
        state, runs = await w.services.reader.session(session.id)
        assert state.active_run_id is None and runs == [], where
