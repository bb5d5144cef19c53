"""Sessions: a chain of runs, each continuing from the last response of the one before.

Table `sessions`, PartitionKey = session id: RowKey "session" holds the chain's state
(`last_response_id`, `active_run_id`); one row per run ("run-<ms>-<run id>") lists its runs in order.
"""
from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import UpdateMode
from azure.data.tables.aio import TableClient

SESSION_ROW = "session"


@dataclass
class Session:
    id: str
    created_at: float
    last_response_id: str | None
    active_run_id: str | None
    etag: str | None


class SessionConflict(Exception):
    pass


class SessionStore:
    def __init__(self, table: TableClient) -> None:
        self._table = table

    async def create(self) -> Session:
        session = Session("sess_" + secrets.token_hex(12), time.time(), None, None, None)
        meta = await self._table.create_entity({"PartitionKey": session.id, "RowKey": SESSION_ROW,
                                                "created_at": session.created_at, "last_response_id": "",
                                                "active_run_id": ""})
        session.etag = meta.get("etag")
        return session

    async def get(self, session_id: str) -> Session | None:
        try:
            e = await self._table.get_entity(session_id, SESSION_ROW)
        except ResourceNotFoundError:
            return None
        return Session(session_id, e["created_at"], e.get("last_response_id") or None,
                       e.get("active_run_id") or None, e.metadata.get("etag"))

    async def save(self, session: Session) -> None:
        try:
            meta = await self._table.update_entity(
                {"PartitionKey": session.id, "RowKey": SESSION_ROW, "last_response_id": session.last_response_id or "",
                 "active_run_id": session.active_run_id or ""},
                mode=UpdateMode.MERGE, etag=session.etag, match_condition=MatchConditions.IfNotModified)
        except (ResourceModifiedError, ResourceNotFoundError):
            raise SessionConflict(session.id) from None
        session.etag = meta.get("etag")

    async def add_run(self, session_id: str, run_id: str, created_at: float) -> None:
        try:
            await self._table.create_entity({"PartitionKey": session_id, "RowKey": f"run-{int(created_at * 1000):015d}-{run_id}",
                                             "run_id": run_id})
        except ResourceExistsError:
            pass

    async def run_ids(self, session_id: str, limit: int = 100) -> list[str]:
        ids = []
        query = "PartitionKey eq @pk and RowKey ge 'run-' and RowKey lt 'run.'"
        async for e in self._table.query_entities(query, parameters={"pk": session_id}, select=["run_id"]):
            ids.append(e["run_id"])
            if len(ids) >= limit:
                break
        return ids
