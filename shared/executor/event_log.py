"""The event log of a run the function app executes itself: its Responses-shaped stream events, in order, durable,
readable from any position while it grows. It plays the part a provider's stored background response plays.

One Table partition per run (PartitionKey = run id) in the `runevents` table:
- one row per flush (RowKey = the last sequence number in it, zero-padded, so "after N" is `RowKey gt N`),
  holding that flush's events as a JSON array; an event too large for a row (a long output's final events)
  goes to a blob beside the run's other blobs and the row keeps a pointer;
- the head row (RowKey `head`, sorting after every number): the log's status, its last sequence number, the
  attempt that owns it (fencing), that attempt's heartbeat, and where the terminal event is.

Every append is one entity group transaction: the new rows and the head, ETag-conditional on the head. So a
flush is atomic (a reader never sees half of one), and an attempt that lost the head (a newer attempt took over,
or a cancel closed the log) cannot write another event: its transaction fails and it stops.

A reader's one query (`RowKey gt N`) returns the new rows and the head together: one storage transaction per
look, whether anything moved or not.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import AzureError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import TableEntity, TableTransactionError, UpdateMode

from .. import clock
from ..provider import ProviderError
from ..responses_vocabulary import ENDED_RESPONSE_STATUSES, is_terminal_event
from ..runs.store import utf16_bytes
from ..storage import BlobContainer, Table

log = logging.getLogger("bgruns.event_log")

HEAD_ROW = "head"
ROW_BUDGET_BYTES = 56 * 1024  # UTF-16 bytes of one row's events (a Table property holds 64 KiB); a larger
# single event (a long output's final events) is stored as a blob
MAX_ROWS_PER_APPEND = 40  # an entity group transaction takes 100 entities and 4 MiB
_HEAD_FIELDS = (
    "status",
    "last_seq",
    "attempt",
    "claimed_by",
    "claimed_dequeue",
    "heartbeat_at",
    "dispatched_at",
    "created_at",
    "final_row",
    "api",
)


def row_key(sequence_number: int) -> str:
    return f"{sequence_number:010d}"


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


class LogConflict(Exception):
    """The head changed since it was read (another writer); re-read it and decide again."""


@dataclass
class LogHead:
    run_id: str
    status: str = "queued"  # queued | in_progress | completed | failed | incomplete | cancelled (stopped)
    last_seq: int = -1
    attempt: int = 0  # model calls started so far
    claimed_by: str = ""  # the queue message running the current attempt
    claimed_dequeue: int = 0  # its dequeue count then (a higher one later means that invocation is gone)
    heartbeat_at: float = 0.0  # the current attempt's last sign of life
    dispatched_at: float = 0.0  # when the run was last (re)queued for execution
    created_at: float = 0.0
    final_row: str = ""  # the row holding the terminal event
    api: str = ""  # the model API chosen when the run started (every instance then calls the same one)
    etag: str | None = None

    @property
    def is_closed(self) -> bool:
        return self.status in ENDED_RESPONSE_STATUSES

    def entity(self) -> dict[str, Any]:
        return {"PartitionKey": self.run_id, "RowKey": HEAD_ROW, **{name: getattr(self, name) for name in _HEAD_FIELDS}}

    @classmethod
    def from_entity(cls, entity: TableEntity) -> LogHead:
        values = {name: entity[name] for name in _HEAD_FIELDS if name in entity}
        return cls(run_id=entity["PartitionKey"], **values, etag=entity.metadata.get("etag"))


class LogEvent:
    """One logged event as the relay and the formats read provider events: attributes (`type`,
    `sequence_number`, `response`, ...) and `model_dump()`."""

    __slots__ = ("_data",)

    def __init__(self, data: dict[str, Any]) -> None:
        object.__setattr__(self, "_data", data)

    def __getattr__(self, name: str) -> Any:
        try:
            return self._data[name]
        except KeyError:
            raise AttributeError(name) from None

    def model_dump(self, *, exclude: set[str] | None = None, **_: Any) -> dict[str, Any]:
        return {k: v for k, v in self._data.items() if not exclude or k not in exclude}

    def to_dict(self) -> dict[str, Any]:
        return dict(self._data)

    def model_dump_json(self, **_: Any) -> str:
        return _dumps(self._data)

    def __repr__(self) -> str:
        return f"LogEvent({self._data.get('type')}#{self._data.get('sequence_number')})"


class EventLog:
    def __init__(self, table: Table, payloads: BlobContainer) -> None:
        self._table = table  # EVENTS_TABLE
        self._payloads = payloads  # the run-payloads container (large events, under the run's blob prefix)

    # -- writing ---------------------------------------------------------------------------------------------------
    async def create(self, run_id: str, events: list[dict[str, Any]], *, api: str = "") -> LogHead:
        """The log with its first events (numbered from 0); an existing log is left as it is (a retried start)."""
        now = clock.now()
        head = LogHead(run_id, created_at=now, heartbeat_at=now, dispatched_at=now, api=api)
        numbered = [{**event, "sequence_number": n} for n, event in enumerate(events)]
        rows = await self._rows(run_id, numbered)
        head.last_seq = len(numbered) - 1
        try:
            results = await self._table.submit_transaction(
                [("create", row) for row in rows] + [("create", head.entity())]
            )
        except TableTransactionError as error:
            if error.status_code != 409:
                raise
            return await self.head(run_id) or head
        head.etag = results[-1].get("etag")
        return head

    async def append(self, head: LogHead, events: list[dict[str, Any]], **changes: Any) -> LogHead:
        """Add `events` (numbered from head.last_seq + 1) and apply `changes` to the head, in one transaction,
        only if the head is as this writer read it. Returns the new head; raises LogConflict otherwise.
        (A batch too big for one transaction is written in several, each moving the head: readers see a prefix.)"""
        for offset, event in enumerate(events):
            if event["sequence_number"] != head.last_seq + 1 + offset:
                raise ValueError(
                    f"event {event['type']} out of order: {event['sequence_number']} after {head.last_seq}"
                )
        rows = await self._rows(head.run_id, events) if events else []
        while len(rows) > MAX_ROWS_PER_APPEND:
            part, rows = rows[:MAX_ROWS_PER_APPEND], rows[MAX_ROWS_PER_APPEND:]
            head = await self._commit(head, part, heartbeat_at=changes.get("heartbeat_at", head.heartbeat_at))
        return await self._commit(head, rows, **changes)

    async def _commit(self, head: LogHead, rows: list[dict[str, Any]], **changes: Any) -> LogHead:
        new = LogHead(**{**head.__dict__, **changes})
        if rows:
            new.last_seq = int(rows[-1]["RowKey"])
            last = json.loads(rows[-1]["events"])[-1]
            if is_terminal_event(last["type"]):
                new.final_row = rows[-1]["RowKey"]
        operations: list[tuple[str, dict[str, Any]] | tuple[str, dict[str, Any], dict[str, Any]]]
        operations = [("create", row) for row in rows]
        operations.append(
            (
                "update",
                new.entity(),
                {"mode": UpdateMode.MERGE, "etag": head.etag, "match_condition": MatchConditions.IfNotModified},
            )
        )
        try:
            results = await self._table.submit_transaction(operations)
        except TableTransactionError as error:
            if error.status_code in (404, 409, 412):
                raise LogConflict(head.run_id) from None
            raise
        new.etag = results[-1].get("etag")
        return new

    async def save_head(self, head: LogHead) -> LogHead:
        """Write the head if nobody changed it since it was read; raises LogConflict otherwise."""
        try:
            meta = await self._table.update_entity(
                head.entity(), mode=UpdateMode.MERGE, etag=head.etag, match_condition=MatchConditions.IfNotModified
            )
        except (ResourceModifiedError, ResourceNotFoundError):
            raise LogConflict(head.run_id) from None
        head.etag = meta.get("etag")
        return head

    async def _rows(self, run_id: str, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Rows for numbered events: as many per row as fit; large events go to blobs first."""
        rows: list[dict[str, Any]] = []
        batch: list[str] = []
        size = 0

        def close(last: int) -> None:
            nonlocal batch, size
            rows.append({"PartitionKey": run_id, "RowKey": row_key(last), "events": "[" + ",".join(batch) + "]"})
            batch, size = [], 0

        for event in events:
            text = _dumps(event)
            cost = utf16_bytes(text) + 2
            if cost > ROW_BUDGET_BYTES:
                text = _dumps(await self._to_blob(run_id, event, text))
                cost = utf16_bytes(text) + 2
            if batch and size + cost > ROW_BUDGET_BYTES:
                close(event["sequence_number"] - 1)
            batch.append(text)
            size += cost
        if batch:
            close(events[-1]["sequence_number"])
        return rows

    async def _to_blob(self, run_id: str, event: dict[str, Any], text: str) -> dict[str, Any]:
        name = f"{run_id}/events/{event['sequence_number']:010d}-{secrets.token_hex(4)}.json"
        await self._payloads.upload_blob(name, text.encode("utf-8"), overwrite=False)
        return {"type": event["type"], "sequence_number": event["sequence_number"], "$blob": name}

    # -- reading -------------------------------------------------------------------------------------------------
    async def head(self, run_id: str) -> LogHead | None:
        try:
            return LogHead.from_entity(await self._table.get_entity(run_id, HEAD_ROW))
        except ResourceNotFoundError:
            return None

    async def read(self, run_id: str, after: int) -> tuple[list[dict[str, Any]], LogHead | None]:
        """The events after `after` (exclusive) and the head, in one query."""
        if after < 0:
            query, parameters = "PartitionKey eq @pk", {"pk": run_id}
        else:
            query, parameters = "PartitionKey eq @pk and RowKey gt @after", {"pk": run_id, "after": row_key(after)}
        events: list[dict[str, Any]] = []
        head = None
        async for entity in self._table.query_entities(query, parameters=parameters):
            if entity["RowKey"] == HEAD_ROW:
                head = LogHead.from_entity(entity)
                continue
            for event in json.loads(entity["events"]):
                if event["sequence_number"] > after:
                    events.append(await self._expand(event))
        return events, head

    async def final_response(self, head: LogHead) -> dict[str, Any] | None:
        """The response of the log's terminal event (None if the log has none)."""
        if not head.final_row:
            return None
        entity = await self._table.get_entity(head.run_id, head.final_row)
        for event in reversed(json.loads(entity["events"])):
            if is_terminal_event(event["type"]):
                return (await self._expand(event)).get("response")
        return None

    async def _expand(self, event: dict[str, Any]) -> dict[str, Any]:
        if "$blob" not in event:
            return event
        downloader = await self._payloads.download_blob(event["$blob"])
        expanded: dict[str, Any] = json.loads((await downloader.readall()).decode("utf-8"))
        return expanded

    # -- retention -------------------------------------------------------------------------------------------------
    async def purge(self, run_id: str) -> int:
        """Delete the run's log (its blobs go with the run's other blobs). Returns the rows deleted."""
        keys = [
            e["RowKey"]
            async for e in self._table.query_entities(
                "PartitionKey eq @pk", parameters={"pk": run_id}, select=["RowKey"]
            )
        ]
        for start in range(0, len(keys), 100):
            await self._table.submit_transaction(
                [("delete", {"PartitionKey": run_id, "RowKey": key}) for key in keys[start : start + 100]]
            )
        return len(keys)


# -- the log as a live event stream, polled --------------------------------------------------------------------
FOLLOW_MIN_DELAY = 0.2  # about the executor's flush interval: a busy log is looked at about as often as it grows
FOLLOW_MAX_DELAY = 1.0  # an idle one at most once a second
RUN_CHECK_SECONDS = 5.0  # idle this long: ask whether the run ended without closing its log (a crash)
MAX_READ_FAILURES = 4


class PolledLogStream:
    """A run's events from a position, live, by polling the log: one query per look, sooner while events flow, at
    most once a second while idle. Ends after the terminal event, or when the log is closed without one (a cancel),
    or when the run ended while its log stayed open (`run_ended`). It is an executor run's event stream (what
    ExecutorBackend.events returns), which the relay and the watcher follow like a provider's
    (runs.stream_following); a storage hiccup is retried here, as a provider's dropped connection is there."""

    def __init__(
        self, events: EventLog, run_id: str, after: int, run_ended: Callable[[], Awaitable[bool]] | None = None
    ) -> None:
        self._log = events
        self._run_id = run_id
        self._after = after
        self._run_ended = run_ended
        self._closed = False
        self.reads = 0

    async def close(self) -> None:
        self._closed = True

    def __aiter__(self) -> AsyncIterator[LogEvent]:
        return self._follow()

    async def _follow(self) -> AsyncIterator[LogEvent]:
        position, delay, failures = self._after, 0.0, 0
        idle_since = time.monotonic()
        while not self._closed:
            if delay:
                await asyncio.sleep(delay)
            try:
                events, head = await self._log.read(self._run_id, position)
                self.reads += 1
                failures = 0
            except AzureError as error:
                failures += 1
                if failures >= MAX_READ_FAILURES:
                    raise ProviderError(
                        transient=True, status=None, message=f"the event log is unreadable ({type(error).__name__})"
                    ) from None
                delay = min(FOLLOW_MAX_DELAY * 2**failures, 8.0)
                continue
            if head is None:
                raise ProviderError(transient=False, status=404, message="the run has no event log")
            for event in events:
                position = event["sequence_number"]
                yield LogEvent(event)
                if is_terminal_event(event["type"]):
                    return
            if head.is_closed:
                return  # closed without a terminal event: cancelled or stopped
            if events:
                delay, idle_since = FOLLOW_MIN_DELAY, time.monotonic()
                continue
            delay = min(max(delay * 2, FOLLOW_MIN_DELAY), FOLLOW_MAX_DELAY)
            if self._run_ended and time.monotonic() - idle_since >= RUN_CHECK_SECONDS:
                idle_since = time.monotonic()
                if await self._run_ended():
                    return
