"""Listing runs (GET /api/runs): the caller's runs (an operator's: all), newest first, filtered by status and
session, a page at a time, from the run lists of the index (never a scan of the runs table).

A list row knows a run's status as of its start and its end. A run still going is listed as `queued` there,
so the page reads those few runs themselves for their current status (queued or in_progress).
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidRequest
from ..responses_vocabulary import ACTIVE_STATUSES, TERMINAL_STATUSES
from .callers import OPERATOR, Caller
from .index import RunIndex, list_partition
from .store import RunStore

MAX_PAGE = 100
_ROW_KEY = re.compile(r"^\d{15}-run_[0-9a-f]{24}$")


@dataclass
class RunPage:
    runs: list[dict[str, Any]]
    next_cursor: str | None

    @property
    def has_more(self) -> bool:
        return self.next_cursor is not None


def encode_cursor(row_key: str) -> str:
    return base64.urlsafe_b64encode(row_key.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    try:
        row_key = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, ValueError, UnicodeDecodeError):
        row_key = ""
    if not _ROW_KEY.match(row_key):
        raise InvalidRequest("invalid_cursor", "The cursor is not one this service gave out.", param="cursor")
    return row_key


class RunLister:
    def __init__(self, index: RunIndex, store: RunStore) -> None:
        self._index = index
        self._store = store

    async def page(
        self,
        *,
        caller: Caller = OPERATOR,
        status: str | None = None,
        session_id: str | None = None,
        owner: str | None = None,
        cursor: str | None = None,
        limit: int = 20,
    ) -> RunPage:
        """`owner`: only the runs that caller started (an operator's filter; a caller sees only its own runs,
        so naming another caller lists nothing, exactly as for a caller with no runs)."""
        if status is not None and status not in ACTIVE_STATUSES | TERMINAL_STATUSES:
            raise InvalidRequest(
                "invalid_request",
                f"'status' must be one of {sorted(ACTIVE_STATUSES | TERMINAL_STATUSES)}.",
                param="status",
            )
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidRequest("invalid_request", f"'limit' must be between 1 and {MAX_PAGE}.", param="limit")
        after = decode_cursor(cursor) if cursor else ""
        if not caller.operator:
            if owner is not None and owner != caller.name:
                return RunPage([], None)
            owner = caller.name
        if session_id is not None:
            partition, row_owner = list_partition(session_id=session_id), owner
        else:
            partition, row_owner = list_partition(owner=owner), None
        # An active run's row says `queued` whatever it is now: ask the row for that, then check the run.
        row_status = "queued" if status in ACTIVE_STATUSES else status
        runs: list[dict[str, Any]] = []
        last_key = ""
        async for row in self._index.list_rows(partition, after=after, status=row_status, owner=row_owner):
            if len(runs) == limit:
                return RunPage(runs, encode_cursor(last_key))
            last_key = row["RowKey"]
            summary = await self._summary(row)
            if summary is not None and (status is None or summary["status"] == status):
                runs.append(summary)
        return RunPage(runs, None)

    async def _summary(self, row: dict[str, Any]) -> dict[str, Any] | None:
        summary = {
            "id": row["run_id"],
            "object": "run",
            "status": row["status"],
            "created_at": row["created_at"],
            "completed_at": row.get("completed_at"),
            "model": row.get("model"),
            "session_id": row.get("session_id") or None,
            "owner": row.get("owner") or None,
        }
        if row["status"] in ACTIVE_STATUSES:
            run = await self._store.get(row["run_id"])
            if run is None:  # deleted, or a start that was abandoned
                return None
            summary.update(status=run.status, completed_at=run.completed_at)
        return summary
