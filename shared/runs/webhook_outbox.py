"""Delivering a run's webhook from its own queue: one attempt per message, retries on a schedule.

A message acts only if its seq is the delivery's current one (WebhookState), so duplicates and stale retries
do nothing. Each attempt is saved on the run before the next one is queued; a crash in between is repaired
by the sweeper. The `webhook-id` stays the same across every attempt and redelivery of one event.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .. import clock, telemetry
from ..errors import Conflict, InvalidRequest
from ..storage import Queue
from ..webhooks import DestinationRefused, ResolutionFailed, WebhookSender, build_payload, check_url, resolve_and_vet
from .callers import OPERATOR, Caller
from .index import RunIndex
from .model import Run
from .reading import RunReader
from .store import RunConflict, RunStore
from .views import RunViews
from .webhook_state import WebhookMessage

log = logging.getLogger("bgruns.webhook_outbox")

# Receivers get the whole run up to this size; beyond it the output is left out (GET the run for it).
MAX_PAYLOAD_BYTES = 1024 * 1024


@dataclass(frozen=True)
class WebhookUrls:
    """Which webhook URL a start may name: checked at submission (a 400 naming `webhook_url`), and again by the
    sender at every delivery."""

    enabled: bool  # a signing secret is configured (WEBHOOK_SIGNING_SECRETS)
    allow_http: bool  # WEBHOOK_ALLOW_HTTP
    allow_private: bool  # WEBHOOK_ALLOW_PRIVATE_ADDRESSES

    async def vet(self, url: str) -> None:
        if not self.enabled:
            raise InvalidRequest(
                "webhooks_disabled",
                "This service has no webhook signing secret configured, so it "
                "cannot send webhooks (set WEBHOOK_SIGNING_SECRETS).",
                param="webhook_url",
            )
        try:
            parsed = check_url(url, allow_http=self.allow_http, allow_private=self.allow_private)
            await resolve_and_vet(parsed, allow_private=self.allow_private)
        except DestinationRefused as refused:
            raise InvalidRequest(
                "invalid_webhook_url", f"webhook_url refused: {refused}", param="webhook_url"
            ) from None
        except ResolutionFailed as failed:
            raise InvalidRequest(
                "invalid_webhook_url", f"webhook_url refused: its host does not resolve ({failed})", param="webhook_url"
            ) from None


class WebhookOutbox:
    def __init__(
        self,
        store: RunStore,
        reader: RunReader,
        index: RunIndex,
        sender: WebhookSender | None,
        queue: Queue,
        views: RunViews,
        schedule: Sequence[float],
    ) -> None:
        self._store = store
        self._reader = reader
        self._index = index
        self._sender = sender  # None when no signing secret is configured (webhooks are refused at start)
        self._queue = queue
        self._views = views
        self._schedule = schedule

    def payload(self, run: Run) -> bytes:
        """The same bytes on every attempt: the event's timestamp is when the run ended."""
        view = self._views.render(run)
        view.pop("webhook", None)
        ended = run.completed_at or clock.now()
        body = build_payload(view, ended)
        if len(body) <= MAX_PAYLOAD_BYTES:
            return body
        view.update(output=[], output_text=None, output_omitted=True)
        return build_payload(view, ended)

    async def deliver(self, data: Mapping[str, Any]) -> str:
        """One delivery attempt for a webhook queue message; returns what happened (for logs and tests)."""
        try:
            message = WebhookMessage.parse(data)
        except (KeyError, TypeError, ValueError):
            log.warning("dropping malformed webhook message %r", data)
            return "malformed"
        run = await self._store.get(message.run_id, with_result=True)
        if (
            run is None
            or run.webhook is None
            or run.webhook_url is None
            or not run.webhook.accepts(message)
            or self._sender is None
        ):
            return "stale"
        telemetry.bind_run(run)
        with telemetry.webhook_attempt(run) as traced:  # the POST carries the attempt's traceparent
            attempt = await self._sender.send(
                run.webhook_url, run.webhook.id, self.payload(run), headers=traced.headers
            )
            delay = run.webhook.record(attempt, schedule=self._schedule, at=clock.now())
            traced.record(attempt, run.webhook.state)
        try:
            await self._store.save(run)
        except RunConflict:
            log.info("run %s changed during webhook delivery; leaving it to the newer state", run.id)
            return "conflict"
        if delay is not None:
            await self._queue.send(run.webhook.message(run.id).to_dict(), delay)
        else:
            await self._index.mark_done(run.id)
        log.info("run %s webhook attempt %d: %s", run.id, len(run.webhook.attempts), json.dumps(attempt.to_dict()))
        return run.webhook.state

    async def deliver_now(self, run: Run, *, budget: float) -> None:
        """The first attempt of a run that just ended, made by its finisher (no queue hop), within `budget`
        seconds. Whatever happens, the queued safety-net message finishes the job: it does nothing if this
        attempt was recorded, and delivers if it was not (the receiver may then see the event twice, with
        one webhook-id)."""
        if run.webhook is None or not run.webhook.is_pending or self._sender is None:
            return
        try:
            async with asyncio.timeout(budget):
                await self.deliver(run.webhook.message(run.id).to_dict())
        except TimeoutError:
            log.info("run %s: the inline webhook attempt took over %.0f s; the queue takes over", run.id, budget)
        except Exception as error:  # noqa: BLE001 - the queued message retries; never fail the finisher for this
            log.warning(
                "run %s: inline webhook attempt failed (%s); the queue takes over", run.id, type(error).__name__
            )

    async def redeliver(self, run_id: str, *, caller: Caller = OPERATOR) -> Run:
        """Send a finished run's webhook again (same webhook-id), with a fresh retry schedule. NotFound if the
        caller cannot see the run."""
        run = await self._reader.get(run_id, caller=caller)
        if not run.webhook_url:
            raise InvalidRequest("no_webhook", f"Run {run_id!r} has no webhook_url.")
        if not run.is_terminal or run.webhook is None:
            raise Conflict("run_not_finished", f"Run {run_id!r} has not finished; its webhook is sent when it does.")
        await self._index.mark_open(run.id)  # before the save, so a crash in between is swept
        for _ in range(5):
            run.webhook.reopen(clock.now())
            telemetry.record(run, "webhook_redelivery")
            try:
                await self._store.save(run)
                break
            except RunConflict:
                run = await self._reader.get(run_id, caller=caller)
        else:
            raise Conflict("run_busy", f"Run {run_id!r} is changing; retry.", retry_after=1)
        assert run.webhook is not None  # a finished run keeps the webhook it had
        await self._queue.send(run.webhook.message(run.id).to_dict())
        return run
