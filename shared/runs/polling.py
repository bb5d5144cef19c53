"""One step of a run's poll chain (a queue message): learn the provider's state, then end the run (runs.ending) or
schedule the next step.

How the state is learned is the completion strategy's observer: `poll` asks once (retrieve by id), `watch`
holds the provider's stream for a window and returns at its terminal event. With `push` the provider's
webhooks end runs (runs.provider_event_inbox) and this chain is only the safety net, with a slow backoff.

The provider is asked first, so a run that completed just before its deadline keeps its output; only a run
still going at its deadline is cancelled at the provider and ends `expired` (runs.expiry, which the sweeper also
uses for a run whose chain is late). Provider 429/5xx/timeouts are
retried on the chain, honouring Retry-After; a refusal that retrying cannot fix (auth, configuration) fails
the run with the provider's message. A step that ends a run does it through runs.ending, which makes the first
webhook attempt right there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from enum import StrEnum
from typing import Any, Protocol

from .. import clock, telemetry
from ..provider import ProviderError, ProviderState, RunBackend
from ..responses_vocabulary import ErrorCode, RunStatus, is_terminal_event
from .admission import AdmissionOutcome, RunAdmission
from .ending import Failed, Observed, ProviderEnded, RunEnding
from .expiry import RunExpiry
from .model import Run
from .poll_chain import Backoff, PollMessage, PollScheduler
from .store import RunStore
from .stream_following import StreamFollower

log = logging.getLogger("bgruns.polling")

# A message one step ahead of the run was sent by a writer that has not saved yet; give it a moment.
EARLY_MESSAGE_RETRIES = 3
# An executor run no attempt has begun (queued behind others on the execute queue) is looked at this often, not on the
# backoff's seconds: nothing but the deadline can end it before its attempt does (which ends the run itself and sets it
# in_progress as it begins), and its lost execute message is queued again only after minutes
# (executor.backend.UNCLAIMED_REDISPATCH_SECONDS). Under a backlog, hundreds of such runs polling every 2 s were most of
# the poll queue and kept the steps that matter late. Once an attempt began, the chain's next look finds it and
# goes back to the backoff: a dead attempt is noticed up to this much later (on Azure its message would come back only
# after 10 minutes).
EXECUTOR_WAITING_LOOK_SECONDS = 60.0


class EarlyMessage(Exception):
    """Raised so the host redelivers the message after its visibility timeout."""


class Observer(Protocol):
    """How a poll step learns the provider's state of a run's response."""

    async def observe(self, run: Run) -> ProviderState: ...


class RetrieveObserver:
    """Poll: ask the provider once."""

    def __init__(self, backend: RunBackend) -> None:
        self._backend = backend

    async def observe(self, run: Run) -> ProviderState:
        return await self._backend.observe(run.response_id or "", deployment=run.at)


class StreamWatcher:
    """Watch: follow the response's event stream (it was created streaming) for up to `window` seconds and return at
    its terminal event; otherwise (the window passed, the stream ended or cannot be had) ask once.
    `run.watch_position` is where the next step resumes."""

    def __init__(self, backend: RunBackend, window: float) -> None:
        self._backend = backend
        self._window = window

    async def observe(self, run: Run) -> ProviderState:
        response_id = run.response_id or ""
        follower = StreamFollower(self._backend, response_id, run.watch_position, deployment=run.at)
        try:
            async with asyncio.timeout(self._window), contextlib.aclosing(follower.events()) as events:
                async for event in events:
                    run.watch_position = follower.position
                    if is_terminal_event(event.type):
                        return ProviderState(response_id, event.response.status, event.response)
        except TimeoutError:
            pass
        except ProviderError as error:  # the chain's own retry policy (Retry-After included) applies below
            if not error.transient:
                log.info("run %s: the provider cannot stream it (%s); polling instead", run.id, error.message)
        return await self._backend.observe(response_id, deployment=run.at)


class PollOutcome(StrEnum):
    """What a poll step did, when it did not end the run (then its outcome is the run's status)."""

    MALFORMED = "malformed"
    UNKNOWN_RUN = "unknown-run"
    ALREADY_TERMINAL = "already-terminal"
    STALE = "stale"  # not the run's current chain position: a duplicate, or a message of a chain taken over
    PENDING = "pending"  # still going: the next step is scheduled
    RETRY = "retry"  # a provider hiccup: the next step is scheduled with the retry backoff


class PollStep:
    def __init__(
        self,
        store: RunStore,
        observer: Observer,
        expiry: RunExpiry,
        ending: RunEnding,
        scheduler: PollScheduler,
        backoff: Backoff,
        *,
        retry_backoff: Backoff | None = None,
        admission: RunAdmission | None = None,
    ) -> None:
        """`backoff` spaces the chain's steps (zero for watch: the next window starts at once);
        `retry_backoff` spaces retries after a provider hiccup. `expiry` ends a run at its deadline.
        `admission` tries the create of a run queued for provider capacity (it has no response yet)."""
        self._store = store
        self._observer = observer
        self._expiry = expiry
        self._ending = ending
        self._scheduler = scheduler
        self._backoff = backoff
        self._retry_backoff = retry_backoff or backoff
        self._admission = admission

    async def handle(
        self, data: Mapping[str, Any], dequeue_count: int = 1
    ) -> PollOutcome | AdmissionOutcome | RunStatus:
        """Handle one poll message; returns what happened (for logs and tests)."""
        try:
            message = PollMessage.parse(data)
        except (KeyError, TypeError, ValueError):
            log.warning("dropping malformed poll message %r", data)
            return PollOutcome.MALFORMED
        run = await self._store.get(message.run_id)
        if run is None:
            return PollOutcome.UNKNOWN_RUN
        telemetry.bind_run(run)
        if run.is_terminal:
            return PollOutcome.ALREADY_TERMINAL
        if message.seq == run.poll_seq + 1 and dequeue_count < EARLY_MESSAGE_RETRIES:
            raise EarlyMessage(f"poll {message.seq} for {run.id} arrived before its run was saved")
        if (message.seq, message.nonce) != (run.poll_seq, run.poll_nonce):
            return PollOutcome.STALE
        run.chain_restarts = 0  # the chain lives: the sweeper's next restart comes after the plain grace again
        if not run.response_id:  # queued for provider capacity: this step tries its create
            if run.admission is not None and self._admission is not None:
                return await self._admission.step(run)
            return PollOutcome.STALE
        try:
            state = await self._observer.observe(run)
        except ProviderError as error:
            return await self._on_failure(run, error)
        if not state.is_active:
            return await self._end(run, ProviderEnded(state.response))
        if clock.now() >= run.deadline_at:
            return await self._expire(run)
        await self._scheduler.schedule(run, self._next_look(run, state), status=state.status)
        return PollOutcome.PENDING

    def _next_look(self, run: Run, state: ProviderState) -> float:
        """The backoff's delay; for an executor run no attempt has begun, a long one (EXECUTOR_WAITING_LOOK_SECONDS).
        The scheduler brings either forward to just after the deadline."""
        delay = self._backoff.delay(run.poll_count)
        if run.backend == "executor" and state.status == RunStatus.QUEUED:
            return max(delay, EXECUTOR_WAITING_LOOK_SECONDS)
        return delay

    async def _on_failure(self, run: Run, error: ProviderError) -> PollOutcome | RunStatus:
        if not error.transient:
            return await self._end(
                run,
                Failed(
                    ErrorCode.PROVIDER_ERROR,
                    f"The provider refused to report on the run ({error.status}): {error.message}",
                ),
            )
        if clock.now() >= run.deadline_at:
            return await self._expire(run)
        delay = self._retry_backoff.delay(run.poll_count, retry_after=error.retry_after)
        log.info("run %s: provider hiccup (%s); next poll in %.1fs", run.id, error.message, delay)
        await self._scheduler.schedule(run, delay, error=f"provider {error.status or 'unreachable'}")
        return PollOutcome.RETRY

    async def _expire(self, run: Run) -> PollOutcome | RunStatus:
        ended = await self._expiry.expire(run)
        return PollOutcome.RETRY if ended is None else ended

    async def _end(self, run: Run, observed: Observed) -> RunStatus:
        ended = await self._ending.end(run, observed)
        return RunStatus(ended.status)
