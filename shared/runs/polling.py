"""One step of a run's poll chain (a queue message): look at the provider, then end the run or schedule the
next look with backoff.

The provider is asked first, so a run that completed just before its deadline keeps its output; only a run
still going at its deadline is cancelled at the provider and ends `expired`. Provider 429/5xx/timeouts are
retried on the chain, honouring Retry-After; a refusal that retrying cannot fix (auth, configuration) fails
the run with the provider's message.
"""
from __future__ import annotations

import logging
from typing import Any, Mapping

from .. import clock
from ..provider import ProviderError, ProviderState, RunBackend
from .lifecycle import RunLifecycle
from .model import Run
from .poll_chain import Backoff, PollMessage, PollScheduler
from .results import failure_result, result_from_response
from .store import RunStore

log = logging.getLogger("bgruns.polling")

# A message one step ahead of the run was sent by a writer that has not saved yet; give it a moment.
EARLY_MESSAGE_RETRIES = 3


class EarlyMessage(Exception):
    """Raised so the host redelivers the message after its visibility timeout."""


class PollStep:
    def __init__(self, store: RunStore, backend: RunBackend, lifecycle: RunLifecycle, scheduler: PollScheduler,
                 backoff: Backoff) -> None:
        self._store = store
        self._backend = backend
        self._lifecycle = lifecycle
        self._scheduler = scheduler
        self._backoff = backoff

    async def handle(self, data: Mapping[str, Any], dequeue_count: int = 1) -> str:
        """Handle one poll message; returns what happened (for logs and tests)."""
        try:
            message = PollMessage.parse(data)
        except (KeyError, TypeError, ValueError):
            log.warning("dropping malformed poll message %r", data)
            return "malformed"
        run = await self._store.get(message.run_id)
        if run is None:
            return "unknown-run"
        if run.is_terminal:
            return "already-terminal"
        if message.seq == run.poll_seq + 1 and dequeue_count < EARLY_MESSAGE_RETRIES:
            raise EarlyMessage(f"poll {message.seq} for {run.id} arrived before its run was saved")
        if (message.seq, message.nonce) != (run.poll_seq, run.poll_nonce) or not run.response_id:
            return "stale"
        try:
            state = await self._backend.observe(run.response_id)
        except ProviderError as error:
            return await self._on_failure(run, error)
        if not state.is_active:
            status, result = result_from_response(state.response)
            await self._lifecycle.finish(run, status, result)
            return status
        if clock.now() >= run.deadline_at:
            return await self._expire(run)
        await self._scheduler.schedule(run, self._backoff.delay(run.poll_count), status=state.status)
        return "pending"

    async def _on_failure(self, run: Run, error: ProviderError) -> str:
        if not error.transient:
            await self._lifecycle.finish(run, "failed", failure_result(
                "provider_error", f"The provider refused to report on the run ({error.status}): {error.message}"))
            return "failed"
        if clock.now() >= run.deadline_at:
            return await self._expire(run)
        delay = self._backoff.delay(run.poll_count, retry_after=error.retry_after)
        log.info("run %s: provider hiccup (%s); next poll in %.1fs", run.id, error.message, delay)
        await self._scheduler.schedule(run, delay)
        return "retry"

    async def _expire(self, run: Run) -> str:
        """Past its deadline and still going: cancel at the provider; if it finished meanwhile, keep that."""
        state: ProviderState | None = None
        try:
            state = await self._backend.cancel(run.response_id)
        except ProviderError as error:  # best effort; the run ends expired either way
            log.warning("run %s: cancel at deadline failed: %s", run.id, error.message)
        if state is not None and not state.is_active and state.status != "cancelled":
            status, result = result_from_response(state.response)
            await self._lifecycle.finish(run, status, result)
            return status
        allowed = run.deadline_at - run.created_at
        await self._lifecycle.finish(run, "expired", failure_result(
            "deadline_exceeded", f"The run did not finish within its deadline of {allowed:.0f} s."))
        return "expired"
