"""Domain errors: what went wrong, in the service's terms. The HTTP layers (shared/http/) turn them into a
status code and an error body; nothing below them knows about HTTP.

Each error carries a stable `code` for programs, a `message` for people and, where one input is at fault, the
`param` that names it.
"""

from __future__ import annotations


class ServiceError(Exception):
    def __init__(self, code: str, message: str, *, param: str | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param
        self.retry_after = retry_after  # seconds the caller should wait before trying again, if known

    @property
    def headers(self) -> dict[str, str]:
        """HTTP headers the answer carries besides Retry-After."""
        return {}


class InvalidRequest(ServiceError):
    """The caller sent something we cannot accept (a bad field, token, key or URL)."""


class PayloadTooLarge(InvalidRequest):
    """The request body or one of its parts is larger than the service accepts."""


class Unauthorized(ServiceError):
    """No key, or a key that names no caller."""


class Forbidden(ServiceError):
    """A known caller asking for what only an operator may see."""


class NotFound(ServiceError):
    """No such run or session (or it was purged after the retention period)."""


class Conflict(ServiceError):
    """The request clashes with the current state (a busy session, a reused Idempotency-Key, a run not finished)."""


class RateLimited(ServiceError):
    """The caller is over its own quota (runs.quotas): OpenAI's 429 `rate_limit_exceeded`, with OpenAI's
    `x-ratelimit-*-requests` headers describing the limit that refused it."""

    def __init__(self, message: str, *, limit: int, remaining: int, reset_seconds: float, retry_after: float) -> None:
        super().__init__("rate_limit_exceeded", message, retry_after=retry_after)
        self.limit, self.remaining, self.reset_seconds = limit, remaining, reset_seconds

    @property
    def headers(self) -> dict[str, str]:
        return {
            "x-ratelimit-limit-requests": str(self.limit),
            "x-ratelimit-remaining-requests": str(self.remaining),
            "x-ratelimit-reset-requests": duration(self.reset_seconds),
            "retry-after-ms": str(max(1, round(1000 * (self.retry_after or 0)))),
        }


def duration(seconds: float) -> str:
    """A duration as OpenAI writes it in x-ratelimit-reset-*: `20ms`, `1.5s`, `6m0s`, `1h2m3s`."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{secs:.3f}".rstrip("0").rstrip(".") + "s"
    if minutes or hours:
        text = f"{int(minutes)}m{int(secs)}s"
    return f"{int(hours)}h{text}" if hours else text


class Unavailable(ServiceError):
    """A dependency (the provider, storage) cannot serve now; retrying later may succeed."""


class UpstreamError(ServiceError):
    """The provider refused in a way retrying will not fix (auth, quota, configuration)."""


def not_found(what: str, ident: str) -> NotFound:
    return NotFound("not_found", f"{what} {ident!r} was not found")


def invalid(message: str, *, param: str | None = None, code: str = "invalid_request") -> InvalidRequest:
    return InvalidRequest(code, message, param=param)
