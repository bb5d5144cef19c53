"""Per-caller quotas (shared/runs/quotas.py) on real Azurite: what an admission costs in storage requests, two
instances racing for the last slot or the last start of the minute, the rate's bucket, and the sweeper's reclaim
of a slot whose start died. The end-to-end behaviour (429s, headers, the SDK) is in test_caller_quotas.py."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter

import pytest

from shared import clock
from shared.errors import RateLimited
from shared.runs.quotas import CallerQuotas, Slot
from shared.runs.requests import new_run_id
from shared.settings import Quota, QuotaSettings, StorageSettings
from shared.storage import STORAGE_REQUESTS, open_storage

START_GRACE = 30.0


@pytest.fixture
async def instances(storage_connection_string):
    """Two instances of the service's storage clients (as two hosts have), tables created."""
    opened = [open_storage(StorageSettings(storage_connection_string, None, None, None, None)) for _ in range(2)]
    await opened[0].ensure_resources()
    yield opened
    for storage in opened:
        await storage.close()


def quotas(storage, **overrides: Quota) -> CallerQuotas:
    return CallerQuotas(storage.index, QuotaSettings(Quota(), overrides), start_grace=START_GRACE)


def caller() -> str:
    return f"c{uuid.uuid4().hex[:12]}"  # a fresh caller per test: the session's Azurite is shared


async def counted(coroutine) -> tuple[object, Counter]:
    before = Counter(STORAGE_REQUESTS)
    result = await coroutine
    return result, Counter({key[1]: n for key, n in (STORAGE_REQUESTS - before).items()})


async def test_an_admission_costs_two_storage_requests_and_a_release_one(instances):
    name = caller()
    q = quotas(instances[0], **{name: Quota(max_active=2, per_minute=100)})
    first_id, second_id = new_run_id(clock.now()), new_run_id(clock.now())
    slot, first = await counted(q.admit(name, first_id))  # the caller's row does not exist yet: created
    assert slot == Slot(name, first_id) and first == {"table.GET": 1, "table.POST": 1}
    _, steady = await counted(q.admit(name, second_id))  # steady state: the row exists, updated If-Match
    assert steady == {"table.GET": 1, "table.POST": 1}
    _, released = await counted(q.release(Slot(name, first_id)))
    assert released == {"table.DELETE": 1}
    _, unlimited = await counted(quotas(instances[0]).admit(caller(), new_run_id(clock.now())))
    assert unlimited == {}  # a caller without limits costs nothing
    held, sweep = await counted(quotas(instances[0], other=Quota(per_minute=5)).held_slots())
    assert held == [] and sweep == {}  # nor the sweeper anything, while no caller's active runs are capped


async def test_a_refusal_reads_once_and_writes_nothing(instances):
    name = caller()
    q = quotas(instances[0], **{name: Quota(max_active=1)})
    await q.admit(name, new_run_id(clock.now()))
    before = Counter(STORAGE_REQUESTS)
    with pytest.raises(RateLimited) as refused:
        await q.admit(name, new_run_id(clock.now()))
    assert Counter({key[1]: n for key, n in (STORAGE_REQUESTS - before).items()}) == {"table.GET": 1}
    assert (refused.value.code, refused.value.limit, refused.value.remaining) == ("rate_limit_exceeded", 1, 0)
    assert refused.value.headers["x-ratelimit-limit-requests"] == "1"


async def test_two_instances_racing_never_take_more_slots_than_the_cap(instances):
    name = caller()
    one, two = (quotas(storage, **{name: Quota(max_active=3)}) for storage in instances)
    outcomes = await asyncio.gather(
        *(q.admit(name, new_run_id(clock.now())) for q in [one, two] * 6), return_exceptions=True
    )
    admitted = [o for o in outcomes if isinstance(o, Slot)]
    assert len(admitted) == 3, outcomes
    assert all(isinstance(o, RateLimited) for o in outcomes if not isinstance(o, Slot)), outcomes
    await one.release(admitted[0])
    assert isinstance(await two.admit(name, new_run_id(clock.now())), Slot)  # the slot given back is free again


async def test_two_instances_racing_never_start_more_than_the_rate(instances):
    name = caller()
    one, two = (quotas(storage, **{name: Quota(per_minute=4)}) for storage in instances)
    outcomes = await asyncio.gather(
        *(q.admit(name, new_run_id(clock.now())) for q in [one, two] * 5), return_exceptions=True
    )
    refused = [o for o in outcomes if isinstance(o, RateLimited)]
    assert len(refused) == 6 and len(outcomes) - len(refused) == 4, outcomes


async def test_a_burst_within_the_quota_is_admitted_whole_however_it_contends(instances):
    """One caller's burst of concurrent starts, split over two instances, all within its quota: none is refused
    for losing the race on the caller's row (a refusal beyond the caller's own quota would be a capacity refusal)."""
    name = caller()
    one, two = (quotas(storage, **{name: Quota(max_active=100, per_minute=1000)}) for storage in instances)
    outcomes = await asyncio.gather(
        *(q.admit(name, new_run_id(clock.now())) for q in [one, two] * 20), return_exceptions=True
    )
    assert all(isinstance(o, Slot) for o in outcomes), [o for o in outcomes if not isinstance(o, Slot)][:3]


async def test_the_rate_is_a_bucket_of_a_minutes_starts_refilled_continuously(instances, monkeypatch):
    name = caller()
    q = quotas(instances[0], **{name: Quota(per_minute=6)})  # one start per 10 s, six at once
    now = [clock.now()]
    monkeypatch.setattr(clock, "now", lambda: now[0])
    for _ in range(6):
        assert await q.admit(name, new_run_id(now[0])) is None  # no slot: active runs are not capped
    with pytest.raises(RateLimited) as refused:
        await q.admit(name, new_run_id(now[0]))
    assert refused.value.retry_after == pytest.approx(10, abs=0.01)
    assert refused.value.headers["x-ratelimit-reset-requests"] == "1m0s"  # the whole bucket refills in a minute
    assert refused.value.headers["retry-after-ms"] == "10000"
    now[0] += 10.0
    await q.admit(name, new_run_id(now[0]))  # one start refilled
    with pytest.raises(RateLimited):
        await q.admit(name, new_run_id(now[0]))


async def test_the_sweeper_reclaims_a_slot_whose_start_died_and_keeps_live_ones(instances, monkeypatch):
    name = caller()
    q = quotas(instances[0], **{name: Quota(max_active=3)})
    started = clock.now()
    died, running, young = (new_run_id(started) for _ in range(3))
    for run_id in (died, running, young):
        await q.admit(name, run_id)
    monkeypatch.setattr(clock, "now", lambda: started + START_GRACE + 5)
    fresh = new_run_id(started + START_GRACE + 5)  # taken just now: its start may not have noted its run yet
    await q.release(Slot(name, young))
    await q.admit(name, fresh)
    held = [slot for slot in await q.held_slots() if slot.caller == name]
    assert {slot.run_id for slot in held} == {died, running, fresh}
    assert await q.reclaim(held, open_run_ids={running}) == 1  # `died` is not open work and is older than the grace
    assert {slot.run_id for slot in await q.held_slots() if slot.caller == name} == {running, fresh}
