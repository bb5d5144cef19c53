"""Ending a run: the one way, whoever saw the end.

Every path that ends a run (a poll step, a provider event, the relay at a stream's end, a cancel, a start answered
at once or within `Prefer: wait`, the executor, the sweeper) hands what it observed to `RunEnding.end`:
- `ProviderEnded(response)`: a response that ended where it runs: a poll's or a provider event's retrieve, the
  terminal event of a watched or relayed stream, the provider's answer to a cancel that came too late, a create
  answered at once, the executor's terminal event (its own failures included);
- `Cancelled()`: the caller's cancel took (or the executor's log was closed without an end);
- `DeadlinePassed(why)`: still going at its deadline, so it was cancelled at the provider (`why` says what went
  wrong there, if anything);
- `Failed(code, message)`: we end it ourselves: the provider refuses to report on it, its start was interrupted.

`verdict` maps each to the run's status and result, here and nowhere else, with the deadline rule: a response
cancelled past the run's deadline was cancelled for that deadline (the step that cancelled it may have died before
saving, or a provider event or a stream raced it), so the run expired. `end` then ends the run once
(RunLifecycle.finish: a sticky terminal save, then the follow-ups) and makes the webhook's first attempt right away,
within INLINE_WEBHOOK_BUDGET_SECONDS; the queued message waits as the safety net. A path that answers a caller over
HTTP (a start, a cancel, a stream) passes `deliver_now=False`: its answer never waits on the caller's webhook
receiver, and the queued message delivers at once instead; so does the sweeper, which ends many runs in one pass.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .. import clock
from ..responses_vocabulary import ErrorCode, RunStatus
from .lifecycle import RunLifecycle
from .model import Run
from .results import cancelled_result, failure_result, result_from_response
from .webhook_outbox import WebhookOutbox

# The webhook's first attempt, made by the step that ended the run, must not hold that step (or the provider's
# webhook call) for long; the queued safety-net message takes over after this.
INLINE_WEBHOOK_BUDGET_SECONDS = 5.0


@dataclass(frozen=True)
class ProviderEnded:
    """The response ended where it runs: `response` is its final Response (an SDK model or plain JSON)."""

    response: Any


@dataclass(frozen=True)
class Cancelled:
    """The caller's cancel took."""


@dataclass(frozen=True)
class DeadlinePassed:
    """The run was still going at its deadline; `why` adds what went wrong cancelling it at the provider."""

    why: str = ""


@dataclass(frozen=True)
class Failed:
    """We end the run ourselves, failed, with one of our codes."""

    code: ErrorCode
    message: str


Observed = ProviderEnded | Cancelled | DeadlinePassed | Failed


def verdict(run: Run, observed: Observed) -> tuple[RunStatus, dict[str, Any]]:
    """The run's status and result for what was observed."""
    if isinstance(observed, ProviderEnded):
        if _status_of(observed.response) == RunStatus.CANCELLED and clock.now() >= run.deadline_at:
            return RunStatus.EXPIRED, expired_result(run)
        status, result = result_from_response(observed.response)
        return RunStatus(status), result
    if isinstance(observed, Cancelled):
        return RunStatus.CANCELLED, cancelled_result()
    if isinstance(observed, DeadlinePassed):
        return RunStatus.EXPIRED, expired_result(run, observed.why)
    return RunStatus.FAILED, failure_result(observed.code.value, observed.message)


def expired_result(run: Run, why: str = "") -> dict[str, Any]:
    allowed = run.deadline_at - run.created_at
    return failure_result(
        ErrorCode.DEADLINE_EXCEEDED.value, f"The run did not finish within its deadline of {allowed:.0f} s.{why}"
    )


def _status_of(response: Any) -> Any:
    return response.get("status") if isinstance(response, Mapping) else getattr(response, "status", None)


class RunEnding:
    def __init__(self, lifecycle: RunLifecycle, outbox: WebhookOutbox) -> None:
        self._lifecycle = lifecycle
        self._outbox = outbox

    async def end(self, run: Run, observed: Observed, *, deliver_now: bool = True) -> Run:
        """End the run for what was observed; returns the run as it ended (ours, or another writer's if that one
        ended it first: terminal states are sticky). `deliver_now`: make the webhook's first attempt here."""
        status, result = verdict(run, observed)
        ended = await self._lifecycle.finish(run, status.value, result, inline_webhook=deliver_now)
        if deliver_now:
            await self._outbox.deliver_now(ended, budget=INLINE_WEBHOOK_BUDGET_SECONDS)
        return ended
