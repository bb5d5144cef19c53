"""Retention: ended runs (with their blobs), idle sessions and old Idempotency-Keys are deleted after the
retention period. The run index lists what falls due each day, so a pass reads only what it deletes.

An entry is only a hint: each item is checked before it is deleted (a session used again since, a run whose
webhook is being redelivered, a key claimed again), and one that is not due yet is noted for later.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Protocol

from .. import clock
from .idempotency import IdempotencyStore
from .index import RunIndex
from .sessions import SessionStore
from .store import RunStore

log = logging.getLogger("bgruns.retention")

DAY = 86400.0
# Providers retry a webhook for up to 72 hours; a delivery id is remembered a day longer than that.
EVENT_MEMORY_SECONDS = 4 * DAY


class EventLogs(Protocol):
    """Executor runs' event logs (shared.executor.event_log.EventLog): purged with their runs."""

    async def purge(self, run_id: str) -> int: ...


class RetentionPurger:
    def __init__(
        self,
        store: RunStore,
        sessions: SessionStore,
        idempotency: IdempotencyStore,
        index: RunIndex,
        retention_seconds: float,
        events: EventLogs | None = None,
    ) -> None:
        self._store = store
        self._events = events
        self._sessions = sessions
        self._idempotency = idempotency
        self._index = index
        self._retention = retention_seconds

    async def purge(self) -> dict[str, int]:
        purged: Counter[str] = Counter()
        async for partition, kind, ident in self._index.expired(before=clock.now()):
            if kind == "run":
                purged["runs"] += await self._purge_run(ident)
            elif kind == "session":
                purged["sessions"] += await self._purge_session(ident)
            elif kind == "idempotency":
                await self._idempotency.purge(ident)
                purged["idempotency_keys"] += 1
            await self._index.forget(partition, kind, ident)
        purged["provider_event_ids"] = await self._index.forget_events_before(clock.now() - EVENT_MEMORY_SECONDS)
        purged = +purged  # drop the zero counts
        if purged:
            log.info("retention purged %s", dict(purged))
        return dict(purged)

    async def _purge_run(self, run_id: str) -> int:
        run = await self._store.get(run_id)
        if run is None:
            await self._store.delete_blobs(run_id)
            await self._purge_log(run_id)
            return 0
        ended = run.completed_at or 0.0
        if run.is_terminal and not (run.webhook and run.webhook.is_pending) and clock.now() >= ended + self._retention:
            if run.backend == "executor":
                await self._purge_log(run_id)  # first: the run's index entry is what leads back to its log
            await self._index.unlist(run)
            await self._store.purge(run_id)
            if run.response_id:
                await self._index.forget_response(run.response_id)
            return 1
        await self._index.expire_at("run", run_id, max(ended + self._retention, clock.now() + DAY))  # not yet: later
        return 0

    async def _purge_log(self, run_id: str) -> None:
        if self._events is not None:
            await self._events.purge(run_id)

    async def _purge_session(self, session_id: str) -> int:
        session = await self._sessions.get(session_id)
        if session is None:
            return 0
        if clock.now() < session.updated_at + self._retention:  # used since: look again when that use has aged
            await self._index.expire_at("session", session_id, session.updated_at + self._retention)
            return 0
        active = await self._store.get(session.active_run_id) if session.active_run_id else None
        if active is not None and active.is_active:
            await self._index.expire_at("session", session_id, clock.now() + DAY)
            return 0
        await self._sessions.purge(session_id)
        return 1
