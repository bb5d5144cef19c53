"""A run: what was asked, where it stands, what came of it.

Statuses: `queued` and `in_progress` are active; every other status is terminal and sticky (a run that has
ended never changes status again). `requires_action` is a completed provider response that asks for
function calls; `expired` is a run that passed its deadline.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ..responses_vocabulary import ACTIVE_STATUSES, TERMINAL_STATUSES
from ..settings import DEFAULT_DEPLOYMENT
from ..telemetry import Timeline
from .webhook_state import WebhookState

MAX_RESTART_BACKOFF = 16  # an overdue poll chain is restarted again after at most 16 x the sweeper's grace


@dataclass
class Admission:
    """A run the provider had no capacity for when it started, queued until it has (runs.admission)."""

    queued_at: float  # when it was accepted (its start): the wait bound counts from here
    attempts: int = 1  # creates the provider answered "not now" to, or in flight (the start's, unless it was paced)
    next_try_at: float | None = None  # when the next create is tried
    reason: str = ""  # the provider's last "not now", or "paced": the pacing gave it a later slot
    creating_since: float | None = None  # a create is in flight since then: if its step dies, its outcome is unknown
    granted_at: float | None = None  # the provider accepted it
    paced: bool = False  # the next try holds its slot of the provider pacing (runs.pacing): it does not ask again
    turn: float | None = None  # its place in the fair order across callers (runs.fairness), kept across tries
    slot_at: float | None = None  # when the slot it holds (`paced`) is due; it may look for an earlier one before

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Admission:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


@dataclass
class Run:
    id: str
    status: str
    created_at: float
    model: str
    request: dict[str, Any]  # the provider parameters the run was started with
    session_id: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    response_id: str | None = None
    stream: bool = False
    completed_at: float | None = None
    result: dict[str, Any] | None = None  # output, output_text, error, incomplete_details, usage, required_action
    poll_seq: int = 0
    poll_nonce: str = ""
    poll_count: int = 0
    watch_position: int = -1  # watch strategy: the last provider event the poll chain has seen
    next_poll_at: float | None = None
    chain_restarts: int = 0  # the sweeper's restarts of the poll chain since a step last acted (runs.sweeping)
    deadline_at: float = 0.0
    webhook_url: str | None = None
    webhook: WebhookState | None = None
    owner: str | None = None  # the facade caller that started it (None: the native API)
    previous_run_id: str | None = None  # the run it continues (the facade's previous_response_id)
    # The provider's Response as it last reported it, without its output (the create reply; the final response
    # is kept in the result): what a Responses-API rendering of the run is made from.
    response: dict[str, Any] | None = None
    quota_slot: bool = False  # it holds one of its caller's active-run slots (runs.quotas), given back when it ends
    admission: Admission | None = None  # set when it waited for provider capacity (runs.admission)
    backend: str = (
        "background"  # what ran it: the provider's background mode, or the executor (shared.executor.attempts)
    )
    # The deployment its response lives at (provider.pool), where every later call of it goes; before its create:
    # the one its chain pins it to, or the one whose pacing slot it holds; None: not placed yet.
    deployment: str | None = None
    etag: str | None = None
    # W3C trace context of the run's trace (decided at its start; every later step joins it), and its timeline.
    traceparent: str = ""
    tracestate: str = ""
    timeline: Timeline = field(default_factory=Timeline)
    # Set by the store: parts already written are not written again on every save (a 5 MB result is
    # uploaded once), and parts not loaded are not downloaded on reads that do not need them.
    result_stored: bool = False
    response_stored: bool = False

    @property
    def at(self) -> str:
        """The deployment to call about its response."""
        return self.deployment or DEFAULT_DEPLOYMENT

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def is_active(self) -> bool:
        return self.status in ACTIVE_STATUSES

    def poll_is_overdue(self, at: float, grace: float) -> bool:
        """No poll step has acted `grace` seconds after the chain's next one was due: its message was lost, or
        is late. Each restart the sweeper makes before a step acts doubles the grace (up to MAX_RESTART_BACKOFF
        times, as WebhookState.is_stuck does for deliveries): a chain whose messages are only slow (a busy host)
        is given time, instead of restarts that each make the message before them stale."""
        backoff: int = min(2**self.chain_restarts, MAX_RESTART_BACKOFF)
        return (self.next_poll_at or 0) < at - grace * backoff
