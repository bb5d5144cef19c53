"""The provider's webhooks in: a background response ended, so end its run now instead of at the next poll.

The event carries only the response id: the run is found with one point read of the run index (responses
that are not ours, e.g. another app's in the same project, are acknowledged and ignored), the response is
retrieved once, and the run ends through runs.ending (idempotent: a poll or a duplicate event racing this one
changes nothing), which makes the first webhook attempt right here. Delivery ids are noted so a duplicate or
replayed event does no work; a failure releases the note and answers an error, so the provider retries.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from enum import StrEnum

from .. import clock, telemetry
from ..errors import InvalidRequest, Unavailable
from ..provider import ProviderError, RunBackend
from ..provider.incoming_events import InvalidProviderEvent, ProviderEventVerifier
from ..responses_vocabulary import RunStatus
from .ending import ProviderEnded, RunEnding
from .index import RunIndex
from .model import Run
from .poll_chain import PollScheduler
from .store import RunStore

log = logging.getLogger("bgruns.provider_events")


class EventOutcome(StrEnum):
    """What a provider event did, when it did not end the run (then its outcome is the run's status)."""

    IGNORED = "ignored"  # not the end of a response
    NOT_OURS = "not-ours"  # a response of another app
    DUPLICATE = "duplicate"  # a delivery already handled
    ALREADY_ENDED = "already-ended"
    STILL_RUNNING = "still-running"  # the event ran ahead of what the provider serves: the chain looks in a second


class ProviderEventInbox:
    def __init__(
        self,
        verifier: ProviderEventVerifier,
        index: RunIndex,
        store: RunStore,
        backend: RunBackend,
        ending: RunEnding,
        scheduler: PollScheduler,
    ) -> None:
        self._verifier = verifier
        self._index = index
        self._store = store
        self._backend = backend
        self._ending = ending
        self._scheduler = scheduler

    async def receive(self, body: bytes, headers: Mapping[str, str]) -> EventOutcome | RunStatus:
        """Handle one delivery; returns what happened. Raises InvalidRequest for a delivery that is not a
        genuine, well-formed event (nothing is written), Unavailable when the provider or storage fails."""
        try:
            event = self._verifier.unwrap(body, headers)
        except InvalidProviderEvent as invalid:
            raise InvalidRequest("invalid_provider_event", f"Provider webhook refused: {invalid}") from None
        if not event.ends_a_response or event.response_id is None:
            return EventOutcome.IGNORED
        run_id = await self._index.run_for_response(event.response_id)
        if run_id is None:
            return EventOutcome.NOT_OURS
        at = clock.now()
        if not await self._index.claim_event(event.webhook_id, at):
            return EventOutcome.DUPLICATE
        try:
            return await self._end_run(run_id)
        except BaseException:
            await self._index.release_event(event.webhook_id, at)
            raise

    async def _end_run(self, run_id: str) -> EventOutcome | RunStatus:
        run = await self._store.get(run_id)
        if run is None or run.is_terminal or not run.response_id:
            return EventOutcome.ALREADY_ENDED
        with telemetry.run_step("provider event", run, logger=log.name) as step:
            outcome = await self._end_known_run(run, run.response_id)
            step.set(outcome=outcome.value)
            return outcome

    async def _end_known_run(self, run: Run, response_id: str) -> EventOutcome | RunStatus:
        try:
            state = await self._backend.observe(response_id, deployment=run.at)
        except ProviderError as error:
            raise Unavailable(
                "provider_unavailable",
                f"Could not retrieve the response: {error.message}",
                retry_after=max(1, round(error.retry_after or 5)),
            ) from None
        if state.is_active:  # the event ran ahead of the state the provider serves: look again in a second
            log.info("run %s: provider event says ended, retrieve says %s", run.id, state.status)
            await self._scheduler.schedule(run, 1.0, status=state.status, event="provider_event")
            return EventOutcome.STILL_RUNNING
        ended = await self._ending.end(run, ProviderEnded(state.response))
        return RunStatus(ended.status)
