"""Long polling: a read of a run (`Prefer: wait=N`, RFC 7240) is held until the run's status changes (it starts
working, ends, needs action, is cancelled or deleted) or N seconds pass.

How a held read learns of a change:
- made on this instance (a poll step, a provider webhook, a cancel, a stream's end, the executor): every write of a
  run through the RunStore touches RunChanges, which wakes that run's held reads at once;
- made on another instance (or another worker process): the held read reads the run again (one Table read; the
  result's blobs only once it has ended) RECHECK_FIRST_SECONDS after it began, then at intervals growing by
  RECHECK_GROWTH up to RECHECK_MAX_SECONDS. A wait of 60 s costs 15 reads (0.25 a second, 0.2 once the interval
  is at its cap), where the 2-s polling loop costs 30 full GETs (each a function execution and a Table read: 0.5
  reads a second); the lag of a change made elsewhere is at most the interval in force (1 to 5 s).
A wake-up is only a hint: the held read always reads the run from storage, and that read is the answer.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator

from .changes import RunChanges
from .model import Run

RECHECK_FIRST_SECONDS = 1.0
RECHECK_GROWTH = 1.5
RECHECK_MAX_SECONDS = 5.0


def recheck_intervals() -> Iterator[float]:
    """The spacing of a held read's storage re-reads."""
    interval = RECHECK_FIRST_SECONDS
    while True:
        yield interval
        interval = min(interval * RECHECK_GROWTH, RECHECK_MAX_SECONDS)


class RunWaiter:
    def __init__(self, changes: RunChanges) -> None:
        self._changes = changes

    async def wait(self, run: Run, seconds: float, read: Callable[[], Awaitable[Run]]) -> Run:
        """Hold until the run's status is no longer `run.status` (as the caller's read found it), or `seconds`
        pass. Each look is `read()`, the caller's own read (with its result, visible to it, NotFound once it was
        deleted), so the look that sees the change is the answer. A terminal run, or no wait, answers at once."""
        if run.is_terminal or seconds <= 0:
            return run
        loop = asyncio.get_running_loop()  # its monotonic time: a wait is a duration, not a date
        deadline = loop.time() + seconds
        intervals = recheck_intervals()
        status = run.status
        with self._changes.watch(run.id) as woken:
            while (left := deadline - loop.time()) > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(woken.wait(), min(next(intervals), left))
                woken.clear()
                run = await read()
                if run.status != status:
                    break
        return run
