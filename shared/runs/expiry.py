"""A run still going at its deadline: cancel it at the provider, then end it `expired` (runs.ending), unless it ended
meanwhile. The poll step's look at the deadline does it, and so does the sweeper for a run whose chain is late (a poll
queue slower than the sweep, so expiry waits at most a sweep interval); both end the run through runs.ending, whose
ETag-guarded finish lets exactly one of them end it.

The provider is asked first, so a run that completed just before its deadline keeps its output. A cancel that fails
for now is tried again on the chain (the run must not end while the provider goes on), for at most
CANCEL_RETRY_WINDOW_SECONDS; one the provider refuses ends the run expired all the same, and says so.
"""

from __future__ import annotations

import logging

from .. import clock
from ..provider import ProviderError, ProviderState, RunBackend
from ..responses_vocabulary import RunStatus
from .ending import DeadlinePassed, ProviderEnded, RunEnding
from .model import Run
from .poll_chain import Backoff, PollScheduler

log = logging.getLogger("bgruns.expiry")

# A cancel at the deadline that fails for now is tried again for this long; then the run ends expired anyway.
CANCEL_RETRY_WINDOW_SECONDS = 600.0


class RunExpiry:
    def __init__(
        self, backend: RunBackend, ending: RunEnding, scheduler: PollScheduler, retry_backoff: Backoff
    ) -> None:
        self._backend = backend  # cancels the run's response
        self._ending = ending
        self._scheduler = scheduler  # the chain's next step, when a cancel must be tried again
        self._retry_backoff = retry_backoff

    async def expire(self, run: Run, *, deliver_now: bool = True) -> RunStatus | None:
        """End a run past its deadline (it has a response). Returns its status as it ended, or None: the cancel
        failed for now and the chain's next step (scheduled here) tries again. `deliver_now`: as RunEnding.end."""
        state: ProviderState | None = None
        refused = ""
        try:
            state = await self._backend.cancel(run.response_id or "", deployment=run.at)
        except ProviderError as error:
            if error.transient and clock.now() < run.deadline_at + CANCEL_RETRY_WINDOW_SECONDS:
                log.warning("run %s: cancel at deadline failed for now (%s); trying again", run.id, error.message)
                await self._scheduler.schedule(
                    run, self._retry_backoff.delay(run.poll_count, retry_after=error.retry_after)
                )
                return None
            log.warning("run %s: could not cancel at the deadline (%s): %s", run.id, error.status, error.message)
            refused = (
                f" The provider refused to cancel it ({error.status}): {error.message}."
                if not error.transient
                else f" Cancelling it at the provider kept failing: {error.message}."
            )
        if state is not None and not state.is_active and state.status != RunStatus.CANCELLED:
            observed: ProviderEnded | DeadlinePassed = ProviderEnded(state.response)  # it ended before the cancel
        else:
            observed = DeadlinePassed(refused)
        ended = await self._ending.end(run, observed, deliver_now=deliver_now)
        return RunStatus(ended.status)
