"""Sessions: a chain of runs, each continuing from the last response of the one before.

Table `sessions`, PartitionKey = session id: RowKey "session" holds the chain's state (`last_response_id`, the
deployment it lives at, `active_run_id` and since when it is active); one row per run ("run-<ms>-<run id>") lists
its runs in order. At most one run is active per session: a start reserves the session (ETag-conditional) before it
records its run, so for a short while the session names a run that does not exist yet. That reservation is
honoured until the start grace has passed; only then is it taken over as a start that died.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import UpdateMode

from .. import clock
from ..storage import Table

SESSION_ROW = "session"
SESSION_ID_PREFIX = "sess_"


@dataclass
class Session:
    id: str
    created_at: float
    last_response_id: str | None
    active_run_id: str | None
    etag: str | None
    active_since: float = 0.0
    updated_at: float = 0.0
    last_deployment: str | None = None  # where last_response_id lives (provider.pool): the next turn goes there


class SessionConflict(Exception):
    pass


class SessionStore:
    def __init__(self, table: Table) -> None:
        self._table = table

    async def create(self) -> Session:
        created = clock.now()
        session = Session(SESSION_ID_PREFIX + secrets.token_hex(12), created, None, None, None, 0.0, created)
        meta = await self._table.create_entity(
            {
                "PartitionKey": session.id,
                "RowKey": SESSION_ROW,
                "created_at": session.created_at,
                "last_response_id": "",
                "active_run_id": "",
                "active_since": 0.0,
                "updated_at": created,
            }
        )
        session.etag = meta.get("etag")
        return session

    async def get(self, session_id: str) -> Session | None:
        try:
            e = await self._table.get_entity(session_id, SESSION_ROW)
        except ResourceNotFoundError:
            return None
        return Session(
            session_id,
            e["created_at"],
            e.get("last_response_id") or None,
            e.get("active_run_id") or None,
            e.metadata.get("etag"),
            e.get("active_since") or 0.0,
            e.get("updated_at") or e["created_at"],
            e.get("last_deployment") or None,
        )

    async def save(self, session: Session) -> None:
        session.updated_at = clock.now()
        try:
            meta = await self._table.update_entity(
                {
                    "PartitionKey": session.id,
                    "RowKey": SESSION_ROW,
                    "last_response_id": session.last_response_id or "",
                    "last_deployment": session.last_deployment or "",
                    "active_run_id": session.active_run_id or "",
                    "active_since": session.active_since,
                    "updated_at": session.updated_at,
                },
                mode=UpdateMode.MERGE,
                etag=session.etag,
                match_condition=MatchConditions.IfNotModified,
            )
        except (ResourceModifiedError, ResourceNotFoundError):
            raise SessionConflict(session.id) from None
        session.etag = meta.get("etag")

    async def add_run(self, session_id: str, run_id: str, created_at: float) -> None:
        try:
            await self._table.create_entity(
                {"PartitionKey": session_id, "RowKey": _run_row(run_id, created_at), "run_id": run_id}
            )
        except ResourceExistsError:
            pass

    async def remove_run(self, session_id: str, run_id: str, created_at: float) -> None:
        """Take a run off the session's list (its start failed, or it was deleted)."""
        try:
            await self._table.delete_entity(session_id, _run_row(run_id, created_at))
        except ResourceNotFoundError:
            pass

    async def release(self, session_id: str, run_id: str) -> None:
        """Give back the session's reservation for `run_id` (a start that failed), if it still holds it."""
        for _ in range(5):
            session = await self.get(session_id)
            if session is None or session.active_run_id != run_id:
                return
            session.active_run_id, session.active_since = None, 0.0
            try:
                await self.save(session)
                return
            except SessionConflict:
                continue
        raise SessionConflict(session_id)

    async def run_ids(self, session_id: str, limit: int = 100) -> list[str]:
        ids = []
        query = "PartitionKey eq @pk and RowKey ge 'run-' and RowKey lt 'run.'"
        async for e in self._table.query_entities(query, parameters={"pk": session_id}, select=["run_id"]):
            ids.append(e["run_id"])
            if len(ids) >= limit:
                break
        return ids

    async def purge(self, session_id: str) -> None:
        """Delete the session and its run list (retention)."""
        rows = [
            e
            async for e in self._table.query_entities(
                "PartitionKey eq @pk", parameters={"pk": session_id}, select=["PartitionKey", "RowKey"]
            )
        ]
        for row in rows:
            try:
                await self._table.delete_entity(session_id, row["RowKey"])
            except ResourceNotFoundError:
                pass


def _run_row(run_id: str, created_at: float) -> str:
    return f"run-{int(created_at * 1000):015d}-{run_id}"
