"""Delivering a run's webhook from its own queue: one attempt per message, retries on a schedule.

The run holds the delivery state (`webhook`: state, id, attempts, seq). A message acts only if its
`seq` is the run's current one, so duplicates and stale retries do nothing. Each attempt is saved on
the run before the next one is queued; a crash in between is repaired by the sweeper. The
`webhook-id` stays the same across every attempt and redelivery of one event.
"""
from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from typing import Any

from .errors import ApiError
from .runs import Conflict, Run, now
from .service import RunService
from .webhooks import WebhookSender, build_payload, next_delay

log = logging.getLogger("runs.webhooks")

MAX_RECORDED_ATTEMPTS = 50
# Receivers get the whole run up to this size; beyond it the output is left out (GET the run for it).
MAX_PAYLOAD_BYTES = 1024 * 1024


def payload_for(service: RunService, run: Run) -> bytes:
    """The same bytes on every attempt: the event's timestamp is when the run ended."""
    view = service.view(run)
    view.pop("webhook", None)
    ended = datetime.fromtimestamp(run.completed_at or now(), tz=timezone.utc)
    body = build_payload(view, ended)
    if len(body) <= MAX_PAYLOAD_BYTES:
        return body
    view.update(output=[], output_text=None, output_omitted=True)
    return build_payload(view, ended)


async def deliver_step(service: RunService, sender: WebhookSender, data: dict[str, Any]) -> str:
    try:
        run_id, seq = str(data["run_id"]), int(data["seq"])
    except (KeyError, TypeError, ValueError):
        log.warning("dropping malformed webhook message %r", data)
        return "malformed"
    run = await service.store.get(run_id)
    if run is None or not run.webhook or run.webhook.get("state") != "pending" or run.webhook.get("seq") != seq:
        return "stale"
    attempt = await sender.send(run.webhook_url, run.webhook["id"], payload_for(service, run))
    hook = run.webhook
    hook["attempts"] = (hook["attempts"] + [attempt.to_dict()])[-MAX_RECORDED_ATTEMPTS:]
    hook["round_attempts"] = hook.get("round_attempts", 0) + 1
    delay = None
    if attempt.ok:
        hook["state"] = "delivered"
    elif attempt.gone or attempt.refused:
        hook["state"] = "failed"
    else:
        delay = next_delay(hook["round_attempts"], service.settings.webhook_schedule,
                           retry_after=attempt.retry_after_seconds)
        hook["state"] = "failed" if delay is None else "pending"
    if delay is not None:
        hook["seq"] = seq + 1
        run.webhook_due_at = now() + delay + service.settings.webhook_timeout + service.settings.sweep_grace
    try:
        await service.store.save(run)
    except Conflict:
        log.info("run %s changed during webhook delivery; leaving it to the newer state", run.id)
        return "conflict"
    if delay is not None:
        await service.lifecycle.enqueue_webhook(run, delay)
    log.info("run %s webhook attempt %d: %s", run.id, len(hook["attempts"]), json.dumps(attempt.to_dict()))
    return hook["state"]


async def redeliver(service: RunService, run_id: str) -> Run:
    """Send a finished run's webhook again (same webhook-id), with a fresh retry schedule."""
    run = await service.get(run_id)
    if not run.webhook_url:
        raise ApiError(400, "no_webhook", f"Run {run_id!r} has no webhook_url.")
    if not run.is_terminal or not run.webhook:
        raise ApiError(409, "run_not_finished", f"Run {run_id!r} has not finished; its webhook is sent when it does.")

    async def reopen(fresh: Run) -> bool:
        fresh.webhook.update(state="pending", seq=fresh.webhook.get("seq", 0) + 1, round_attempts=0)
        fresh.webhook_due_at = now() + service.settings.webhook_timeout + service.settings.sweep_grace
        return True

    run = await service.lifecycle.with_fresh_run(run_id, reopen)
    await service.lifecycle.enqueue_webhook(run)
    return run
