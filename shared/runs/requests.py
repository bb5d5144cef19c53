"""What a caller asks to run, whichever API it came through (validated by that API's layer)."""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import asdict, dataclass, field
from typing import Any

RUN_ID_PREFIX = "run_"
_RUN_ID = re.compile(r"^run_([0-9a-f]{8})[0-9a-f]{16}$")
_FIRST_RUN_AT = 1_735_689_600.0  # 2025-01-01: an id that claims an earlier start was never ours


@dataclass
class RunRequest:
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    model: str | None = None
    session_id: str | None = None
    stream: bool = False
    tools: list[dict[str, Any]] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)
    max_output_tokens: int | None = None
    reasoning: dict[str, Any] | None = None
    webhook_url: str | None = None
    deadline_seconds: float | None = None  # at most RUN_DEADLINE_SECONDS
    # Provider parameters passed through verbatim (the facade's temperature, text, tool_choice, ...); the API
    # layer decides which names it lets through, and none may name a parameter the service sets itself.
    options: dict[str, Any] = field(default_factory=dict)
    previous_run_id: str | None = None  # continue from this run's provider response (the facade's chaining)

    def fingerprint(self) -> str:
        """Canonical JSON of the request, for Idempotency-Key comparisons."""
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))


def new_run_id(created_at: float) -> str:
    """`run_` + the creation second (8 hex) + 64 random bits: an id also tells when its run began."""
    return f"{RUN_ID_PREFIX}{int(created_at) & 0xFFFFFFFF:08x}{secrets.token_hex(8)}"


def run_id_created_at(run_id: str) -> float | None:
    """When the run with this id began (whole seconds), or None for an id this service never made."""
    match = _RUN_ID.match(run_id)
    created = float(int(match.group(1), 16)) if match else 0.0
    return created if created >= _FIRST_RUN_AT else None


def valid_id(prefix: str, value: str) -> bool:
    """Our ids are a prefix and hex; anything else cannot exist (and never reaches storage keys)."""
    return value.startswith(prefix) and len(value) <= 64 and value.replace("_", "").isalnum()
