"""The Idempotency-Key store on a fake table faithful to Azure's conditional writes: bounds of a key, its
window, its scope, and claims racing each other."""

from __future__ import annotations

import hashlib

import pytest

from shared.errors import Conflict, InvalidRequest
from shared.runs.idempotency import MAX_KEY_LENGTH, WINDOW_SECONDS, IdempotencyStore

from .fakes import FakeClock, FakeTable

BODY, OTHER_BODY = '{"input":"hi"}', '{"input":"bye"}'


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    from shared import clock as service_clock

    fake = FakeClock()
    monkeypatch.setattr(service_clock, "now", fake)
    return fake


def error_body(error) -> tuple:
    return error.code, error.message, error.param, error.retry_after


@pytest.mark.parametrize("key", ["", "k" * (MAX_KEY_LENGTH + 1), "tab\there", "new\nline"])
async def test_a_key_that_is_empty_too_long_or_unprintable_is_refused_by_name(clock, key):
    table = FakeTable()
    with pytest.raises(InvalidRequest) as refused:
        await IdempotencyStore(table).claim(key, BODY, "run_a")
    assert error_body(refused.value) == (
        "invalid_idempotency_key",
        "Idempotency-Key must be 1 to 255 printable characters.",
        "Idempotency-Key",
        None,
    )
    assert not table.rows


async def test_a_key_of_the_longest_allowed_length_is_claimed(clock):
    claim = await IdempotencyStore(FakeTable()).claim("k" * MAX_KEY_LENGTH, BODY, "run_a")
    assert claim.is_new and claim.run_id == "run_a"


async def test_the_same_key_and_body_name_the_first_run_and_another_body_is_a_conflict(clock):
    store = IdempotencyStore(FakeTable())
    first = await store.claim("key-1", BODY, "run_a")
    assert (first.run_id, first.is_new) == ("run_a", True)
    clock.advance(10)
    again = await store.claim("key-1", BODY, "run_b")
    assert (again.run_id, again.is_new, again.digest, again.claimed_at) == (
        "run_a",
        False,
        first.digest,
        clock.now - 10,
    )
    with pytest.raises(Conflict) as reused:
        await store.claim("key-1", OTHER_BODY, "run_c")
    assert error_body(reused.value) == (
        "idempotency_key_reused",
        "This Idempotency-Key was used with a different request body.",
        "Idempotency-Key",
        None,
    )


async def test_a_key_is_held_for_its_whole_window_and_free_after_it(clock):
    store = IdempotencyStore(FakeTable())
    await store.claim("key-1", BODY, "run_a")
    clock.advance(WINDOW_SECONDS)
    assert (await store.claim("key-1", BODY, "run_b")).run_id == "run_a"  # 24 h on: still held
    clock.advance(1)
    fresh = await store.claim("key-1", OTHER_BODY, "run_b")  # past the window: a new claim, whatever the body
    assert (fresh.run_id, fresh.is_new) == ("run_b", True)
    assert (await store.claim("key-1", OTHER_BODY, "run_c")).run_id == "run_b"


async def test_keys_are_scoped_by_caller_and_unscoped_keys_keep_their_stored_digest(clock):
    table = FakeTable()
    # A claim stored by an earlier version (the native API's keys were never scoped): PartitionKey = SHA-256(key).
    await table.create_entity(
        {
            "PartitionKey": hashlib.sha256(b"key-1").hexdigest(),
            "RowKey": "key",
            "run_id": "run_old",
            "body_hash": hashlib.sha256(BODY.encode()).hexdigest(),
            "claimed_at": clock.now,
        }
    )
    store = IdempotencyStore(table)
    assert (await store.claim("key-1", BODY, "run_new")).run_id == "run_old"
    alice = await store.claim("key-1", BODY, "run_alice", scope="alice")
    bob = await store.claim("key-1", BODY, "run_bob", scope="bob")
    assert (alice.run_id, alice.is_new, bob.run_id, bob.is_new) == ("run_alice", True, "run_bob", True)
    await store.release("key-1", "run_alice", scope="alice")
    assert (await store.claim("key-1", BODY, "run_alice2", scope="alice")).run_id == "run_alice2"
    assert (await store.claim("key-1", BODY, "run_x", scope="bob")).run_id == "run_bob"
    assert (await store.claim("key-1", BODY, "run_x")).run_id == "run_old"


async def test_a_release_frees_only_a_claim_that_is_still_ours(clock):
    store = IdempotencyStore(FakeTable())
    await store.claim("key-1", BODY, "run_a")
    await store.release("key-1", "run_other")
    assert (await store.claim("key-1", BODY, "run_b")).run_id == "run_a"
    await store.release("key-1", "run_a")
    assert (await store.claim("key-1", BODY, "run_b")).is_new
    await store.release("key-never-claimed", "run_a")  # nothing to release: no error


async def test_a_release_racing_a_new_claim_leaves_the_new_claim(clock):
    table = FakeTable()
    store = IdempotencyStore(table)
    claim = await store.claim("key-1", BODY, "run_a")

    async def reclaimed_meanwhile():
        table.before.pop("delete_entity")
        await table.update_entity({"PartitionKey": claim.digest, "RowKey": "key", "claimed_at": clock.now + 1})

    table.before["delete_entity"] = reclaimed_meanwhile
    await store.release("key-1", "run_a")
    assert table.entity(claim.digest, "key")["claimed_at"] == clock.now + 1


async def test_a_claim_released_between_its_create_and_its_read_is_claimed_again(clock):
    table = FakeTable()
    store = IdempotencyStore(table)
    await store.claim("key-1", BODY, "run_a")

    async def released_meanwhile():
        table.before.pop("get_entity")
        await store.release("key-1", "run_a")

    table.before["get_entity"] = released_meanwhile
    claim = await store.claim("key-1", BODY, "run_b")
    assert (claim.run_id, claim.is_new) == ("run_b", True)


async def test_a_key_that_keeps_changing_under_the_claim_is_busy_after_three_tries(clock):
    table = FakeTable()
    store = IdempotencyStore(table)
    other = await store.claim("key-1", BODY, "run_other")
    row, tries = table.entity(other.digest, "key"), 0

    async def claimed_by_another():
        nonlocal tries
        tries += 1
        await table.upsert_entity(row)

    async def released_by_it():
        await table.delete_entity(other.digest, "key")

    table.before["create_entity"], table.before["get_entity"] = claimed_by_another, released_by_it
    with pytest.raises(Conflict) as busy:
        await store.claim("key-1", BODY, "run_b")
    assert error_body(busy.value) == (
        "idempotency_key_busy",
        "This Idempotency-Key is being claimed concurrently; retry.",
        "Idempotency-Key",
        1,
    )
    assert tries == 3


async def test_an_expired_claim_taken_over_by_two_starts_at_once_goes_to_one(clock):
    table = FakeTable()
    store = IdempotencyStore(table)
    await store.claim("key-1", BODY, "run_old")
    clock.advance(WINDOW_SECONDS + 1)

    async def the_other_start_takes_it_first():
        table.before.pop("update_entity")
        other = await IdempotencyStore(table).claim("key-1", BODY, "run_other")
        assert (other.run_id, other.is_new) == ("run_other", True)

    table.before["update_entity"] = the_other_start_takes_it_first
    mine = await store.claim("key-1", BODY, "run_mine")
    assert (mine.run_id, mine.is_new) == ("run_other", False)


async def test_a_take_over_wins_only_over_the_claim_it_read(clock):
    store = IdempotencyStore(FakeTable())
    await store.claim("key-1", BODY, "run_dead")
    stale = await store.claim("key-1", BODY, "run_b")
    clock.advance(60)
    assert await store.take_over("key-1", OTHER_BODY, "run_b", stale)
    claim = await store.claim("key-1", OTHER_BODY, "run_c")
    assert (claim.run_id, claim.is_new, claim.claimed_at) == ("run_b", False, clock.now)
    assert not await store.take_over("key-1", BODY, "run_c", stale)  # it changed since `stale` was read
    assert (await store.claim("key-1", OTHER_BODY, "run_d")).run_id == "run_b"


async def test_purge_deletes_a_key_only_once_its_window_has_passed(clock):
    table = FakeTable()
    store = IdempotencyStore(table)
    claim = await store.claim("key-1", BODY, "run_a")
    clock.advance(WINDOW_SECONDS)
    await store.purge(claim.digest)
    assert table.entity(claim.digest, "key") is not None  # not past it yet
    clock.advance(1)

    async def claimed_again_meanwhile():
        table.before.pop("delete_entity")
        await store.claim("key-1", BODY, "run_b")  # expired: a fresh claim replaces it

    table.before["delete_entity"] = claimed_again_meanwhile
    await store.purge(claim.digest)
    assert table.entity(claim.digest, "key")["run_id"] == "run_b"  # the fresher claim is kept
    clock.advance(WINDOW_SECONDS + 1)
    await store.purge(claim.digest)
    assert table.entity(claim.digest, "key") is None
    await store.purge(claim.digest)  # already gone: no error


async def test_a_key_claimed_again_after_its_window_names_its_row_for_retention(clock):
    # The start notes the new claim's retention date under the digest the claim returns: a claim that took over an
    # expired row must name that row too, or retention never deletes the key.
    table = FakeTable()
    store = IdempotencyStore(table)
    first = await store.claim("key-1", BODY, "run_a")
    clock.advance(WINDOW_SECONDS + 1)
    again = await store.claim("key-1", BODY, "run_b")
    assert (again.run_id, again.is_new, again.digest) == ("run_b", True, first.digest)
    clock.advance(WINDOW_SECONDS + 1)
    await store.purge(again.digest)
    assert not table.rows
