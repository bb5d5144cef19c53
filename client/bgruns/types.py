"""Plain result objects: `Session`, `Response` (a run), `Update` (one stream event)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

TERMINAL_STATUSES = frozenset({"completed", "failed", "cancelled", "incomplete", "requires_action", "expired"})
FINAL_EVENT_TYPES = frozenset(f"run.{status}" for status in TERMINAL_STATUSES)


@dataclass
class Session:
    """A conversation: runs in one session see the previous runs' context, one run at a time."""

    id: str
    created_at: float | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Session":
        return cls(id=data["id"], created_at=data.get("created_at"), raw=data)

    @property
    def runs(self) -> list["Response"]:
        """The session's runs (only filled by `get_session`)."""
        return [Response(run) for run in self.raw.get("runs") or []]

    @property
    def active_run_id(self) -> str | None:
        return self.raw.get("active_run_id")


@dataclass
class Response:
    """A run as the service shows it. `continuation_token` is None once the run is terminal
    (completed, failed, cancelled, incomplete, requires_action, expired)."""

    raw: dict[str, Any]
    retry_after: float | None = None  # the server's Retry-After hint (seconds) with this reply, if any
    held_for: float | None = None  # a long poll: how long the service agreed to hold this read (Preference-Applied)

    @property
    def run_id(self) -> str:
        return self.raw["id"]

    @property
    def status(self) -> str:
        return self.raw.get("status", "")

    @property
    def continuation_token(self) -> str | None:
        return self.raw.get("continuation_token")

    @property
    def text(self) -> str:
        """The output text ("" while the run is not finished)."""
        return self.raw.get("output_text") or ""

    @property
    def session_id(self) -> str | None:
        return self.raw.get("session_id")

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def output(self) -> list[Any]:
        return self.raw.get("output") or []

    @property
    def error(self) -> dict[str, Any] | None:
        return self.raw.get("error")

    @property
    def usage(self) -> dict[str, Any] | None:
        return self.raw.get("usage")

    @property
    def metadata(self) -> dict[str, str]:
        return self.raw.get("metadata") or {}

    @property
    def required_action(self) -> dict[str, Any] | None:
        return self.raw.get("required_action")

    @property
    def webhook(self) -> dict[str, Any] | None:
        return self.raw.get("webhook")

    def __repr__(self) -> str:
        return f"Response(run_id={self.raw.get('id')!r}, status={self.status!r}, text={self.text[:40]!r})"


@dataclass
class Update:
    """One stream event. `text` is the delta text ("" for events that are not text deltas);
    `continuation_token` resumes the stream right after this update (it is on every update)."""

    type: str
    text: str
    continuation_token: str | None
    sequence_number: int | None
    status: str | None
    run_id: str | None
    raw: dict[str, Any] = field(repr=False)
    response: Response | None = None  # the final run, on the final update only

    @property
    def is_final(self) -> bool:
        return self.type in FINAL_EVENT_TYPES
