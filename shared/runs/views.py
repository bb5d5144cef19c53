"""A run as callers see it: the JSON of the native API, the stream's final events and the webhook payload."""

from __future__ import annotations

from typing import Any

from .. import clock
from ..telemetry.context import trace_id
from .model import Run
from .pacing import FAIR_TURN, PACED
from .tokens import TokenCodec

ESTIMATES = frozenset({PACED, FAIR_TURN})  # reasons whose next try is when the run should start


class RunViews:
    def __init__(
        self, tokens: TokenCodec, *, poll_initial_delay: float, poll_max_delay: float, ends_seen_at_once: bool = False
    ) -> None:
        """`ends_seen_at_once`: the completion strategy learns of an end as it happens (push, watch), rather than at
        the poll chain's next look (poll)."""
        self._tokens = tokens
        self._initial = poll_initial_delay
        self._max = poll_max_delay
        self._at_once = ends_seen_at_once

    def render(self, run: Run, *, timeline: bool = False) -> dict[str, Any]:
        """The run as the API shows it (a terminal run must have been read with its result); `timeline` adds
        the run's recorded steps."""
        result = run.result or {}
        view = {
            "id": run.id,
            "object": "run",
            "status": run.status,
            "continuation_token": None if run.is_terminal else self._tokens.encode(run.id),
            "session_id": run.session_id,
            "model": run.model,
            "created_at": run.created_at,
            "completed_at": run.completed_at,
            "output_text": result.get("output_text", "") if run.is_terminal else None,
            "output": result.get("output", []) if run.is_terminal else [],
            "error": result.get("error"),
            "incomplete_details": result.get("incomplete_details"),
            "usage": result.get("usage"),
            "metadata": run.metadata,
            "required_action": result.get("required_action"),
            "provider_response_id": run.response_id,
            "stream": run.stream,
            "backend": run.backend,
            "deployment": run.deployment,  # the executor's: the model server of its last attempt (None: none yet)
        }
        if run.admission is not None:
            view["admission"] = self._admission(run)
        if run.webhook_url:
            hook = run.webhook
            view["webhook"] = {
                "url": run.webhook_url,
                "state": hook.state if hook else "waiting",
                "id": hook.id if hook else None,
                "attempts": hook.attempts if hook else [],
                "next_attempt_at": hook.due_at if hook and hook.is_pending else None,
            }
        if timeline:
            view["timeline"] = run.timeline.view(run.webhook.attempts if run.webhook else (), trace_id(run.traceparent))
        return view

    @staticmethod
    def _admission(run: Run) -> dict[str, Any]:
        """Why a run queued for provider capacity waits, and since when; once granted, how long it waited."""
        admission = run.admission
        assert admission is not None
        waiting = admission.granted_at is None and run.is_active
        return {
            "state": "waiting_for_capacity" if waiting else "granted" if admission.granted_at else "ended",
            "queued_at": admission.queued_at,
            "attempts": admission.attempts,
            "reason": admission.reason,
            "next_try_at": admission.next_try_at if waiting else None,
            # paced: the slot the limiter holds for it; a fair turn: when its turn should come (an estimate)
            "estimated_start_at": admission.next_try_at if waiting and admission.reason in ESTIMATES else None,
            "granted_at": admission.granted_at,
        }

    def retry_after(self, run: Run) -> int:
        """Seconds a polling caller should wait before it can learn something new, never longer than needed.
        Where the service learns of a run's end as it happens (push: the provider's webhook; watch: the held
        stream; an executor run: its own call), 1, the shortest Retry-After there is: the run may end any moment
        (a caller that wants fewer requests long-polls with `Prefer: wait=N`). Under poll nothing but a cancel
        changes the run before the chain's next look at the provider: the time until then."""
        if self._at_once or run.backend == "executor":
            return 1
        if run.next_poll_at is None:
            return max(1, round(self._initial))
        return max(1, min(round(run.next_poll_at - clock.now() + 0.5), int(self._max)))

    def token(self, run_id: str, position: int = -1) -> str:
        return self._tokens.encode(run_id, position)
