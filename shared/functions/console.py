"""The console: a page in the browser to see, follow and steer runs (`/api/console`), and the JSON API it calls
(`/api/console/api/...`).

The page and its assets (shared/static/console/: plain ES modules and CSS, no build step) are anonymous: they hold
no data. The JSON API takes the caller's Responses API key as `Authorization: Bearer <key>` (the facade's check):
a caller sees and steers only its own runs (another caller's run answers 404, as an unknown id does), an
operator key every run and the operator view. The key stays in the page's sessionStorage; no cookie is ever
set, so there is nothing for another site to ride on. Every answer carries a strict Content-Security-Policy
(scripts and styles from this origin only, no inline ones, Trusted Types with no policy: the page cannot turn
a string into HTML, so model output is only ever text).

The operator view reads one endpoint, `GET /api/console/api/operations` (health, this process's metrics, runs in
flight per caller, capacity): a new operator panel adds its part to that JSON and one renderer in operator.js.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import azure.functions as func
from azurefunctions.extensions.http.fastapi import JSONResponse, Request, Response

from .. import telemetry
from ..api.callers import authenticated
from ..api.errors import handler
from ..api.operations import process_metrics
from ..api.queries import path_param, run_list_query
from ..api.streams import resume_position, streaming_response
from ..composition import Services, services
from ..errors import Forbidden, NotFound, invalid
from ..runs.callers import Caller
from ..runs.overview import provider_ended_at, webhook_lag
from ..settings import CALLER_NAME, NATIVE_CALLER
from ..storage import counting_as

bp = func.Blueprint()

STATIC = Path(__file__).resolve().parent.parent / "static" / "console"
# The only files served, by name (nothing else on disk is reachable through the asset route).
PAGE = "index.html"
ASSETS = {
    "console.css": "text/css",
    "app.js": "text/javascript",
    "api.js": "text/javascript",
    "dom.js": "text/javascript",
    "runs.js": "text/javascript",
    "run.js": "text/javascript",
    "live.js": "text/javascript",
    "timeline.js": "text/javascript",
    "operator.js": "text/javascript",
    "icon.svg": "image/svg+xml",
}  # the tab's icon: without it the browser asks for /favicon.ico (a 404)
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "require-trusted-types-for 'script'",
        "trusted-types 'none'",
    )
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
ANONYMOUS = func.AuthLevel.ANONYMOUS  # the page holds no data; the JSON API checks the caller's key itself

Handler = Callable[[Request], Awaitable[Response]]


def _secured(cache: str) -> Callable[[Handler], Handler]:
    """Every answer of the console, errors included, with the security headers and `Cache-Control: cache`."""

    def decorate(handle: Handler) -> Handler:
        @functools.wraps(handle)
        async def wrapper(req: Request) -> Response:
            response = await handle(req)
            for name, value in {**SECURITY_HEADERS, "Cache-Control": cache}.items():
                response.headers[name] = value
            if response.status_code == 401:
                response.headers["WWW-Authenticate"] = 'Bearer realm="console"'
            return response

        return wrapper

    return decorate


def _route(route: str, methods: list[str], *, cache: str = "no-store") -> Callable[[Handler], Any]:
    def decorate(handle: Handler) -> Any:
        return bp.route(route=route, methods=methods, auth_level=ANONYMOUS)(_secured(cache)(handler(handle)))

    return decorate


@functools.cache
def _static(name: str) -> bytes:
    return (STATIC / name).read_bytes()


# -- the page and its assets -------------------------------------------------------------------------------------
@_route("console", ["GET"], cache="no-cache")
async def console_page(req: Request) -> Response:
    if req.url.path.endswith("/"):  # the page's relative asset URLs are resolved against /api/console
        return Response(status_code=308, headers={"Location": req.url.path.rstrip("/")})
    return Response(_static(PAGE), media_type="text/html; charset=utf-8")


@_route("console/assets/{name}", ["GET"], cache="no-cache")
async def console_asset(req: Request) -> Response:
    name = req.path_params.get("name") or ""
    if name not in ASSETS:
        raise NotFound("not_found", f"The console has no asset {name!r}.")
    return Response(_static(name), media_type=f"{ASSETS[name]}; charset=utf-8")


# -- the JSON API ------------------------------------------------------------------------------------------------
async def _console(req: Request, name: str) -> tuple[Services, Caller]:
    counting_as(name)
    svc = await services()
    return svc, authenticated(svc.callers, req.headers, what="console")


@_route("console/api/me", ["GET"])
async def console_me(req: Request) -> Response:
    """Who the key belongs to; an operator also gets the names of every caller (for the caller filter)."""
    svc, caller = await _console(req, "console_me")
    body: dict[str, Any] = {"caller": caller.name, "operator": caller.operator}
    if caller.operator:
        body["callers"] = [{"name": c.name, "operator": c.operator} for c in svc.callers.callers]
    return JSONResponse(body)


@_route("console/api/runs", ["GET"])
async def console_list_runs(req: Request) -> Response:
    """The caller's runs (an operator's: every run, or one caller's), newest first, with each run's webhook."""
    svc, caller = await _console(req, "console_list_runs")
    owner = req.query_params.get("owner")  # sent empty: judged as sent (400), as every list filter
    if owner is not None and not CALLER_NAME.match(owner):
        raise invalid("'owner' is not a valid caller name (1-64 characters of [A-Za-z0-9_.-]).", param="owner")
    listed = await svc.overview.page(caller=caller, owner=owner, **run_list_query(req.query_params, default_limit=25))
    return JSONResponse(
        {"object": "list", "data": listed.runs, "has_more": listed.has_more, "next_cursor": listed.next_cursor}
    )


@_route("console/api/runs/{run_id}", ["GET"])
async def console_get_run(req: Request) -> Response:
    """The run as the native API shows it with its timeline, plus its owner and webhook lag."""
    svc, caller = await _console(req, "console_get_run")
    run = await svc.reader.get(path_param(req, "run_id"), caller=caller)
    return JSONResponse(
        {
            **svc.views.render(run, timeline=True),
            "owner": run.owner,
            "provider_ended_at": provider_ended_at(run),
            "webhook_lag_seconds": webhook_lag(run),
        }
    )


@_route("console/api/runs/{run_id}/stream", ["GET"])
@telemetry.http_entry("GET /api/console/api/runs/{run_id}/stream", logger="bgruns.relay")
async def console_stream_run(req: Request) -> Response:
    """The native API's SSE stream of the run; resume with Last-Event-ID (what the page sends) or starting_after."""
    svc, caller = await _console(req, "console_stream_run")
    run_id = path_param(req, "run_id")
    run = await svc.reader.get(run_id, caller=caller)
    telemetry.bind_run(run)
    after = resume_position(req, run_id, svc.reader.decode_token)
    return streaming_response(svc.relays.relay(run, after), f"/api/console/api/runs/{run.id}")


@_route("console/api/runs/{run_id}/cancel", ["POST"])
@telemetry.http_entry("POST /api/console/api/runs/{run_id}/cancel", logger="bgruns.cancelling")
async def console_cancel_run(req: Request) -> Response:
    svc, caller = await _console(req, "console_cancel_run")
    return JSONResponse(svc.views.render(await svc.canceller.cancel(path_param(req, "run_id"), caller=caller)))


@_route("console/api/runs/{run_id}", ["DELETE"])
@telemetry.http_entry("DELETE /api/console/api/runs/{run_id}", logger="bgruns.deleting")
async def console_delete_run(req: Request) -> Response:
    """Delete the run (a running one is cancelled first) and the provider's stored response."""
    svc, caller = await _console(req, "console_delete_run")
    run_id = await svc.deleter.delete(path_param(req, "run_id"), caller=caller)
    return JSONResponse({"id": run_id, "object": "run", "deleted": True})


@_route("console/api/runs/{run_id}/webhook/redeliver", ["POST"])
@telemetry.http_entry("POST /api/console/api/runs/{run_id}/webhook/redeliver", logger="bgruns.webhook_outbox")
async def console_redeliver_webhook(req: Request) -> Response:
    svc, caller = await _console(req, "console_redeliver_webhook")
    run = await svc.outbox.redeliver(path_param(req, "run_id"), caller=caller)
    telemetry.bind_run(run)
    return JSONResponse(svc.views.render(run), status_code=202)


@_route("console/api/operations", ["GET"])
async def console_operations(req: Request) -> Response:
    """The operator view: health (configuration and storage), this process's metrics, runs in flight per caller,
    and capacity (per caller: its quota and what it holds of it; the provider's deployment)."""
    svc, caller = await _console(req, "console_operations")
    if not caller.operator:
        raise Forbidden("operator_only", "The operator view needs an operator key.")
    checks, healthy = await svc.health.check()
    in_flight = await svc.overview.in_flight_by_caller()
    idle = {"active": 0, "queued": 0, "webhook_pending": 0}
    callers = {c.name: {"operator": c.operator, **in_flight["callers"].get(c.name, idle)} for c in svc.callers.callers}
    for name, counts in in_flight["callers"].items():  # the native API's runs, callers no longer configured
        callers.setdefault(name, {"operator": None, **counts})
    configured = [c.name for c in svc.callers.callers if c.name is not None]
    capacity = await svc.overview.capacity_by_caller([*configured, NATIVE_CALLER], in_flight)
    provider = checks["provider"]
    return JSONResponse(
        {
            "health": {"status": "healthy" if healthy else "degraded", "checks": checks},
            "metrics": process_metrics(),
            "in_flight": {
                "callers": callers,
                "open_runs_read": in_flight["open_runs_read"],
                "complete": in_flight["complete"],
            },
            "capacity": {
                "callers": capacity,
                "limiters": await svc.overview.limiters(),
                "deployments": [  # one until deployments are configurable
                    {"name": provider["default_model"], "provider": provider["kind"], "default": True}
                ],
            },
        }
    )
