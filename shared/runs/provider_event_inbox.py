"""The provider's webhooks in: a background response ended, so end its run now instead of at the next poll.

The event carries only the response id: the run is found with one point read of the run index (responses
that are not ours, e.g. another app's in the same project, are acknowledged and ignored), the response is
retrieved once, the run ends through the lifecycle (idempotent: a poll or a duplicate event racing this one
changes nothing), and the first webhook attempt is made right here. Delivery ids are noted so a duplicate or
replayed event does no work; a failure releases the note and answers an error, so the provider retries.
"""
from __future__ import annotations

import logging
from typing import Mapping

from .. import clock, telemetry
from ..errors import InvalidRequest, Unavailable
from ..provider import ProviderError, RunBackend
from ..provider.incoming_events import InvalidProviderEvent, ProviderEventVerifier
from .index import RunIndex
from .lifecycle import RunLifecycle
from .poll_chain import PollScheduler
from .polling import INLINE_WEBHOOK_BUDGET_SECONDS, outcome
from .store import RunStore
from .webhook_outbox import WebhookOutbox

log = logging.getLogger("bgruns.provider_events")


class ProviderEventInbox:
    def __init__(self, verifier: ProviderEventVerifier, index: RunIndex, store: RunStore, backend: RunBackend,
                 lifecycle: RunLifecycle, scheduler: PollScheduler, outbox: WebhookOutbox) -> None:
        self._scheduler = scheduler
        self._verifier = verifier
        self._index = index
        self._store = store
        self._backend = backend
        self._lifecycle = lifecycle
        self._outbox = outbox

    async def receive(self, body: bytes, headers: Mapping[str, str]) -> str:
        """Handle one delivery; returns what happened. Raises InvalidRequest for a delivery that is not a
        genuine, well-formed event (nothing is written), Unavailable when the provider or storage fails."""
        try:
            event = self._verifier.unwrap(body, headers)
        except InvalidProviderEvent as invalid:
            raise InvalidRequest("invalid_provider_event", f"Provider webhook refused: {invalid}") from None
        if not event.ends_a_response:
            return "ignored"
        run_id = await self._index.run_for_response(event.response_id)
        if run_id is None:
            return "not-ours"
        at = clock.now()
        if not await self._index.claim_event(event.webhook_id, at):
            return "duplicate"
        try:
            return await self._end_run(run_id)
        except BaseException:
            await self._index.release_event(event.webhook_id, at)
            raise

    async def _end_run(self, run_id: str) -> str:
        run = await self._store.get(run_id)
        if run is None or run.is_terminal or not run.response_id:
            return "already-ended"
        with telemetry.run_step("provider event", run, logger=log.name) as step:
            step.set(outcome=await self._end_known_run(run))
            return step.fields["outcome"]

    async def _end_known_run(self, run) -> str:
        try:
            state = await self._backend.observe(run.response_id)
        except ProviderError as error:
            raise Unavailable("provider_unavailable", f"Could not retrieve the response: {error.message}",
                              retry_after=max(1, round(error.retry_after or 5))) from None
        if state.is_active:  # the event ran ahead of the state the provider serves: look again in a second
            log.info("run %s: provider event says ended, retrieve says %s", run.id, state.status)
            await self._scheduler.schedule(run, 1.0, status=state.status, event="provider_event")
            return "still-running"
        status, result = outcome(run, state)
        ended = await self._lifecycle.finish(run, status, result, inline_webhook=True)
        await self._outbox.deliver_now(ended, budget=INLINE_WEBHOOK_BUDGET_SECONDS)
        return status
