"""HTTP handlers (FastAPI request/response types, as the Functions HTTP streaming extension needs).

Each handler turns a request into a service call and the outcome into JSON. Errors below become
`{"error": {"code", "message", "param"}}` with a 4xx; storage or provider outages become 503 with
Retry-After. Nothing here holds state.
"""
from __future__ import annotations

import functools
import logging
import re
import resource
from pathlib import Path
from typing import Any, Awaitable, Callable

from azure.core.exceptions import AzureError, ResourceNotFoundError
from fastapi import Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from .context import get_context
from .errors import ApiError
from .run_requests import parse_json_body, parse_run_request
from .runs import Run
from .settings import SettingsError
from .storage import STORAGE_REQUESTS
from .webhook_delivery import redeliver

log = logging.getLogger("runs.api")

ROUTE_PREFIX = "/api"
_PREFER_WAIT = re.compile(r"(?:^|[,;\s])wait=(\d+)")


def _error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


def handler(func: Callable[..., Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    """Map every failure to a JSON error; a 500 only for our own bugs (logged with the traceback)."""
    @functools.wraps(func)
    async def wrapper(req: Request) -> Response:
        try:
            return await func(req)
        except ApiError as error:
            return _error_response(error)
        except SettingsError as error:
            log.error("configuration error: %s", error)
            return _error_response(ApiError(503, "misconfigured", f"The service is misconfigured: {error}",
                                            headers={"Retry-After": "30"}))
        except AzureError as error:
            log.warning("storage unavailable: %s", type(error).__name__)
            return _error_response(ApiError(503, "storage_unavailable", "Storage is unavailable; retry shortly.",
                                            headers={"Retry-After": "2"}))
        except Exception:  # noqa: BLE001 - last resort, never leak details
            log.exception("unhandled error in %s", func.__name__)
            return _error_response(ApiError(500, "internal_error", "An internal error occurred."))
    return wrapper


def path_param(req: Request, name: str) -> str:
    # The Functions worker copies route parameters into path_params (RequestSynchronizer).
    value = req.path_params.get(name)
    if not value:
        raise ApiError(404, "not_found", f"Missing route parameter {name!r}.")
    return value


def _run_response(service, run: Run, *, final_status: int = 200) -> JSONResponse:
    view = service.view(run)
    if run.is_terminal:
        return JSONResponse(view, status_code=final_status)
    return JSONResponse(view, status_code=202, headers={
        "Location": f"{ROUTE_PREFIX}/runs/{run.id}", "Retry-After": str(service.retry_after(run))})


def _prefer_wait(req: Request, background: bool, max_wait: float) -> float:
    """`Prefer: wait=N` (RFC 7240) or `background: false` wait inline, bounded by MAX_PREFER_WAIT_SECONDS."""
    match = _PREFER_WAIT.search(req.headers.get("prefer", ""))
    if match:
        return min(float(match.group(1)), max_wait)
    return 0.0 if background else max_wait


@handler
async def create_run(req: Request) -> Response:
    ctx = await get_context()
    body = parse_json_body(await req.body(), ctx.settings.max_request_bytes)
    request = parse_run_request(body)
    if request.continuation_token is not None:
        if request.stream:  # resume the stream right after the token's position
            from .streaming import resume_stream_from_token
            return await resume_stream_from_token(ctx, request.continuation_token)
        run = await ctx.service.get_by_token(request.continuation_token)
        return _run_response(ctx.service, run)
    if request.stream:
        from .streaming import start_stream  # imported here: only streaming requests need it
        return await start_stream(ctx, request, idempotency_key=req.headers.get("idempotency-key"))
    outcome = await ctx.service.start(request, idempotency_key=req.headers.get("idempotency-key"),
                                      wait_seconds=_prefer_wait(req, request.background, ctx.settings.max_prefer_wait))
    return _run_response(ctx.service, outcome.run)


@handler
async def get_run(req: Request) -> Response:
    ctx = await get_context()
    run = await ctx.service.get(path_param(req, "run_id"))
    response = JSONResponse(ctx.service.view(run))
    if not run.is_terminal:
        response.headers["Retry-After"] = str(ctx.service.retry_after(run))
    return response


@handler
async def cancel_run(req: Request) -> Response:
    ctx = await get_context()
    run = await ctx.service.cancel(path_param(req, "run_id"))
    return JSONResponse(ctx.service.view(run))


@handler
async def redeliver_webhook(req: Request) -> Response:
    ctx = await get_context()
    run = await redeliver(ctx.service, path_param(req, "run_id"))
    return JSONResponse(ctx.service.view(run), status_code=202)


@handler
async def stream_run(req: Request) -> Response:
    from .streaming import resume_stream

    ctx = await get_context()
    return await resume_stream(ctx, path_param(req, "run_id"), req)


@handler
async def create_session(req: Request) -> Response:
    ctx = await get_context()
    raw = await req.body()
    if raw.strip():
        body = parse_json_body(raw, ctx.settings.max_request_bytes)
        if body:
            name = sorted(body)[0]
            raise ApiError(400, "unknown_field", f"Unknown field '{name}'.", param=name)
    session = await ctx.service.create_session()
    return JSONResponse(session, status_code=201, headers={"Location": f"{ROUTE_PREFIX}/sessions/{session['id']}"})


@handler
async def get_session(req: Request) -> Response:
    ctx = await get_context()
    return JSONResponse(await ctx.service.session_view(path_param(req, "session_id")))


async def health(req: Request) -> Response:
    """Configuration and storage checks; never shows a secret."""
    checks: dict[str, Any] = {}
    try:
        ctx = await get_context()
    except SettingsError as error:
        return JSONResponse({"status": "unhealthy", "checks": {"settings": str(error)}}, status_code=503)
    except Exception as error:  # noqa: BLE001
        return JSONResponse({"status": "unhealthy", "checks": {"startup": type(error).__name__}}, status_code=503)
    settings = ctx.settings
    checks["provider"] = {"kind": settings.provider.kind, "default_model": settings.provider.default_model,
                          "auth": "key" if settings.provider.api_key else "entra_id"}
    checks["webhooks"] = {"signing_secrets": len(settings.webhook_secrets)}
    try:
        await ctx.storage.runs.get_entity("health-check", "run")
        checks["storage"] = "ok"
    except ResourceNotFoundError:  # storage answered: that is all this checks
        checks["storage"] = "ok"
    except AzureError as error:
        checks["storage"] = type(error).__name__
    healthy = checks["storage"] == "ok"
    return JSONResponse({"status": "healthy" if healthy else "degraded", "checks": checks},
                        status_code=200 if healthy else 503)


async def metrics(req: Request) -> Response:
    """Process counters for benchmarks and operators (admin key in Azure): storage requests by
    service and method, CPU time and peak memory of this worker."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return JSONResponse({"storage_requests": dict(STORAGE_REQUESTS),
                         "storage_requests_total": sum(STORAGE_REQUESTS.values()),
                         "cpu_seconds": usage.ru_utime + usage.ru_stime,
                         "max_rss_kib": usage.ru_maxrss})


UI_PAGE = Path(__file__).parent / "static" / "stream.html"


async def ui(req: Request) -> Response:
    """A small page that streams a run with EventSource (resumes by itself with Last-Event-ID)."""
    return HTMLResponse(UI_PAGE.read_text(encoding="utf-8"))
