"""What a provider failure means for us: worth retrying later, or a refusal that retrying will not change. Its
message is the provider's text with anything key-like redacted (shared/redaction.py)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx
import httpx2  # the openai client's own HTTP library (a fork of httpx): its transport errors are these
import openai

from ..redaction import redact
from ..responses_vocabulary import STATUS_OF_ERROR_NAME
from ..retry_after import retry_after_from_headers

NEVER_SENT = "connection_failed"  # the code of a failure to connect: the request was never sent
_CONNECT_FAILED = (httpx.ConnectError, httpx2.ConnectError)


class ProviderError(Exception):
    def __init__(
        self,
        *,
        transient: bool,
        status: int | None,
        message: str,
        retry_after: float | None = None,
        code: str | None = None,
        rate_limits: Mapping[str, str] | None = None,
    ) -> None:
        message = redact(message)  # it reaches callers, stored runs and logs
        super().__init__(message)
        self.transient = transient  # 429, 5xx, timeouts, connection errors
        self.status = status
        self.message = message
        self.retry_after = retry_after
        self.code = code
        self.rate_limits = dict(rate_limits or {})  # the answer's x-ratelimit-* headers (runs.pacing)


class RequestRefused(ProviderError):
    """A request the model API the service calls cannot take, refused before any call: a 400 with OpenAI's
    `code` (unsupported_parameter, unsupported_value, invalid_value) naming the `param` at fault."""

    code: str  # always set, unlike a provider's own errors

    def __init__(self, message: str, *, param: str, code: str = "unsupported_parameter") -> None:
        super().__init__(transient=False, status=400, message=message, code=code)
        self.code = code
        self.param = param


def classify(error: Exception) -> ProviderError:
    """The ProviderError for an `openai` SDK exception; any other exception is re-raised (it is a bug)."""
    if isinstance(error, ProviderError):
        return error
    if isinstance(error, openai.APIConnectionError) and isinstance(error.__cause__, _CONNECT_FAILED):
        return ProviderError(
            transient=True, status=None, message="provider unreachable: connection failed", code=NEVER_SENT
        )
    if isinstance(error, (openai.APITimeoutError, openai.APIConnectionError)):
        return ProviderError(transient=True, status=None, message=f"provider unreachable: {type(error).__name__}")
    if isinstance(error, openai.APIStatusError):
        status = error.status_code
        code = getattr(error, "code", None)
        message = _message(error)
        return ProviderError(
            transient=_worth_retrying(status, code, message),
            status=status,
            message=message,
            retry_after=retry_after_from_headers(error.response.headers),
            code=code,
            rate_limits=rate_limit_headers(error.response.headers),
        )
    if isinstance(error, openai.OpenAIError):  # e.g. a reply the SDK could not parse
        return ProviderError(transient=True, status=None, message=f"unexpected provider reply: {type(error).__name__}")
    raise error


def proves_nothing_created(error: ProviderError) -> bool:
    """The provider's answer says it did not create the response and may later: a rate limit (429; insufficient
    quota and too-large requests are not transient) or overload (503)."""
    return error.transient and error.status in (429, 503)


def may_go_elsewhere(error: ProviderError) -> bool:
    """A create refused in a way that proves nothing was created, so another deployment may take it (provider.pool):
    a 429/503, or a connection that could not be made (the request never left). A connection failure is not
    queued as a 429 is (runs.admission): with one deployment, such a start is refused as before."""
    return proves_nothing_created(error) or error.code == NEVER_SENT


def rate_limit_headers(headers: Mapping[str, str] | None) -> dict[str, str]:
    """The `x-ratelimit-*` headers of a provider answer, by lower-case name (none: empty)."""
    if headers is None:
        return {}
    return {name.lower(): value for name, value in headers.items() if name.lower().startswith("x-ratelimit-")}


def reported_in_stream(error: Any, message: str | None = None) -> ProviderError:
    """A failure the model reports inside its stream (Chat Completions' `{"error": {...}}` chunk, a Responses `error`
    event, a failed response's `error`), judged as the same failure answered with that HTTP status would be: one on
    the server's side (5xx, 429, a timeout) is transient; any other, or one that names no status, is not. The status
    is the code or type it names: a number (LiteLLM sends the upstream's status as the code) or OpenAI's name for it
    (`server_error`, `rate_limit_exceeded`, ...)."""
    fields: Mapping[str, Any] = error if isinstance(error, Mapping) else {}
    code = fields.get("code")
    status = next((s for s in map(_status_named, (code, fields.get("type"), fields.get("status"))) if s), None)
    text = message or str(fields.get("message") or "the model reported a failure")
    return ProviderError(
        transient=status is not None and _worth_retrying(status, code, text),
        status=status,
        message=f"the model reported a failure in its stream: {text}",
        code=str(code) if code is not None else None,
    )


def _status_named(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and 100 <= value <= 599:
        return value
    if isinstance(value, str):
        if value.isdigit() and len(value) == 3:
            return int(value)
        return STATUS_OF_ERROR_NAME.get(value.lower())
    return None


def _worth_retrying(status: int, code: Any, message: str = "") -> bool:
    """A 429 is worth retrying unless no waiting fixes it: `insufficient_quota` (billing), or a request larger than
    the whole per-minute budget ("Request too large for gpt-4o ... on tokens per min (TPM): Limit 30000,
    Requested 45000"), which OpenAI sends as a 429 `rate_limit_exceeded` too."""
    if status == 429:
        return code != "insufficient_quota" and not message.lstrip().lower().startswith("request too large")
    return status in (408, 409) or status >= 500


def _message(error: openai.APIStatusError) -> str:
    body = error.body if isinstance(error.body, dict) else {}
    return str(body.get("message") or error.message)
