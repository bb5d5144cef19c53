"""Per-caller quotas: a cap on a caller's active runs and a rate of its starts, shared by every instance.

A caller is a facade caller (by name: its keys during a rotation are one caller) or, on the native API, every
function-key caller together (`@native`). CALLER_MAX_ACTIVE_RUNS and CALLER_STARTS_PER_MINUTE are each caller's
default, CALLER_QUOTAS overrides them by name; 0 is unlimited, and a caller without limits costs nothing here.
A start over either limit is refused before anything of it is written: OpenAI's 429 `rate_limit_exceeded` with
Retry-After and the `x-ratelimit-*-requests` headers of the limit that refused it (errors.RateLimited).

State: the run index table, one partition per caller (`quota-<caller>`):
- the row `caller`: the start rate as GCRA's one timestamp (the "theoretical arrival time": a bucket of a
  minute's starts, refilled continuously) and a sequence number; every admission rewrites it If-Match its ETag,
  so admissions of one caller are serialised on it;
- one row `slot-<run id>` per run holding one of the caller's active slots; the run records that it holds one
  (`Run.quota_slot`), whatever the configuration of the instance that ends it.

Admission is one query of the partition (the `caller` row and the slots) and one entity-group transaction that
rewrites `caller` If-Match and inserts the new slot: of two instances that both saw the last slot free, the second
fails on the ETag, reads again and is refused. Within an instance a caller's admissions take turns, so only other
instances' contend, and a start that loses the race tries again for up to CONTENTION_BUDGET. At steady state
that is two storage requests per start; a refusal is one (the read) and writes nothing. The slot is given back
(one delete) by the run's follow-ups when it ends however it ends (RunLifecycle.follow_up, which the sweeper
repeats after a crash, before the run leaves the open-work index), or when a failed start is taken back. A start
that crashed between its admission and noting its run as open work leaves a slot no run will give back: the
sweeper reclaims a slot older than the start grace whose run is not in the open-work index (it lists the slots
before it reads that index, so a live run is seen).
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import ResourceNotFoundError
from azure.data.tables import TableTransactionError, UpdateMode

from .. import clock
from ..errors import RateLimited
from ..settings import NATIVE_CALLER, Quota, QuotaSettings
from ..storage import Table
from .model import Run
from .requests import run_id_created_at

log = logging.getLogger("bgruns.quotas")

PARTITION_PREFIX = "quota-"
STATE_ROW = "caller"
SLOT_PREFIX = "slot-"
# A run's length is unknown: a caller at its cap is told to look again this soon (one storage read each time).
ACTIVE_RETRY_AFTER = 2.0
# Starts of one caller on other instances may win the race on its row; a start keeps trying (after a short
# random pause) for this long before it is refused: a caller's burst within its quota is admitted whole.
CONTENTION_BUDGET = 10.0
MAX_PAUSE = 0.2


def quota_caller(owner: str | None) -> str:
    """The caller a run counts against: its owner, or the native API's callers together."""
    return owner or NATIVE_CALLER


@dataclass(frozen=True)
class Slot:
    """An active-run slot taken for a start."""

    caller: str
    run_id: str


class CallerQuotas:
    def __init__(self, table: Table, settings: QuotaSettings, *, start_grace: float) -> None:
        self._table = table
        self._settings = settings
        self._start_grace = start_grace
        # One admission per caller at a time in this instance: its concurrent starts queue here instead of racing
        # each other on the caller's row (only other instances' starts contend).
        self._turns: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    async def admit(self, owner: str | None, run_id: str) -> Slot | None:
        """Count the start of `run_id` against its caller; the slot it holds (None when active runs are not
        capped for the caller). RateLimited when the caller is over a limit: nothing is written then."""
        caller = quota_caller(owner)
        quota = self._settings.of(caller)
        if quota.unlimited:
            return None
        async with self._turns[caller]:
            return await self._admit(caller, quota, run_id)

    async def _admit(self, caller: str, quota: Quota, run_id: str) -> Slot | None:
        give_up_at = clock.now() + CONTENTION_BUDGET
        pause = 0.01
        while True:
            state, etag, slots = await self._read(caller)
            now = clock.now()
            if quota.max_active and slots >= quota.max_active:
                raise RateLimited(
                    f"Too many active runs: {_who(caller)} may have {quota.max_active} at a time "
                    f"and has {slots}. Retry when one of them ends.",
                    limit=quota.max_active,
                    remaining=0,
                    reset_seconds=ACTIVE_RETRY_AFTER,
                    retry_after=ACTIVE_RETRY_AFTER,
                )
            tat = _next_arrival(quota, state.get("tat", 0.0), now, caller)
            state = {
                "PartitionKey": PARTITION_PREFIX + caller,
                "RowKey": STATE_ROW,
                "tat": tat,
                "seq": state.get("seq", 0) + 1,
            }
            slot = Slot(caller, run_id) if quota.max_active else None
            if await self._write(state, etag, slot):
                return slot
            if clock.now() >= give_up_at:  # another instance's starts of the caller won every time
                raise RateLimited(
                    f"Too many concurrent starts for {_who(caller)}; retry shortly.",
                    limit=quota.max_active or quota.per_minute,
                    remaining=0,
                    reset_seconds=1.0,
                    retry_after=1.0,
                )
            await asyncio.sleep(random.uniform(0, pause))
            pause = min(2 * pause, MAX_PAUSE)

    async def release(self, slot: Slot) -> None:
        """Give the slot back (idempotent)."""
        try:
            await self._table.delete_entity(PARTITION_PREFIX + slot.caller, SLOT_PREFIX + slot.run_id)
        except ResourceNotFoundError:
            pass

    async def release_for(self, run: Run) -> None:
        """Give back the slot the run holds, if it holds one (its follow-ups, when it ended)."""
        if run.quota_slot:
            await self.release(Slot(quota_caller(run.owner), run.id))

    # -- what the console's operator view shows ----------------------------------------------------------------
    async def usage(self, callers: Iterable[str]) -> dict[str, dict[str, int | None]]:
        """Per caller (those named, and any holding a slot), sorted by name: its limits (0: unlimited) and the
        active-run slots it holds (None when its active runs are not capped and it holds none: no slots are kept
        for it). One query, `held_slots`'s."""
        held = Counter(slot.caller for slot in await self.held_slots())
        usage: dict[str, dict[str, int | None]] = {}
        for name in sorted({*callers, *held}):
            quota = self._settings.of(name)
            usage[name] = {
                "max_active_runs": quota.max_active,
                "starts_per_minute": quota.per_minute,
                "active_slots": held[name] if quota.max_active or held[name] else None,
            }
        return usage

    # -- what the sweeper reclaims ---------------------------------------------------------------------------
    async def held_slots(self) -> list[Slot]:
        """Every slot held (read before the open-work index: see `reclaim`); none when no caller is capped."""
        if not self._settings.caps_active:
            return []
        query = "PartitionKey ge @first and PartitionKey lt @upto and RowKey ge @slot and RowKey lt @upto_slot"
        parameters = {
            "first": PARTITION_PREFIX,
            "upto": _after(PARTITION_PREFIX),
            "slot": SLOT_PREFIX,
            "upto_slot": _after(SLOT_PREFIX),
        }
        return [
            Slot(row["PartitionKey"][len(PARTITION_PREFIX) :], row["RowKey"][len(SLOT_PREFIX) :])
            async for row in self._table.query_entities(query, parameters=parameters, select=["PartitionKey", "RowKey"])
        ]

    async def reclaim(self, held: list[Slot], open_run_ids: set[str]) -> int:
        """Give back the slots, of those listed before `open_run_ids` was read, whose run holds nothing: older than
        the start grace and not open work (its start died before noting it, or it ended and left the index)."""
        cutoff = clock.now() - self._start_grace
        lost = [
            slot
            for slot in held
            if slot.run_id not in open_run_ids and (run_id_created_at(slot.run_id) or 0.0) < cutoff
        ]
        for slot in lost:
            log.warning(
                "caller %s: run %s holds an active-run slot but is not open work; slot reclaimed",
                slot.caller,
                slot.run_id,
            )
            await self.release(slot)
        return len(lost)

    # -- storage ------------------------------------------------------------------------------------------------
    async def _read(self, caller: str) -> tuple[dict[str, Any], str | None, int]:
        """The caller's row (empty if none yet), its ETag, and how many slots are held."""
        state: dict[str, Any] = {}
        etag, slots = None, 0
        async for row in self._table.query_entities(
            "PartitionKey eq @pk", parameters={"pk": PARTITION_PREFIX + caller}, select=["RowKey", "tat", "seq"]
        ):
            if row["RowKey"] == STATE_ROW:
                state, etag = dict(row), row.metadata.get("etag")
            elif row["RowKey"].startswith(SLOT_PREFIX):
                slots += 1
        return state, etag, slots

    async def _write(self, state: dict[str, Any], etag: str | None, slot: Slot | None) -> bool:
        """Rewrite the caller's row if unchanged since read (create it if it was absent), with the new slot; False
        if another start got there first."""
        operations: list[tuple[Any, ...]]
        if etag is None:
            operations = [("create", state)]
        else:
            operations = [
                (
                    "update",
                    state,
                    {"mode": UpdateMode.REPLACE, "etag": etag, "match_condition": MatchConditions.IfNotModified},
                )
            ]
        if slot is not None:
            operations.append(("create", {"PartitionKey": state["PartitionKey"], "RowKey": SLOT_PREFIX + slot.run_id}))
        try:
            await self._table.submit_transaction(operations)
        except TableTransactionError as error:
            if error.status_code in (409, 412):
                return False
            raise
        return True


def _next_arrival(quota: Quota, tat: float, now: float, caller: str) -> float:
    """GCRA: the caller's theoretical arrival time after this start; RateLimited if the start comes too early.

    Each start moves it `60 / per_minute` seconds on from `max(tat, now)`; a start is allowed while that stays
    within a minute of now (a bucket of `per_minute` starts, refilled continuously)."""
    if not quota.per_minute:
        return 0.0
    interval = 60.0 / quota.per_minute
    after = max(tat, now) + interval
    if after - now > 60.0 + 1e-9:
        wait = after - now - 60.0
        raise RateLimited(
            f"Too many starts: {_who(caller)} may start {quota.per_minute} runs per minute. Please "
            f"try again in {math.ceil(wait)}s.",
            limit=quota.per_minute,
            remaining=0,
            reset_seconds=max(tat, now) - now,
            retry_after=wait,
        )
    return after


def _who(caller: str) -> str:
    return "the native API's callers" if caller == NATIVE_CALLER else f"caller '{caller}'"


def _after(prefix: str) -> str:
    """The first string after every one that starts with `prefix` (its last character, plus one)."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)
