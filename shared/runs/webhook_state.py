"""A run's webhook: one typed state with its transitions and due times, and the queue message that moves it.

One event per finished run, with one `webhook-id` kept across every attempt and redelivery. `seq` names the
queue message allowed to act next: a duplicate or stale message (an older seq) does nothing. `due_at` is
when the next attempt should start; a pending delivery still not attempted `slack` seconds after that
(lost message, crashed host) is stuck, and the sweeper queues it again. Each time it must do so again before an
attempt was made, the slack doubles (up to MAX_REQUEUE_BACKOFF times): a queue that is only slow (a backlog after a
receiver outage) is given time instead of more messages, each of which would make the one before it stale and the
backlog longer, so that no message ever lived long enough to act.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ..telemetry import context as trace_context
from ..webhooks import Attempt, new_webhook_id, next_delay

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
MAX_RECORDED_ATTEMPTS = 50
MAX_REQUEUE_BACKOFF = 16  # a stuck delivery is queued again after at most 16 x the slack


@dataclass(frozen=True)
class WebhookMessage:
    """The webhook queue's message: deliver run `run_id`'s event if the run's delivery is still at `seq`. It
    carries the run's W3C trace context (optional), so the delivery joins the run's trace."""

    run_id: str
    seq: int
    traceparent: str = ""
    tracestate: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "seq": self.seq, **trace_context.fields(self.traceparent, self.tracestate)}

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> WebhookMessage:
        """Raises KeyError/TypeError/ValueError for a malformed message (a bad trace context is just dropped)."""
        return cls(str(data["run_id"]), int(data["seq"]), *trace_context.from_message(data))


@dataclass
class WebhookState:
    id: str
    state: str = PENDING
    seq: int = 0
    attempts: list[dict[str, Any]] = field(default_factory=list)
    round_attempts: int = 0  # attempts since this round (the first delivery or a redelivery) began
    due_at: float = 0.0
    requeues: int = 0  # the sweeper's requeues since the last attempt
    traceparent: str = ""  # the run's trace context, carried by every message of this delivery
    tracestate: str = ""

    @classmethod
    def begin(cls, at: float, traceparent: str = "", tracestate: str = "") -> WebhookState:
        """The run just ended: its event is due now."""
        return cls(id=new_webhook_id(), due_at=at, traceparent=traceparent, tracestate=tracestate)

    @property
    def is_pending(self) -> bool:
        return self.state == PENDING

    def message(self, run_id: str) -> WebhookMessage:
        return WebhookMessage(run_id, self.seq, self.traceparent, self.tracestate)

    def accepts(self, message: WebhookMessage) -> bool:
        return self.is_pending and message.seq == self.seq

    def record(self, attempt: Attempt, *, schedule: Sequence[float], at: float) -> float | None:
        """Record one attempt; the delay before the next one, or None when this round is over."""
        self.attempts = (self.attempts + [attempt.to_dict()])[-MAX_RECORDED_ATTEMPTS:]
        self.round_attempts += 1
        self.requeues = 0
        if attempt.ok:
            self.state = DELIVERED
            return None
        if attempt.gone or attempt.refused:  # the receiver asked us to stop, or the URL is no longer allowed
            self.state = FAILED
            return None
        delay = next_delay(self.round_attempts, schedule, retry_after=attempt.retry_after_seconds)
        if delay is None:
            self.state = FAILED
            return None
        self.seq += 1
        self.due_at = at + delay
        return delay

    def reopen(self, at: float) -> None:
        """A redelivery: the same event (same id) again, with a fresh retry schedule."""
        self.state, self.round_attempts, self.requeues = PENDING, 0, 0
        self.seq += 1
        self.due_at = at

    def requeue(self, at: float) -> None:
        """The sweeper found the delivery stuck: a new message takes over (older ones become stale)."""
        self.seq += 1
        self.due_at = at
        self.requeues += 1

    def is_stuck(self, at: float, slack: float) -> bool:
        backoff = min(2**self.requeues, MAX_REQUEUE_BACKOFF)
        return self.is_pending and at > self.due_at + slack * backoff

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WebhookState:
        return cls(
            id=str(data["id"]),
            state=str(data.get("state", PENDING)),
            seq=int(data.get("seq", 0)),
            attempts=list(data.get("attempts", [])),
            round_attempts=int(data.get("round_attempts", 0)),
            due_at=float(data.get("due_at", 0.0)),
            requeues=int(data.get("requeues", 0)),
            traceparent=str(data.get("traceparent") or ""),
            tracestate=str(data.get("tracestate") or ""),
        )
