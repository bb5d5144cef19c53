"""The poll chain: the queue messages that make a run look at its provider again, with backoff.

The chain is guarded by (poll_seq, poll_nonce) on the run: a message is acted on only if it carries the
run's current pair. The next message is sent *before* the run is saved with the new pair, so a crash in
between leaves the old message (not yet deleted by the host) to be redelivered and retried, and the unsaved
new message is dropped as stale. At-least-once delivery can never fork a chain.
"""

from __future__ import annotations

import logging
import math
import random
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .. import clock, telemetry
from ..storage import Queue
from ..telemetry import context as trace_context
from .model import Run
from .store import RunConflict, RunStore

log = logging.getLogger("bgruns.poll_chain")

# A provider's Retry-After is honoured up to this, so one bad header cannot stall a run.
MAX_RETRY_AFTER_SECONDS = 600.0
# The last poll before a deadline is scheduled for just after it, so an unfinished run expires on time.
DEADLINE_SLACK_SECONDS = 0.5


@dataclass(frozen=True)
class PollMessage:
    """One step of a run's poll chain, with the run's W3C trace context (optional), carried by every message of
    the chain, so a step on any instance, or after a host restart, joins the run's trace."""

    run_id: str
    seq: int
    nonce: str
    traceparent: str = ""
    tracestate: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "seq": self.seq,
            "nonce": self.nonce,
            **trace_context.fields(self.traceparent, self.tracestate),
        }

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> PollMessage:
        """Raises KeyError/TypeError/ValueError for a malformed message (a bad trace context is just dropped)."""
        return cls(str(data["run_id"]), int(data["seq"]), str(data["nonce"]), *trace_context.from_message(data))


@dataclass(frozen=True)
class Backoff:
    initial: float
    maximum: float
    multiplier: float
    # The first step's own delay, before the curve (push: an early look that learns whether the provider has
    # begun the run, so its status says `in_progress` while the slow safety net waits); None: the curve's.
    first: float | None = None

    def delay(
        self, poll_count: int, *, retry_after: float | None = None, rng: Callable[[], float] = random.random
    ) -> float:
        """Exponential from `initial` to `maximum` with ±20 % jitter; a provider's Retry-After can only
        lengthen it (bounded). The exponent is capped where the curve reaches the maximum, so a chain of any
        length never overflows."""
        if self.maximum <= 0:
            return 0.0 if retry_after is None else min(retry_after, MAX_RETRY_AFTER_SECONDS)
        if self.first is not None:
            if poll_count == 0:
                return self._with_retry_after(self.first * (0.8 + 0.4 * rng()), retry_after)
            poll_count -= 1
        base = min(self.maximum, self.initial * self.multiplier ** min(poll_count, self._exponent_cap))
        return self._with_retry_after(base * (0.8 + 0.4 * rng()), retry_after)

    @staticmethod
    def _with_retry_after(delay: float, retry_after: float | None) -> float:
        return delay if retry_after is None else max(delay, min(retry_after, MAX_RETRY_AFTER_SECONDS))

    @property
    def _exponent_cap(self) -> int:
        if self.multiplier <= 1 or self.maximum <= self.initial:
            return 0
        return math.ceil(math.log(self.maximum / self.initial, self.multiplier)) + 1


class PollScheduler:
    def __init__(self, store: RunStore, queue: Queue) -> None:
        self._store = store
        self._queue = queue  # the poll queue

    async def schedule(
        self,
        run: Run,
        delay: float,
        *,
        status: str | None = None,
        event: str = "poll",
        error: str | None = None,
        save_all: bool = False,
    ) -> bool:
        """Send the next poll message, then save the run with the new chain position (only the chain's
        properties, unless `save_all`: the start's first step also records what the provider answered).
        `event` names the step in the run's timeline (a poll, the provider accepting the start, a repair, ...),
        `error` a hiccup.

        Returns False if the run changed meanwhile (the other writer owns the chain now)."""
        to_deadline = run.deadline_at - clock.now()
        if to_deadline > 0:  # past the deadline (a cancel being retried) the backoff and Retry-After hold
            delay = min(delay, to_deadline + DEADLINE_SLACK_SECONDS)
        delay = max(0.0, delay)
        message = PollMessage(run.id, run.poll_seq + 1, secrets.token_hex(6), run.traceparent, run.tracestate)
        await self._queue.send(message.to_dict(), delay)
        position = (run.poll_seq, run.poll_nonce)
        run.poll_seq, run.poll_nonce = message.seq, message.nonce
        run.poll_count += 1
        run.next_poll_at = clock.now() + delay
        if status:
            run.status = status
        note = {"provider_status": status, "next_poll_in": round(delay, 2), "error": error}
        telemetry.record(run, event, **note)
        try:
            await self._save(run, save_all)
        except RunConflict:
            if not await self._save_over_a_note(run, position, event, note, save_all):
                log.info("run %s changed while scheduling poll %s; that message is stale", run.id, message.seq)
                return False
        return True

    async def _save(self, run: Run, save_all: bool) -> None:
        await (self._store.save(run) if save_all else self._store.save_chain(run))

    async def _save_over_a_note(
        self, run: Run, position: tuple[int, str], event: str, note: dict[str, Any], save_all: bool
    ) -> bool:
        """The save lost to another writer. If that writer left the chain where this step found it (it only
        added a timeline note, such as a refused cancel), keep its note and save the chain again, once."""
        fresh = await self._store.get(run.id)
        if fresh is None or fresh.is_terminal or (fresh.poll_seq, fresh.poll_nonce) != position:
            return False
        run.etag, run.timeline = fresh.etag, fresh.timeline
        if fresh.status == "in_progress":  # the executor marked it as its attempt began: never back to queued
            run.status = "in_progress"
        telemetry.record(run, event, **note)
        try:
            await self._save(run, save_all)
        except RunConflict:
            return False
        return True
