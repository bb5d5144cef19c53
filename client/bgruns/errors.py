"""The exceptions the client raises. Everything derives from `BgrunsError`."""
from __future__ import annotations

import email.utils
import json
from datetime import datetime, timezone
from typing import Any, Mapping


class BgrunsError(Exception):
    """Base class of every error raised by this package."""


class APIError(BgrunsError):
    """The service answered with an error (`{"error": {"code", "message", "param"}}`)."""

    def __init__(self, status_code: int, message: str, *, code: str | None = None, param: str | None = None,
                 body: Any = None, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.code = code
        self.param = param
        self.body = body
        self.headers = dict(headers or {})

    @property
    def retry_after(self) -> float | None:
        return parse_retry_after(self.headers.get("retry-after"))

    def __str__(self) -> str:
        where = f" ({self.param})" if self.param else ""
        return f"{self.status_code} {self.code or 'error'}: {self.message}{where}"

    @classmethod
    def from_parts(cls, status_code: int, content: bytes, headers: Mapping[str, str]) -> "APIError":
        body: Any = None
        message, code, param = None, None, None
        try:
            body = json.loads(content) if content else None
        except ValueError:
            body = content.decode("utf-8", "replace") if content else None
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            error = body["error"]
            message, code, param = error.get("message"), error.get("code"), error.get("param")
        if not message:
            text = body if isinstance(body, str) and body.strip() else None
            message = (text[:300] if text else None) or f"HTTP {status_code}"
        return cls(status_code, str(message), code=code, param=param, body=body,
                   headers={k.lower(): v for k, v in headers.items()})


class APIConnectionError(BgrunsError):
    """The service could not be reached (after the configured retries)."""


class StreamInterrupted(APIConnectionError):
    """A stream broke more often than `max_stream_reconnects` allows.

    `continuation_token` is the token of the last update delivered: pass it as
    `options={"continuation_token": ...}` with `stream=True` to continue exactly where it stopped."""

    def __init__(self, message: str, *, continuation_token: str | None, run_id: str | None) -> None:
        super().__init__(message)
        self.continuation_token = continuation_token
        self.run_id = run_id


class WaitTimeout(BgrunsError, TimeoutError):
    """`wait()` gave up before the run finished; `response` is the last state seen."""

    def __init__(self, message: str, response: Any) -> None:
        super().__init__(message)
        self.response = response


class WebhookVerificationError(BgrunsError):
    """A webhook delivery is not authentic (bad or missing signature headers, stale timestamp, altered
    body) or is not valid JSON. The one exception `verify_webhook` raises for a bad delivery."""


def parse_retry_after(value: str | None) -> float | None:
    """`Retry-After` as seconds (delta-seconds or an HTTP-date); None when absent or unusable."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
        return max(0.0, seconds) if seconds == seconds else None  # NaN guard
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())
