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


class Unavailable(ServiceError):
    """A dependency (the provider, storage) cannot serve now; retrying later may succeed."""


class UpstreamError(ServiceError):
    """The provider refused in a way retrying will not fix (auth, quota, configuration)."""


def not_found(what: str, ident: str) -> NotFound:
    return NotFound("not_found", f"{what} {ident!r} was not found")


def invalid(message: str, *, param: str | None = None, code: str = "invalid_request") -> InvalidRequest:
    return InvalidRequest(code, message, param=param)
