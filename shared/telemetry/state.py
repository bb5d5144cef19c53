"""Whether telemetry is on in this process, and the tracer and meter it uses (set by `setup`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class State:
    enabled: bool = False
    mode: str = "off"
    tracer: Any = None
    meter: Any = None
    tracer_provider: Any = None  # flushed at shutdown (bench, tests)
    meter_provider: Any = None


STATE = State()


def enabled() -> bool:
    return STATE.enabled
