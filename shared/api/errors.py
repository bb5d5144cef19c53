"""Failures as HTTP answers: each domain error has one status code, and the body is
`{"error": {"code", "message", "param"}}`. Outages are 503 with Retry-After; a 500 only for our own bugs."""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any

from azure.core.exceptions import AzureError, HttpResponseError
from fastapi import Request
from fastapi.responses import JSONResponse, Response

from ..errors import (
    Conflict,
    Forbidden,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    ServiceError,
    Unauthorized,
    Unavailable,
    UpstreamError,
)
from ..runs.store import RunConflict
from ..settings import SettingsError

log = logging.getLogger("bgruns.http")

_STATUS: tuple[tuple[type[ServiceError], int], ...] = (
    (PayloadTooLarge, 413),
    (InvalidRequest, 400),
    (Unauthorized, 401),
    (Forbidden, 403),
    (NotFound, 404),
    (Conflict, 409),
    (RateLimited, 429),
    (Unavailable, 503),
    (UpstreamError, 502),
)


def status_of(error: ServiceError) -> int:
    return next((status for kind, status in _STATUS if isinstance(error, kind)), 500)


def error_body(error: ServiceError) -> dict[str, Any]:
    return {"error": {"code": error.code, "message": error.message, "param": error.param}}


def error_headers(error: ServiceError) -> dict[str, str]:
    """Retry-After (whole seconds, at least 1) when the error says when to retry, and the error's own headers."""
    retry = {"Retry-After": str(max(1, math.ceil(error.retry_after)))} if error.retry_after is not None else {}
    return {**retry, **error.headers}


def error_response(error: ServiceError) -> JSONResponse:
    return JSONResponse(error_body(error), status_code=status_of(error), headers=error_headers(error))


def as_service_error(error: Exception, where: str = "a handler") -> ServiceError:
    """Any failure below the HTTP layer as a ServiceError (unknown ones are logged: they are bugs)."""
    if isinstance(error, ServiceError):
        return error
    if isinstance(error, RunConflict):
        return Conflict("run_busy", "The run is being changed concurrently; retry.", retry_after=1)
    if isinstance(error, SettingsError):
        log.error("configuration error: %s", error)
        return Unavailable("misconfigured", f"The service is misconfigured: {error}", retry_after=30)
    if (
        isinstance(error, HttpResponseError)
        and error.status_code
        and 400 <= error.status_code < 500
        and error.status_code not in (408, 429)
    ):
        log.error("storage refused a request: %s %s", error.status_code, getattr(error, "error_code", ""))
        return ServiceError("storage_refused", "Storage refused the request; this is a bug in the service.")
    if isinstance(error, AzureError):
        log.warning("storage unavailable: %s", type(error).__name__)
        return Unavailable("storage_unavailable", "Storage is unavailable; retry shortly.", retry_after=2)
    log.error("unhandled error in %s", where, exc_info=error)
    return ServiceError("internal_error", "An internal error occurred.")


Handler = Callable[[Request], Awaitable[Response]]


def answering_errors_with(render: Callable[[ServiceError], Response]) -> Callable[[Handler], Handler]:
    """A decorator that maps every failure of an HTTP handler to a ServiceError, answered by `render`."""

    def decorate(func: Handler) -> Handler:
        @functools.wraps(func)
        async def wrapper(req: Request) -> Response:
            try:
                return await func(req)
            except Exception as error:  # noqa: BLE001 - mapped; unknown ones are logged with the traceback
                return render(as_service_error(error, func.__name__))

        return wrapper

    return decorate


handler = answering_errors_with(error_response)  # the native API's JSON error answer
