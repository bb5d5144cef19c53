"""The service's metrics (OpenTelemetry instruments, created on first use; nothing when telemetry is off).
Provider calls one by one are the `provider *` spans (Application Insights: dependencies); per run, a histogram.

| instrument | kind | unit | attributes |
|---|---|---|---|
| `bgruns.runs.started` | counter | {run} | `bgruns.stream` |
| `bgruns.runs.finished` | counter | {run} | `bgruns.status`, `bgruns.via` (the step that ended it) |
| `bgruns.run.detection_lag` | histogram | s | `bgruns.via`: provider's `completed_at` -> the run saved terminal |
| `bgruns.webhook.delivery_lag` | histogram | s | run terminal -> its webhook delivered (first success) |
| `bgruns.run.provider_calls` | histogram | {call} | `bgruns.status`: provider calls a run took, recorded when it ends |
| `bgruns.poll.steps` | counter | {step} | `bgruns.outcome` (pending, completed, stale, retry, ...) |
| `bgruns.poll.pickup_delay` | histogram | s | how late a poll step ran after its due time |
| `bgruns.queue.message_age` | histogram | s | `messaging.destination.name`: insertion -> pickup (delay included) |
| `bgruns.webhook.attempts` | counter | {attempt} | `bgruns.outcome` (ok/failed/refused), `http.response.status_code` |
| `bgruns.webhook.failures` | counter | {delivery} | deliveries given up (retries exhausted, 410, refused) |
| `bgruns.capacity.queued` | counter | {try} | `bgruns.outcome`: `queued` (a start without room), `waiting` (a try) |
| `bgruns.capacity.wait` | histogram | s | `bgruns.outcome` (granted, or how it ended): accepted -> provider took it |
| `bgruns.storage.errors` | counter | {request} | `bgruns.storage.service`, `http.response.status_code` |

A storage error is a 429, a 5xx or a 4xx other than 404, 409 and 412.
"""

from __future__ import annotations

from typing import Any

from .state import STATE

_SPECS: dict[str, tuple[str, str, str]] = {
    "runs_started": ("counter", "bgruns.runs.started", "{run}"),
    "runs_finished": ("counter", "bgruns.runs.finished", "{run}"),
    "detection_lag": ("histogram", "bgruns.run.detection_lag", "s"),
    "delivery_lag": ("histogram", "bgruns.webhook.delivery_lag", "s"),
    "run_provider_calls": ("histogram", "bgruns.run.provider_calls", "{call}"),
    "poll_steps": ("counter", "bgruns.poll.steps", "{step}"),
    "pickup_delay": ("histogram", "bgruns.poll.pickup_delay", "s"),
    "message_age": ("histogram", "bgruns.queue.message_age", "s"),
    "webhook_attempts": ("counter", "bgruns.webhook.attempts", "{attempt}"),
    "webhook_failures": ("counter", "bgruns.webhook.failures", "{delivery}"),
    "storage_errors": ("counter", "bgruns.storage.errors", "{request}"),
    "capacity_queued": ("counter", "bgruns.capacity.queued", "{try}"),
    "capacity_wait": ("histogram", "bgruns.capacity.wait", "s"),
}
_INSTRUMENTS: dict[str, Any] = {}


def reset() -> None:
    _INSTRUMENTS.clear()


def _instrument(key: str) -> Any:
    instrument = _INSTRUMENTS.get(key)
    if instrument is None:
        kind, name, unit = _SPECS[key]
        meter = STATE.meter
        create = meter.create_counter if kind == "counter" else meter.create_histogram
        instrument = _INSTRUMENTS[key] = create(name, unit=unit)
    return instrument


def add(key: str, amount: float = 1, **attributes: Any) -> None:
    if not STATE.enabled or STATE.meter is None:
        return
    _instrument(key).add(amount, _attributes(attributes))


def record(key: str, value: float, **attributes: Any) -> None:
    if not STATE.enabled or STATE.meter is None or value is None:
        return
    _instrument(key).record(max(0.0, value), _attributes(attributes))


def _attributes(attributes: dict[str, Any]) -> dict[str, Any]:
    return {("bgruns." + k if "." not in k else k): v for k, v in attributes.items() if v is not None}
