"""The session store on a fake table faithful to Azure's conditional writes: one writer wins, the run list
keeps its order and its bound, retention removes every row."""

from __future__ import annotations

import pytest

from shared.runs.sessions import SessionConflict, SessionStore

from .fakes import FakeClock, FakeTable


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    from shared import clock as service_clock

    fake = FakeClock()
    monkeypatch.setattr(service_clock, "now", fake)
    return fake


async def test_a_new_session_reads_back_as_created_idle_and_can_be_saved_at_once(clock):
    store = SessionStore(FakeTable())
    created = await store.create()
    assert created.id.startswith("sess_") and len(created.id) == len("sess_") + 24
    read = await store.get(created.id)
    assert (
        read.id,
        read.created_at,
        read.last_response_id,
        read.active_run_id,
        read.active_since,
        read.updated_at,
    ) == (created.id, clock.now, None, None, 0.0, clock.now)
    assert (created.created_at, created.active_since, created.updated_at) == (clock.now, 0.0, clock.now)
    created.active_run_id = "run_a"
    await store.save(created)  # the ETag create returned is the current one
    clock.advance(5)
    created.active_run_id = None
    await store.save(created)  # and so is the one the save returned
    again = await store.get(created.id)
    assert again.active_run_id is None and again.updated_at == clock.now and again.created_at == clock.now - 5
    assert again.last_response_id is None  # no run has ended in it: the first turn continues from nothing


async def test_of_two_writers_of_a_session_the_second_fails_and_changes_nothing(clock):
    store = SessionStore(FakeTable())
    session = await store.create()
    first, second = await store.get(session.id), await store.get(session.id)
    first.active_run_id, first.last_response_id = "run_first", "resp_1"
    await store.save(first)
    second.active_run_id, second.last_response_id = "run_second", "resp_2"
    with pytest.raises(SessionConflict):
        await store.save(second)  # its ETag is stale
    kept = await store.get(session.id)
    assert (kept.active_run_id, kept.last_response_id) == ("run_first", "resp_1")


async def test_saving_a_session_that_was_purged_is_a_conflict_not_a_resurrection(clock):
    table = FakeTable()
    store = SessionStore(table)
    session = await store.create()
    await store.purge(session.id)
    with pytest.raises(SessionConflict):
        await store.save(session)
    assert await store.get(session.id) is None and not table.rows


async def test_a_session_stored_before_updated_at_existed_reads_its_creation_time(clock):
    table = FakeTable()
    await table.create_entity(
        {
            "PartitionKey": "sess_old",
            "RowKey": "session",
            "created_at": 123.0,
            "last_response_id": "resp_9",
            "active_run_id": "",
            "active_since": 0.0,
        }
    )
    session = await SessionStore(table).get("sess_old")
    assert (session.created_at, session.updated_at, session.last_response_id, session.active_run_id) == (
        123.0,
        123.0,
        "resp_9",
        None,
    )


async def test_the_run_list_is_in_start_order_whatever_the_run_ids(clock):
    store = SessionStore(FakeTable())
    session = await store.create()
    # ids in the reverse order of their starts, starts a few milliseconds apart
    for run_id, offset in (("run_c", 0.0), ("run_b", 0.004), ("run_a", 0.009)):
        await store.add_run(session.id, run_id, clock.now + offset)
    await store.add_run(session.id, "run_c", clock.now)  # recorded twice (a retried start): listed once
    assert await store.run_ids(session.id) == ["run_c", "run_b", "run_a"]


async def test_the_run_list_is_bounded_by_its_limit(clock):
    store = SessionStore(FakeTable())
    session = await store.create()
    for n in range(101):
        await store.add_run(session.id, f"run_{n:03d}", clock.now + n)
    assert await store.run_ids(session.id, limit=2) == ["run_000", "run_001"]
    listed = await store.run_ids(session.id)
    assert len(listed) == 100 and listed[-1] == "run_099"  # the default bound


async def test_purge_deletes_the_session_and_its_whole_run_list_and_nothing_else(clock):
    table = FakeTable()
    store = SessionStore(table)
    gone, kept = await store.create(), await store.create()
    for n in range(3):
        await store.add_run(gone.id, f"run_{n}", clock.now + n)
    await store.add_run(kept.id, "run_k", clock.now)
    await store.purge(gone.id)
    assert await store.get(gone.id) is None and await store.run_ids(gone.id) == []
    assert {key[0] for key in table.rows} == {kept.id} and await store.run_ids(kept.id) == ["run_k"]
    await store.purge(gone.id)  # again: nothing left, no error


async def reserved(store: SessionStore, run_id: str, clock: FakeClock):
    session = await store.create()
    session.active_run_id, session.active_since = run_id, clock.now
    await store.save(session)
    return session


async def test_a_release_frees_the_session_only_from_the_run_that_holds_it(clock):
    store = SessionStore(FakeTable())
    session = await reserved(store, "run_a", clock)
    await store.release(session.id, "run_b")  # a start that failed after another run took the session
    assert (await store.get(session.id)).active_run_id == "run_a"
    await store.release(session.id, "run_a")
    assert (await store.get(session.id)).active_run_id is None
    await store.release(session.id, "run_a")  # again: nothing to give back, no error
    await store.purge(session.id)
    await store.release(session.id, "run_a")  # a session purged meanwhile: nothing to give back either
    assert await store.get(session.id) is None


async def test_a_release_racing_another_writer_is_tried_again(clock):
    table = FakeTable()
    store = SessionStore(table)
    session = await reserved(store, "run_a", clock)

    async def another_writer_first():
        table.before.pop("update_entity")
        await table.update_entity({"PartitionKey": session.id, "RowKey": "session", "last_response_id": "resp_1"})

    table.before["update_entity"] = another_writer_first
    await store.release(session.id, "run_a")
    released = await store.get(session.id)
    assert (released.active_run_id, released.last_response_id) == (None, "resp_1")


async def test_a_session_that_keeps_changing_under_a_release_is_a_conflict_after_five_tries(clock):
    table = FakeTable()
    store = SessionStore(table)
    session = await reserved(store, "run_a", clock)
    tries = 0

    async def another_writer_first():
        nonlocal tries
        tries += 1
        await table.upsert_entity({"PartitionKey": session.id, "RowKey": "session", "updated_at": float(tries)})

    table.before["update_entity"] = another_writer_first
    with pytest.raises(SessionConflict):
        await store.release(session.id, "run_a")
    assert tries == 5 and (await store.get(session.id)).active_run_id == "run_a"
