"""A run's own timeline: the steps it went through, stored with the run, bounded in size.

Entries ride on the saves the run's life already makes (the poll chain's save, the final save), so recording
costs no storage request, and a few microseconds of CPU: the stored JSON is parsed only when a step adds an
entry or a caller asks for the timeline. Polls are the only entries that grow with a run's length: the most
recent MAX_RECENT_POLLS are kept with their details and the rest are counted. Other events (created, provider
accepted, cancel requests, repairs, finished, ...) are capped at MAX_EVENTS, the oldest dropped and counted.
Webhook attempts are not stored twice: the view merges them in from the run's webhook state.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

MAX_RECENT_POLLS = 20
MAX_EVENTS = 40
POLL = "poll"
_KEPT = ("created", "provider_accepted")  # never dropped: where a run's story starts


def _empty() -> dict[str, Any]:
    return {"events": [], "polls": [], "poll_total": 0, "events_dropped": 0, "provider_calls": 0}


class Timeline:
    __slots__ = ("_data", "_raw")

    def __init__(self, raw: str = "") -> None:
        self._raw = raw or ""
        self._data: dict[str, Any] | None = None  # parsed on first change or view

    def _loaded(self) -> dict[str, Any]:
        if self._data is None:
            try:
                data = json.loads(self._raw) if self._raw else _empty()
            except ValueError:  # never fail a run over its diary
                data = _empty()
            self._data = data if isinstance(data, dict) else _empty()
        return self._data

    @property
    def changed(self) -> bool:
        return self._data is not None

    def record(self, kind: str, at: float, **fields: Any) -> None:
        data = self._loaded()
        entry = {"at": round(at, 3), "type": kind, **{k: v for k, v in fields.items() if v is not None}}
        if kind == POLL:
            data["polls"] = (data["polls"] + [entry])[-MAX_RECENT_POLLS:]
            data["poll_total"] += 1
            return
        events = data["events"]
        events.append(entry)
        if len(events) > MAX_EVENTS:
            drop = next((i for i, e in enumerate(events) if e.get("type") not in _KEPT), 0)
            del events[drop]
            data["events_dropped"] += 1

    def latest(self, kind: str) -> dict[str, Any] | None:
        """The most recent kept entry of `kind` (not a poll), or None."""
        return next((e for e in reversed(self._loaded()["events"]) if e.get("type") == kind), None)

    def count_provider_call(self) -> None:
        self._loaded()["provider_calls"] += 1

    @property
    def provider_calls(self) -> int:
        return int(self._loaded().get("provider_calls", 0))

    def dumps(self) -> str:
        """The stored form (unchanged text when nothing was recorded since it was read)."""
        if self._data is None:
            return self._raw
        return json.dumps(self._data, separators=(",", ":"))

    def view(self, webhook_attempts: Iterable[Mapping[str, Any]] = (), trace_id: str = "") -> dict[str, Any]:
        """The timeline as the API shows it: every kept entry in time order, with the counts of the rest."""
        data = self._loaded()
        entries = [*data["events"], *data["polls"], *(_attempt(a) for a in webhook_attempts)]
        entries.sort(key=lambda e: e.get("at") or 0)
        polls_shown = len(data["polls"])
        return {
            "trace_id": trace_id or None,
            "entries": entries,
            "polls": {
                "total": data["poll_total"],
                "shown": polls_shown,
                "omitted": max(0, data["poll_total"] - polls_shown),
            },
            "events_omitted": data["events_dropped"],
            "provider_calls": data.get("provider_calls", 0),
        }


def _attempt(attempt: Mapping[str, Any]) -> dict[str, Any]:
    at = attempt.get("at")
    try:
        epoch = datetime.fromisoformat(str(at).replace("Z", "+00:00")).timestamp()
    except ValueError:
        epoch = 0.0
    entry = {
        "at": round(epoch, 3),
        "type": "webhook_attempt",
        "ok": attempt.get("ok"),
        "status_code": attempt.get("status_code"),
        "duration_ms": attempt.get("duration_ms"),
    }
    if attempt.get("error"):
        entry["error"] = attempt["error"]
    return entry
