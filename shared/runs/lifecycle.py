"""What ending a run does, under runs.ending (the one way a run ends, and the only caller of `finish`): the terminal
save, once, and its follow-ups.

`finish` stores the result and the terminal status (sticky: a cancel racing a completion cannot be undone
by either side; whoever saves first wins), every outstanding poll message becomes stale, and then the
follow-ups run: the session advances, the caller's active-run slot is given back (runs.quotas), the run is
given its retention date, the webhook is queued, and the run leaves the open-work index when nothing is left to
do. The follow-ups are idempotent: after a crash the
sweeper runs them again for every run still in the index.
"""

from __future__ import annotations

import logging
from typing import Any

from .. import clock, telemetry
from ..responses_vocabulary import CONTINUABLE_STATUSES
from ..storage import Queue
from .index import RunIndex
from .model import Run
from .quotas import CallerQuotas
from .sessions import SessionConflict, SessionStore
from .store import RunConflict, RunStore
from .webhook_state import WebhookState

log = logging.getLogger("bgruns.lifecycle")


class RunLifecycle:
    def __init__(
        self,
        store: RunStore,
        sessions: SessionStore,
        index: RunIndex,
        webhook_queue: Queue,
        retention_seconds: float,
        inline_safety_delay: float,
        quotas: CallerQuotas | None = None,
    ) -> None:
        self._store = store
        self._sessions = sessions
        self._index = index
        self._webhook_queue = webhook_queue
        self._retention = retention_seconds
        self._quotas = quotas  # gives back the caller's active-run slot the run holds
        # When the finisher makes the first delivery attempt itself, the queued message waits this long, as the
        # safety net for a finisher that dies mid-attempt (a message that finds the delivery done does nothing).
        self._inline_safety_delay = inline_safety_delay

    async def finish(self, run: Run, status: str, result: dict[str, Any], *, inline_webhook: bool = False) -> Run:
        """End the run once; returns the run as it ended (ours, or the other writer's if it ended first).

        `inline_webhook`: the caller makes the first delivery attempt itself (WebhookOutbox.deliver_now) right
        after this returns, saving the queue hop; the queued message is then only the safety net."""
        while not run.is_terminal:
            run.status, run.result, run.completed_at = status, result, clock.now()
            run.result_stored = False
            run.poll_seq += 1  # every outstanding poll message is now stale
            run.next_poll_at = None
            if run.webhook_url:
                run.webhook = WebhookState.begin(clock.now(), run.traceparent, run.tracestate)
            telemetry.finishing(run, status)
            try:
                await self._store.save(run)
            except RunConflict:
                fresh = await self._store.get(run.id, with_result=True)
                if fresh is None:
                    return run
                run = fresh
                continue
            telemetry.finished(run)
            log.info("run %s ended %s", run.id, status)
            await self.follow_up(
                run, send_webhook=True, webhook_delay=self._inline_safety_delay if inline_webhook else 0.0
            )
        return run

    async def follow_up(self, run: Run, *, send_webhook: bool, webhook_delay: float = 0.0) -> None:
        """What must happen after a run ended (idempotent). `send_webhook`: queue the pending delivery."""
        await self.advance_session(run)
        if self._quotas:  # before the run can leave the open-work index: the sweeper repeats this until then
            await self._quotas.release_for(run)
        retention_at = (run.completed_at or clock.now()) + self._retention
        await self._index.expire_at("run", run.id, retention_at)
        if not await self._relist(run, retention_at):
            return  # deleted meanwhile: nothing is left to follow up
        if run.session_id:
            await self._index.expire_at("session", run.session_id, clock.now() + self._retention)
        if run.webhook and run.webhook.is_pending:
            if send_webhook:
                await self._webhook_queue.send(run.webhook.message(run.id).to_dict(), webhook_delay)
        else:
            await self._index.mark_done(run.id)

    async def _relist(self, run: Run, retention_at: float) -> bool:
        """The run's rows in the run lists now show how it ended. A missing row is written again only while the run
        exists, and checked after the write: a DELETE racing this end (it purges the run, then removes its rows)
        either removes what was written here or is seen here, so no row outlives the run. False: it was deleted."""
        missing = await self._index.relist(run)
        if not missing:
            return True
        await self._index.list_run(run, missing)
        if await self._store.get(run.id) is not None:
            return True
        log.info("run %s was deleted while it ended; its rows go too", run.id)
        await self._index.unlist(run)
        await self._index.forget_expiry("run", run.id, retention_at)
        return False

    async def advance_session(self, run: Run) -> None:
        """The session continues from this run's response (only when it produced one worth continuing), and only
        while the session still names this run as its active one: a follow-up run again later (the sweeper, a
        late finisher) must never move the session back to an earlier turn."""
        if not run.session_id:
            return
        for _ in range(5):
            session = await self._sessions.get(run.session_id)
            if session is None or session.active_run_id != run.id:
                return  # gone, or it has moved on from this run: nothing here is this run's to change
            if run.status in CONTINUABLE_STATUSES and run.response_id:
                session.last_response_id, session.last_deployment = run.response_id, run.at
            session.active_run_id, session.active_since = None, 0.0
            try:
                await self._sessions.save(session)
                return
            except SessionConflict:
                continue
