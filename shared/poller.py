"""The poll step (queue trigger) and the sweeper (timer trigger).

Poll step: load the run; act only on the message that carries the run's current chain position;
ask the provider; if still running, schedule the next poll with backoff; if ended, finish the run.
Provider 429/5xx/timeouts and storage hiccups are retried with backoff without losing the chain;
configuration or auth errors fail the run with a clear message. Past its deadline a run is cancelled
at the provider and ends `expired`.

Sweeper: finds runs whose next poll is overdue (a lost message, a crash between save and enqueue, an
interrupted start) and terminal runs whose webhook was never queued, and repairs them.
"""
from __future__ import annotations

import logging
from typing import Any

from .lifecycle import PollMessage, failure_result, next_poll_delay, result_from_response
from .provider import classify
from .runs import Conflict, Run, now
from .service import RunService

log = logging.getLogger("runs.poller")

# A message one step ahead of the run was sent by a writer that has not saved yet; give it a moment.
EARLY_MESSAGE_RETRIES = 3


class EarlyMessage(Exception):
    """Raised so the host redelivers the message after its visibility timeout."""


async def poll_step(service: RunService, data: dict[str, Any], dequeue_count: int = 1) -> str:
    """Handle one poll message; returns what happened (for logs and tests)."""
    try:
        message = PollMessage.parse(data)
    except (KeyError, TypeError, ValueError):
        log.warning("dropping malformed poll message %r", data)
        return "malformed"
    run = await service.store.get(message.run_id)
    if run is None:
        return "unknown-run"
    if run.is_terminal:
        return "already-terminal"
    if message.seq == run.poll_seq + 1 and dequeue_count < EARLY_MESSAGE_RETRIES:
        raise EarlyMessage(f"poll {message.seq} for {run.id} arrived before its run was saved")
    if (message.seq, message.nonce) != (run.poll_seq, run.poll_nonce):
        return "stale"
    if now() >= run.deadline_at:
        await _expire(service, run)
        return "expired"
    try:
        response = await service.provider.responses.retrieve(run.response_id)
    except Exception as error:  # noqa: BLE001 - classified below
        failure = classify(error)
        if not failure.transient:
            await service.lifecycle.finish(run, "failed", failure_result(
                "provider_error", f"The provider refused to report on the run ({failure.status}): {failure.message}"))
            return "failed"
        delay = next_poll_delay(service.settings, run.poll_count, retry_after=failure.retry_after)
        log.info("run %s: provider hiccup (%s); next poll in %.1fs", run.id, failure.message, delay)
        await service.lifecycle.schedule_poll(run, delay)
        return "retry"
    if response.status in ("queued", "in_progress"):
        await service.lifecycle.schedule_poll(run, next_poll_delay(service.settings, run.poll_count),
                                              status=response.status)
        return "pending"
    status, result = result_from_response(response)
    await service.lifecycle.finish(run, status, result)
    return status


async def _expire(service: RunService, run: Run) -> None:
    if run.response_id:
        try:
            await service.provider.responses.cancel(run.response_id)
        except Exception as error:  # noqa: BLE001 - best effort; the run ends expired either way
            log.warning("run %s: cancel at deadline failed: %s", run.id, error)
    await service.lifecycle.finish(run, "expired", failure_result(
        "deadline_exceeded", f"The run did not finish within {service.settings.run_deadline:.0f} s."))


async def sweep(service: RunService) -> dict[str, int]:
    """Repair what at-least-once delivery and crashes can leave behind. Idempotent."""
    cutoff = now() - service.settings.sweep_grace
    repaired = {"polls": 0, "starts": 0, "webhooks": 0}
    overdue = await service.store.find(
        "(status eq 'queued' or status eq 'in_progress') and next_poll_at lt @cutoff", {"cutoff": cutoff})
    for run_id in overdue:
        run = await service.store.get(run_id)
        if run is None or run.is_terminal or (run.next_poll_at or 0) >= cutoff:
            continue
        if not run.response_id:
            if now() - run.created_at >= service.start_grace:
                await service.lifecycle.finish(run, "failed", failure_result(
                    "start_interrupted", "The run's start was interrupted before the provider accepted it."))
                repaired["starts"] += 1
            continue
        log.warning("run %s: poll overdue by %.0fs; restarting its poll chain", run.id, now() - run.next_poll_at)
        if await service.lifecycle.schedule_poll(run, 0):
            repaired["polls"] += 1
    stuck_hooks = await service.store.find("webhook_state eq 'pending' and webhook_due_at lt @cutoff",
                                           {"cutoff": cutoff})
    for run_id in stuck_hooks:
        run = await service.store.get(run_id)
        if run is None or not run.webhook or run.webhook.get("state") != "pending":
            continue
        if (run.webhook_due_at or 0) >= cutoff:
            continue
        run.webhook["seq"] += 1
        run.webhook_due_at = now() + service.settings.webhook_timeout * 2
        try:
            await service.store.save(run)
        except Conflict:  # the delivery moved on meanwhile: someone else is on it
            continue
        await service.lifecycle.enqueue_webhook(run)
        repaired["webhooks"] += 1
    if any(repaired.values()):
        log.warning("sweeper repaired %s", repaired)
    return repaired
