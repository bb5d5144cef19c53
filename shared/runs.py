"""A run and where it lives: one Table entity per run (PartitionKey=run id, RowKey="run").

Large parts (the provider request and the result) go to a blob when they do not fit a Table string
property (64 KiB, about 32K UTF-16 characters), so a 5 MB output round-trips byte for byte.
Every change to a run is an ETag-conditional update, so concurrent writers (poll chain, sweeper,
cancel, stream relay) never overwrite each other blindly.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import UpdateMode

from .storage import Storage

RUN_ROW = "run"
ACTIVE_STATUSES = frozenset({"queued", "in_progress"})
TERMINAL_STATUSES = frozenset({"completed", "failed", "cancelled", "incomplete", "requires_action", "expired"})
# A Table string property holds 64 KiB of UTF-16; stay well below it.
INLINE_LIMIT_CHARS = 30_000


class Conflict(Exception):
    """The run changed since it was read (ETag mismatch); re-read and decide again."""


@dataclass
class Run:
    id: str
    status: str
    created_at: float
    model: str
    request: dict[str, Any]
    session_id: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    response_id: str | None = None
    stream: bool = False
    completed_at: float | None = None
    result: dict[str, Any] | None = None  # output, output_text, error, incomplete_details, usage
    poll_seq: int = 0
    poll_nonce: str = ""
    poll_count: int = 0
    next_poll_at: float | None = None
    deadline_at: float = 0.0
    webhook_url: str | None = None
    webhook: dict[str, Any] | None = None  # state, id, attempts, next_attempt_at, seq
    webhook_due_at: float | None = None
    etag: str | None = None
    # Parts already in storage are not written again on every save (a 5 MB result is uploaded once).
    result_stored: bool = False

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


class RunStore:
    def __init__(self, storage: Storage) -> None:
        self._storage = storage
        self._table = storage.runs

    # -- large JSON parts: inline when small, else one blob per part ------------------------------
    async def _put_part(self, run_id: str, name: str, value: Any) -> dict[str, Any]:
        text = _dumps(value)
        if len(text) <= INLINE_LIMIT_CHARS:
            return {name: text, f"{name}_blob": ""}
        blob = f"{run_id}/{name}.json"
        await self._storage.payloads.upload_blob(blob, text.encode("utf-8"), overwrite=True)
        return {name: "", f"{name}_blob": blob}

    async def _get_part(self, entity: dict, name: str) -> Any:
        blob = entity.get(f"{name}_blob")
        if blob:
            downloader = await self._storage.payloads.download_blob(blob)
            return json.loads((await downloader.readall()).decode("utf-8"))
        text = entity.get(name)
        return json.loads(text) if text else None

    # -- entity <-> Run ----------------------------------------------------------------------------
    async def _to_entity(self, run: Run, *, with_request: bool) -> dict[str, Any]:
        entity: dict[str, Any] = {
            "PartitionKey": run.id, "RowKey": RUN_ROW,
            "status": run.status, "created_at": run.created_at, "model": run.model,
            "session_id": run.session_id or "", "metadata": _dumps(run.metadata),
            "response_id": run.response_id or "", "stream": run.stream,
            "completed_at": run.completed_at, "poll_seq": run.poll_seq, "poll_nonce": run.poll_nonce,
            "poll_count": run.poll_count, "next_poll_at": run.next_poll_at, "deadline_at": run.deadline_at,
            "webhook_url": run.webhook_url or "",
            "webhook": _dumps(run.webhook) if run.webhook else "",
            "webhook_due_at": run.webhook_due_at,
            "webhook_state": (run.webhook or {}).get("state", ""),
        }
        if with_request:
            entity.update(await self._put_part(run.id, "request", run.request))
        if run.result is not None and not run.result_stored:
            entity.update(await self._put_part(run.id, "result", run.result))
        return {k: v for k, v in entity.items() if v is not None}

    async def _from_entity(self, entity) -> Run:
        return Run(
            id=entity["PartitionKey"], status=entity["status"], created_at=entity["created_at"],
            model=entity["model"], request=await self._get_part(entity, "request") or {},
            session_id=entity.get("session_id") or None, metadata=json.loads(entity.get("metadata") or "{}"),
            response_id=entity.get("response_id") or None, stream=bool(entity.get("stream")),
            completed_at=entity.get("completed_at"), result=await self._get_part(entity, "result"),
            poll_seq=entity.get("poll_seq", 0), poll_nonce=entity.get("poll_nonce", ""),
            poll_count=entity.get("poll_count", 0), next_poll_at=entity.get("next_poll_at"),
            deadline_at=entity.get("deadline_at", 0.0), webhook_url=entity.get("webhook_url") or None,
            webhook=json.loads(entity["webhook"]) if entity.get("webhook") else None,
            webhook_due_at=entity.get("webhook_due_at"),
            etag=entity.metadata.get("etag"),
            result_stored=bool(entity.get("result") or entity.get("result_blob")),
        )

    # -- operations ----------------------------------------------------------------------------------
    async def create(self, run: Run) -> Run:
        entity = await self._to_entity(run, with_request=True)
        try:
            meta = await self._table.create_entity(entity)
        except ResourceExistsError:
            raise Conflict(run.id) from None
        run.etag = meta.get("etag")
        run.result_stored = run.result is not None
        return run

    async def get(self, run_id: str) -> Run | None:
        try:
            entity = await self._table.get_entity(run_id, RUN_ROW)
        except ResourceNotFoundError:
            return None
        return await self._from_entity(entity)

    async def save(self, run: Run) -> Run:
        """Write the run if nobody changed it since it was read; raises Conflict otherwise.

        MERGE keeps the parts not rewritten (the request, a stored result)."""
        entity = await self._to_entity(run, with_request=False)
        try:
            meta = await self._table.update_entity(entity, mode=UpdateMode.MERGE, etag=run.etag,
                                                   match_condition=MatchConditions.IfNotModified)
        except (ResourceModifiedError, ResourceNotFoundError):
            raise Conflict(run.id) from None
        run.etag = meta.get("etag")
        run.result_stored = run.result is not None
        return run

    async def delete(self, run_id: str) -> None:
        try:
            await self._table.delete_entity(run_id, RUN_ROW)
        except ResourceNotFoundError:
            pass

    async def find(self, query: str, parameters: dict[str, Any]) -> list[str]:
        """Run ids matching a filter (a scan: for the sweeper only, never on a request path)."""
        ids = []
        async for entity in self._table.query_entities(query, parameters=parameters, select=["PartitionKey"]):
            ids.append(entity["PartitionKey"])
        return ids


def now() -> float:
    return time.time()
