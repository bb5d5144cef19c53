"""The run index: the few lists the service needs without scanning the runs table.

One table (`runindex`), one partition per list:
- `open`: runs that still need the service's attention (active, or ended with follow-ups not yet done: the
  session to advance, the webhook to deliver). Written before a run is recorded, removed when nothing is left
  to do, so the sweeper's cost follows the runs in flight, not every run ever kept.
- `expires-<yyyymmdd>`: what retention deletes on that day (UTC): runs, sessions, idempotency keys.
- `response-<provider response id>`: which run a provider response belongs to, so a provider webhook (which
  carries only the response id) finds its run with one point read.
- `seen-<yyyymmdd>`: provider webhook ids already handled that day (deduplication).
- `list-all`, `list-owner-<caller>`, `list-session-<session id>`: the runs to list, newest first (RowKey =
  inverted creation time + run id), with their status as of their start and their end. Written when a run
  starts and updated when it ends (follow-ups, idempotent; an end never writes back a row a DELETE removed),
  removed when the run is deleted; a run is in at most three of them (all, its owner's, its session's).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.data.tables import UpdateMode

from ..storage import Table
from .model import Run

OPEN = "open"
EXPIRES_PREFIX = "expires-"
RESPONSE_PREFIX = "response-"
SEEN_PREFIX = "seen-"
LIST_ALL = "list-all"
_NEWEST_FIRST = 10**15 - 1  # milliseconds; inverted so that newer runs sort first


def _day(at: float) -> str:
    return datetime.fromtimestamp(at, tz=UTC).strftime("%Y%m%d")


def list_partition(*, owner: str | None = None, session_id: str | None = None) -> str:
    if owner is not None:
        return f"list-owner-{owner}"
    if session_id is not None:
        return f"list-session-{session_id}"
    return LIST_ALL


def list_row_key(created_at: float, run_id: str) -> str:
    return f"{_NEWEST_FIRST - int(created_at * 1000):015d}-{run_id}"


def _list_row(run: Run) -> dict[str, Any]:
    row = {
        "RowKey": list_row_key(run.created_at, run.id),
        "run_id": run.id,
        "status": run.status,
        "created_at": run.created_at,
        "completed_at": run.completed_at,
        "model": run.model,
        "owner": run.owner or "",
        "session_id": run.session_id or "",
    }
    return {key: value for key, value in row.items() if value is not None}


def _list_partitions(run: Run) -> list[str]:
    partitions = [LIST_ALL]
    if run.owner:
        partitions.append(list_partition(owner=run.owner))
    if run.session_id:
        partitions.append(list_partition(session_id=run.session_id))
    return partitions


class RunIndex:
    def __init__(self, table: Table) -> None:
        self._table = table

    # -- open work ------------------------------------------------------------------------------------------
    async def mark_open(self, run_id: str) -> None:
        await self._table.upsert_entity({"PartitionKey": OPEN, "RowKey": run_id})

    async def mark_done(self, run_id: str) -> None:
        await self._delete(OPEN, run_id)

    async def open_run_ids(self) -> AsyncIterator[str]:
        async for row in self._table.query_entities("PartitionKey eq @pk", parameters={"pk": OPEN}, select=["RowKey"]):
            yield row["RowKey"]

    # -- provider responses --------------------------------------------------------------------------------
    async def remember_response(self, response_id: str, run_id: str) -> None:
        await self._table.upsert_entity(
            {"PartitionKey": RESPONSE_PREFIX + response_id, "RowKey": "run", "run_id": run_id}
        )

    async def run_for_response(self, response_id: str) -> str | None:
        try:
            row = await self._table.get_entity(RESPONSE_PREFIX + response_id, "run")
        except ResourceNotFoundError:
            return None
        run_id: str = row["run_id"]
        return run_id

    async def forget_response(self, response_id: str) -> None:
        await self._delete(RESPONSE_PREFIX + response_id, "run")

    # -- provider webhook ids already handled -------------------------------------------------------------------
    async def claim_event(self, event_id: str, at: float) -> bool:
        """Note a provider webhook id; False if it was noted before (a duplicate or a replay)."""
        try:
            await self._table.create_entity({"PartitionKey": SEEN_PREFIX + _day(at), "RowKey": event_id})
        except ResourceExistsError:
            return False
        return True

    async def release_event(self, event_id: str, at: float) -> None:
        """Forget a claim whose handling failed, so the provider's retry is handled."""
        await self._delete(SEEN_PREFIX + _day(at), event_id)

    async def forget_events_before(self, before: float) -> int:
        """Delete the dedup notes of the days before `before` (retention), reading only those rows."""
        query = "PartitionKey ge @first and PartitionKey lt @upto"
        parameters = {"first": SEEN_PREFIX, "upto": SEEN_PREFIX + _day(before)}
        rows = [
            (r["PartitionKey"], r["RowKey"])
            async for r in self._table.query_entities(query, parameters=parameters, select=["PartitionKey", "RowKey"])
        ]
        for partition, row in rows:
            await self._delete(partition, row)
        return len(rows)

    # -- expiry ---------------------------------------------------------------------------------------------
    async def expire_at(self, kind: str, ident: str, at: float) -> None:
        """Note that `kind` `ident` may be deleted from the day of `at` on (idempotent)."""
        await self._table.upsert_entity({"PartitionKey": EXPIRES_PREFIX + _day(at), "RowKey": f"{kind}:{ident}"})

    async def expired(self, before: float) -> AsyncIterator[tuple[str, str, str]]:
        """(day partition, kind, ident) of every entry whose day ended before `before`."""
        query = "PartitionKey ge @first and PartitionKey lt @upto"
        parameters = {"first": EXPIRES_PREFIX, "upto": EXPIRES_PREFIX + _day(before)}
        async for row in self._table.query_entities(query, parameters=parameters, select=["PartitionKey", "RowKey"]):
            kind, _, ident = row["RowKey"].partition(":")
            yield row["PartitionKey"], kind, ident

    async def forget(self, partition: str, kind: str, ident: str) -> None:
        await self._delete(partition, f"{kind}:{ident}")

    async def forget_expiry(self, kind: str, ident: str, at: float) -> None:
        """Remove the note `expire_at(kind, ident, at)` wrote (what it names is gone already)."""
        await self.forget(EXPIRES_PREFIX + _day(at), kind, ident)

    # -- lists ----------------------------------------------------------------------------------------------
    async def list_run(self, run: Run, partitions: list[str] | None = None) -> None:
        """Write (or update) the run's rows in the lists it belongs to, or in `partitions` of them (idempotent)."""
        for partition in partitions or _list_partitions(run):
            await self._table.upsert_entity({"PartitionKey": partition, **_list_row(run)})

    async def relist(self, run: Run) -> list[str]:
        """Update the run's rows to show how it ended, but only rows that exist: a DELETE may have removed them,
        and an end racing it must not write them back. Returns the lists whose row is missing (a crash cut the
        start's listing short, or the run was deleted: the caller tells which)."""
        missing = []
        for partition in _list_partitions(run):
            try:
                await self._table.update_entity({"PartitionKey": partition, **_list_row(run)}, mode=UpdateMode.MERGE)
            except ResourceNotFoundError:
                missing.append(partition)
        return missing

    async def unlist(self, run: Run) -> None:
        for partition in _list_partitions(run):
            await self._delete(partition, list_row_key(run.created_at, run.id))

    async def list_rows(
        self, partition: str, *, after: str = "", status: str | None = None, owner: str | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """Rows of one list, newest first, after the row key `after`; optionally only one status or owner."""
        query, parameters = "PartitionKey eq @pk and RowKey gt @after", {"pk": partition, "after": after}
        if status is not None:
            query, parameters["status"] = query + " and status eq @status", status
        if owner is not None:
            query, parameters["owner"] = query + " and owner eq @owner", owner
        async for row in self._table.query_entities(query, parameters=parameters, results_per_page=100):
            yield row

    async def _delete(self, partition: str, row: str) -> None:
        try:
            await self._table.delete_entity(partition, row)
        except ResourceNotFoundError:
            pass
