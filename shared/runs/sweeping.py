"""The sweeper (timer): repairs what at-least-once delivery and crashes can leave behind. Idempotent.

It looks only at the runs in the open-work index (active runs, and ended runs whose follow-ups are not
done), so its cost follows the runs in flight, not every run ever kept. For each one:
- an active run past its deadline whose chain's look at it is due (the poll queue runs late under load) is ended
  here, as the chain would (runs.expiry: cancelled at the provider, then `expired`), so a slow poll queue delays
  expiry by a sweep interval at most; should the chain's step come meanwhile, the ETag-guarded finish ends it once;
- an active run whose next poll is overdue (a lost message, a crash between save and send) gets its poll
  chain restarted (for a run queued for provider capacity: its tries); one whose start was interrupted before the
  provider accepted it (or a queued run's try, cut mid-create) ends `failed`. A chain restarted again before any
  step acted waits twice as long for its next restart (Run.poll_is_overdue): its messages are late, not lost;
- an ended run gets its follow-ups (session, retention date) and leaves the index, unless its webhook is
  still pending; a pending webhook that is stuck (no attempt long after it was due) is queued again.
A run the sweeper ends leaves its webhook's first attempt to the queue at once (RunEnding.end, deliver_now=False):
a pass ends many runs 16 at a time, and none of them waits on a slow receiver while the others wait for a slot.
A caller's active-run slot held by no open run (a start that died before noting its run) is given back.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter

from .. import clock, telemetry
from ..responses_vocabulary import ErrorCode
from ..storage import Queue
from .ending import Failed, RunEnding
from .expiry import RunExpiry
from .index import RunIndex
from .lifecycle import RunLifecycle
from .model import Run
from .poll_chain import DEADLINE_SLACK_SECONDS, PollScheduler
from .quotas import CallerQuotas
from .requests import run_id_created_at
from .store import RunConflict, RunStore

log = logging.getLogger("bgruns.sweeping")

# Open runs looked at in parallel: a pass over 1,000 open runs is ~60 round trips deep, not 1,000.
SWEEP_CONCURRENCY = 16


class Sweeper:
    def __init__(
        self,
        store: RunStore,
        index: RunIndex,
        ending: RunEnding,
        expiry: RunExpiry,
        lifecycle: RunLifecycle,
        scheduler: PollScheduler,
        webhook_queue: Queue,
        *,
        grace: float,
        start_grace: float,
        webhook_slack: float,
        quotas: CallerQuotas,
    ) -> None:
        self._store = store
        self._index = index
        self._ending = ending  # ends interrupted starts
        self._expiry = expiry  # ends runs past their deadline whose chain is late
        self._lifecycle = lifecycle  # runs the follow-ups of ended runs again
        self._scheduler = scheduler
        self._webhook_queue = webhook_queue
        self._grace = grace
        self._start_grace = start_grace
        self._webhook_slack = webhook_slack  # how long past due a pending delivery may stay unattempted
        self._quotas = quotas  # reclaims active-run slots whose start died

    async def sweep(self) -> dict[str, int]:
        repaired: Counter[str] = Counter()
        held = await self._quotas.held_slots()  # before the open runs: see CallerQuotas
        run_ids = [run_id async for run_id in self._index.open_run_ids()]
        repaired["slots"] = await self._quotas.reclaim(held, set(run_ids))  # none held (no caller capped): no I/O
        slots = asyncio.Semaphore(SWEEP_CONCURRENCY)

        async def look_at(run_id: str) -> None:
            async with slots:
                repaired[await self._look_at(run_id)] += 1

        # One run that cannot be repaired now (storage down, a bug) does not keep the others waiting a pass;
        # the pass still fails loudly, and the next one tries again.
        errors = [
            e
            for e in await asyncio.gather(*(look_at(run_id) for run_id in run_ids), return_exceptions=True)
            if isinstance(e, BaseException)
        ]
        if errors:
            log.error("sweeper: %d of %d open runs could not be looked at", len(errors), len(run_ids))
            raise errors[0]
        kinds = ("expired", "polls", "starts", "webhooks", "followed_up", "slots")
        found = {key: repaired[key] for key in kinds if repaired[key]}
        if found:
            log.warning("sweeper repaired %s (of %d open runs)", found, len(run_ids))
        return {"open": len(run_ids), **found}

    async def _look_at(self, run_id: str) -> str:
        run = await self._store.get(run_id)
        if run is None:
            await self._forget_missing(run_id)
            return "missing"
        return await (self._tidy_ended(run) if run.is_terminal else self._repair_active(run))

    async def _forget_missing(self, run_id: str) -> None:
        """An index entry without a run: a start that was abandoned, or one not recorded yet (leave those)."""
        created = run_id_created_at(run_id)
        if created is None or clock.now() - created > self._start_grace:
            await self._index.mark_done(run_id)

    async def _repair_active(self, run: Run) -> str:
        if self._chain_late_for_deadline(run):
            with telemetry.run_step("repair run", run, logger=log.name):
                telemetry.annotate(outcome="expired_by_sweeper")
                log.warning("run %s: past its deadline and its chain's look is late; ending it here", run.id)
                ended = await self._expiry.expire(run, deliver_now=False)
            return "expired" if ended is not None else "fine"  # None: the cancel is retried on the chain
        if not run.poll_is_overdue(clock.now(), self._grace):
            return "fine"
        admission = run.admission
        waiting = admission is not None and admission.creating_since is None
        if not run.response_id and not waiting:  # a start, or a queued run's create, in flight or cut
            since = (admission.creating_since or 0.0) if admission else run.created_at
            if clock.now() - since < self._start_grace:
                return "fine"
            with telemetry.run_step("repair run", run, logger=log.name):
                telemetry.annotate(outcome="start_interrupted")
                await self._ending.end(
                    run,
                    Failed(
                        ErrorCode.START_INTERRUPTED, "The run's start was interrupted before the provider accepted it."
                    ),
                    deliver_now=False,
                )
            return "starts"
        overdue = "none due" if run.next_poll_at is None else f"overdue by {clock.now() - run.next_poll_at:.0f}s"
        run.chain_restarts += 1
        log.warning("run %s: poll %s; restarting its poll chain (restart %d)", run.id, overdue, run.chain_restarts)
        with telemetry.run_step("repair run", run, logger=log.name):
            telemetry.annotate(outcome="poll_chain_restarted")
            return "polls" if await self._scheduler.schedule(run, 0, event="repaired") else "fine"

    @staticmethod
    def _chain_late_for_deadline(run: Run) -> bool:
        """Past its deadline (and the slack of the chain's last look), with a response to cancel, and its chain's
        next look due already: not acted on yet. A look still ahead (a cancel being retried) is left to the chain."""
        now = clock.now()
        due = run.next_poll_at is None or run.next_poll_at <= now
        return bool(run.response_id) and now >= run.deadline_at + DEADLINE_SLACK_SECONDS and due

    async def _tidy_ended(self, run: Run) -> str:
        hook = run.webhook
        if hook is None or not hook.is_pending:
            with telemetry.run_step("repair run", run, logger=log.name):
                telemetry.annotate(outcome="followed_up")
                await self._lifecycle.follow_up(run, send_webhook=False)  # leaves the index
            return "followed_up"
        if not hook.is_stuck(clock.now(), self._webhook_slack):
            return "fine"
        with telemetry.run_step("repair run", run, logger=log.name):
            telemetry.annotate(outcome="webhook_requeued")
            await self._lifecycle.follow_up(run, send_webhook=False)  # a crash may have cut those short too
            hook.requeue(clock.now())
            telemetry.record(run, "repaired", what="webhook_requeued")
            try:
                await self._store.save(run)
            except RunConflict:  # the delivery moved on meanwhile: someone else is on it
                return "fine"
            await self._webhook_queue.send(hook.message(run.id).to_dict())
        return "webhooks"
