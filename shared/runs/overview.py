"""What the console shows beyond the API's run views: how long after the provider ended a run its webhook was
delivered, the runs each caller has in flight, and each caller's capacity (its quota and what it holds of it).

The lag needs the run itself (its webhook attempts and the `finished` timeline entry, which notes the provider's
`completed_at`), so a listed page reads the runs it shows (one point read each, concurrently; never the result).
The per-caller counts read the open-work index and the runs in it: their cost follows the runs in flight (as
the sweeper's does), and at most MAX_OPEN_READ of them are read. The capacity adds one query over the quota
partitions (CallerQuotas.usage), none when no caller's active runs are capped.

A caller is named as the quotas name it (runs.quotas.quota_caller): the native API's runs, which have no owner, are
`@native`'s, the name CALLER_QUOTAS gives them.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterable
from typing import Any

from ..responses_vocabulary import RunStatus
from .callers import OPERATOR, Caller
from .index import RunIndex
from .listing import RunLister, RunPage
from .model import Run
from .pacing import ProviderPacing
from .quotas import CallerQuotas, quota_caller
from .store import RunStore

MAX_OPEN_READ = 500
_CONCURRENT_READS = 16


def provider_ended_at(run: Run) -> float | None:
    """When the provider said the run's response ended; when we saw it end where the provider did not say."""
    finished = run.timeline.latest("finished") or {}
    return finished.get("provider_completed_at") or run.completed_at


def webhook_lag(run: Run) -> float | None:
    """Seconds from the provider's end of the run to its webhook's first successful delivery (None: no webhook,
    or none delivered yet). OpenAI's `completed_at` is whole seconds, so the lag may read up to 1 s long."""
    ended = provider_ended_at(run)
    if run.webhook is None or ended is None:
        return None
    entries = run.timeline.view(run.webhook.attempts)["entries"]
    delivered = [e["at"] for e in entries if e["type"] == "webhook_attempt" and e.get("ok") and e["at"]]
    return round(max(0.0, min(delivered) - ended), 3) if delivered else None


def webhook_summary(run: Run) -> dict[str, Any] | None:
    if not run.webhook_url:
        return None
    hook = run.webhook
    return {
        "state": hook.state if hook else "waiting",
        "attempts": len(hook.attempts) if hook else 0,
        "lag_seconds": webhook_lag(run),
    }


class RunOverview:
    def __init__(
        self, lister: RunLister, store: RunStore, index: RunIndex, quotas: CallerQuotas, pacing: ProviderPacing
    ) -> None:
        self._lister = lister
        self._store = store
        self._index = index
        self._quotas = quotas
        self._pacing = pacing

    async def limiters(self) -> list[dict[str, Any]]:
        """The provider pacing's limiter per model (deployment): budgets, bucket, next slot, callers waiting."""
        return await self._pacing.view()

    async def page(self, *, caller: Caller = OPERATOR, **filters: Any) -> RunPage:
        """RunLister.page, each listed run with its `webhook` summary (state, attempts, lag)."""
        listed = await self._lister.page(caller=caller, **filters)
        runs = await self._read([summary["id"] for summary in listed.runs])
        for summary in listed.runs:
            run = runs.get(summary["id"])
            summary["webhook"] = webhook_summary(run) if run is not None else None
        return listed

    async def in_flight_by_caller(self) -> dict[str, Any]:
        """Per caller: runs still going (`active`; `queued` of them still have status queued, `waiting_for_capacity`
        of those wait for the provider to have room: runs.admission) and ended runs whose webhook is still being
        delivered."""
        ids = []
        async for run_id in self._index.open_run_ids():
            ids.append(run_id)
            if len(ids) > MAX_OPEN_READ:
                break
        runs = await self._read(ids[:MAX_OPEN_READ])
        active: Counter[str] = Counter()
        queued: Counter[str] = Counter()
        waiting: Counter[str] = Counter()
        webhooks: Counter[str] = Counter()
        for run in runs.values():
            owner = quota_caller(run.owner)
            if run.is_active:
                active[owner] += 1
                if run.status == RunStatus.QUEUED:
                    queued[owner] += 1
                if run.admission is not None and run.admission.granted_at is None:
                    waiting[owner] += 1
            elif run.webhook is not None and run.webhook.is_pending:
                webhooks[owner] += 1
        callers = sorted(set(active) | set(webhooks))
        return {
            "callers": {
                name: {
                    "active": active[name],
                    "queued": queued[name],
                    "waiting_for_capacity": waiting[name],
                    "webhook_pending": webhooks[name],
                }
                for name in callers
            },
            "open_runs_read": len(runs),
            "complete": len(ids) <= MAX_OPEN_READ,
        }

    async def capacity_by_caller(self, callers: Iterable[str], in_flight: dict[str, Any]) -> dict[str, Any]:
        """Per caller (those named, those in `in_flight_by_caller()`'s answer, those holding an active-run slot): its
        quota (0: unlimited), the slots it holds (None when its active runs are not capped: none are kept for it),
        and of its runs in flight, those going, those with status `queued` and those of them waiting for capacity."""
        counts = in_flight["callers"]
        usage = await self._quotas.usage([*callers, *counts])
        idle = {"active": 0, "queued": 0, "waiting_for_capacity": 0}
        return {
            name: {
                **held,
                "active_runs": counts.get(name, idle)["active"],
                "status_queued": counts.get(name, idle)["queued"],
                "waiting_for_capacity": counts.get(name, idle)["waiting_for_capacity"],
            }
            for name, held in usage.items()
        }

    async def _read(self, run_ids: list[str]) -> dict[str, Run]:
        gate = asyncio.Semaphore(_CONCURRENT_READS)

        async def read(run_id: str) -> Run | None:
            async with gate:
                return await self._store.get(run_id)

        runs = await asyncio.gather(*(read(run_id) for run_id in run_ids))
        return {run.id: run for run in runs if run is not None}
