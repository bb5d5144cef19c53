"""The native HTTP API: /api/runs, /api/sessions, health (and its details), metrics and the streaming page."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import azure.functions as func
from azure.core.exceptions import AzureError
from azurefunctions.extensions.http.fastapi import HTMLResponse, JSONResponse, Request, Response

from .. import telemetry
from ..api.bodies import json_body, parse_json_body, read_body
from ..api.errors import handler
from ..api.operations import process_metrics
from ..api.prefer import prefer_wait, wait_applied
from ..api.queries import path_param, run_list_query
from ..api.run_requests import parse_run_body
from ..api.streams import resume_position, streaming_response
from ..composition import Services, services
from ..errors import invalid
from ..runs.model import Run
from ..settings import SettingsError
from ..storage import counting_as

bp = func.Blueprint()

ROUTE_PREFIX = "/api"
UI_PAGE = Path(__file__).resolve().parent.parent / "static" / "stream.html"


def _location(run_id: str) -> str:
    return f"{ROUTE_PREFIX}/runs/{run_id}"


def _run_response(svc: Services, run: Run, headers: dict[str, str] | None = None) -> JSONResponse:
    view = svc.views.render(run)
    if run.is_terminal:
        return JSONResponse(view, headers=headers)
    return JSONResponse(
        view,
        status_code=202,
        headers={**(headers or {}), "Location": _location(run.id), "Retry-After": str(svc.views.retry_after(run))},
    )


def _prefer_wait(req: Request, background: bool, max_wait: float) -> float:
    """`Prefer: wait=N` (RFC 7240) or `background: false` wait inline, bounded by MAX_PREFER_WAIT_SECONDS."""
    wait = prefer_wait(req.headers, max_wait)
    if wait is not None:
        return wait
    return 0.0 if background else max_wait


async def _held_read(svc: Services, req: Request, run: Run, *, existed: bool = False) -> tuple[Run, dict[str, str]]:
    """Long polling: a read with `Prefer: wait=N` (bounded by MAX_READ_WAIT_SECONDS) is held until the run's
    status changes or N seconds pass (runs.waiting); the run as it is then, and the header that says so."""
    wait = prefer_wait(req.headers, svc.limits.max_read_wait)
    if wait is None:
        return run, {}
    run = await svc.waiter.wait(run, wait, lambda: svc.reader.get(run.id, existed=existed))
    return run, wait_applied(wait)


INCLUDABLE = ("timeline",)


def _include(req: Request) -> set[str]:
    """`?include=timeline`: optional parts of the run, one name per `include` (an empty one is refused too)."""
    wanted = req.query_params.getlist("include")
    unknown = [value for value in wanted if value not in INCLUDABLE]
    if unknown:
        raise invalid(f"'include' can name {', '.join(INCLUDABLE)}; not {unknown[0]!r}.", param="include")
    return set(wanted)


async def _api(name: str) -> Services:
    counting_as(name)
    return await services()


@bp.route(route="runs", methods=["POST"])
@telemetry.http_entry("POST /api/runs", logger="bgruns.starting")
@handler
async def create_run(req: Request) -> Response:
    svc = await _api("create_run")
    body = parse_run_body(await json_body(req, svc.limits.max_request_bytes))
    if body.continuation_token is not None:
        run, claims = await svc.reader.get_by_token(body.continuation_token)
        if body.stream:  # resume the stream right after the token's position
            return streaming_response(svc.relays.relay(run, claims.position), _location(run.id))
        return _run_response(svc, *await _held_read(svc, req, run, existed=True))
    assert body.request is not None  # no token: the parser read a new run's request
    key = req.headers.get("idempotency-key")
    if body.stream:
        started = await svc.starter.start(body.request, idempotency_key=key)
        return streaming_response(svc.relays.relay(started.run, -1, started.events), _location(started.run.id))
    started = await svc.starter.start(
        body.request, idempotency_key=key, wait_seconds=_prefer_wait(req, body.background, svc.limits.max_prefer_wait)
    )
    return _run_response(svc, started.run)


@bp.route(route="runs", methods=["GET"])
@handler
async def list_runs(req: Request) -> Response:
    """The runs, newest first (function keys act as operators: every run), a page at a time."""
    svc = await _api("list_runs")
    listed = await svc.lister.page(**run_list_query(req.query_params, default_limit=20))
    return JSONResponse(
        {"object": "list", "data": listed.runs, "has_more": listed.has_more, "next_cursor": listed.next_cursor}
    )


@bp.route(route="runs/{run_id}", methods=["GET"])
@handler
async def get_run(req: Request) -> Response:
    svc = await _api("get_run")
    include = _include(req)
    run, applied = await _held_read(svc, req, await svc.reader.get(path_param(req, "run_id")))
    response = JSONResponse(svc.views.render(run, timeline="timeline" in include), headers=applied)
    if not run.is_terminal:
        response.headers["Retry-After"] = str(svc.views.retry_after(run))
    return response


@bp.route(route="runs/{run_id}/cancel", methods=["POST"])
@telemetry.http_entry("POST /api/runs/{run_id}/cancel", logger="bgruns.cancelling")
@handler
async def cancel_run(req: Request) -> Response:
    svc = await _api("cancel_run")
    return JSONResponse(svc.views.render(await svc.canceller.cancel(path_param(req, "run_id"))))


@bp.route(route="runs/{run_id}/stream", methods=["GET"])
@telemetry.http_entry("GET /api/runs/{run_id}/stream", logger="bgruns.relay")
@handler
async def stream_run(req: Request) -> Response:
    svc = await _api("stream_run")
    run_id = path_param(req, "run_id")
    run = await svc.reader.get(run_id)
    telemetry.bind_run(run)
    after = resume_position(req, run_id, svc.reader.decode_token)
    return streaming_response(svc.relays.relay(run, after), _location(run.id))


@bp.route(route="runs/{run_id}/webhook/redeliver", methods=["POST"])
@telemetry.http_entry("POST /api/runs/{run_id}/webhook/redeliver", logger="bgruns.webhook_outbox")
@handler
async def redeliver_webhook(req: Request) -> Response:
    svc = await _api("redeliver_webhook")
    run = await svc.outbox.redeliver(path_param(req, "run_id"))
    telemetry.bind_run(run)
    return JSONResponse(svc.views.render(run), status_code=202)


@bp.route(route="sessions", methods=["POST"])
@handler
async def create_session(req: Request) -> Response:
    svc = await _api("create_session")
    raw = await read_body(req, svc.limits.max_request_bytes)
    if raw.strip():
        body = parse_json_body(raw, svc.limits.max_request_bytes)
        if body:
            name = sorted(body)[0]
            raise invalid(f"Unknown field '{name}'.", param=name, code="unknown_field")
    session = await svc.starter.open_session()
    return JSONResponse(
        {"id": session.id, "object": "session", "created_at": session.created_at},
        status_code=201,
        headers={"Location": f"{ROUTE_PREFIX}/sessions/{session.id}"},
    )


@bp.route(route="sessions/{session_id}", methods=["GET"])
@handler
async def get_session(req: Request) -> Response:
    svc = await _api("get_session")
    session, runs = await svc.reader.session(path_param(req, "session_id"))
    return JSONResponse(
        {
            "id": session.id,
            "object": "session",
            "created_at": session.created_at,
            "last_response_id": session.last_response_id,
            "active_run_id": session.active_run_id,
            "runs": [svc.views.render(run) for run in runs],
        }
    )


@bp.route(route="health", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
async def health(req: Request) -> Response:
    """Liveness for anyone (load balancers, the local stack, azd's smoke test): the status alone. What is
    configured and what failed is for operators: GET /api/health/details with the admin (master) key."""
    counting_as("health")
    status, code, _ = await _health()
    return JSONResponse({"status": status}, status_code=code)


@bp.route(route="health/details", methods=["GET"], auth_level=func.AuthLevel.ADMIN)
async def health_details(req: Request) -> Response:
    """The checks behind /api/health (admin key): which setting is refused, storage, the provider, how runs run
    and end, webhooks and the facade's callers, counted. Never a secret."""
    counting_as("health_details")
    status, code, checks = await _health()
    if "storage" in checks:  # the service started: its capacity too (a query of the limiters, the open runs)
        checks["capacity"] = await _capacity()
    return JSONResponse({"status": status, "checks": checks}, status_code=code)


async def _capacity() -> dict[str, Any]:
    """The provider pacing's limiter per model and, per caller, its runs waiting for capacity."""
    svc = await services()
    try:
        in_flight = await svc.overview.in_flight_by_caller()
        limiters = await svc.overview.limiters()
    except AzureError as error:
        return {"error": type(error).__name__}
    waiting = {name: counts["waiting_for_capacity"] for name, counts in in_flight["callers"].items()}
    return {"limiters": limiters, "waiting_for_capacity_by_caller": waiting}


async def _health() -> tuple[str, int, dict[str, Any]]:
    try:
        svc = await services()
    except SettingsError as error:
        return "unhealthy", 503, {"settings": str(error)}
    except Exception as error:  # noqa: BLE001
        return "unhealthy", 503, {"startup": type(error).__name__}
    checks, healthy = await svc.health.check()
    return ("healthy", 200, checks) if healthy else ("degraded", 503, checks)


@bp.route(route="metrics", methods=["GET"], auth_level=func.AuthLevel.ADMIN)
async def metrics(req: Request) -> Response:
    """This process's counters (shared.api.operations.process_metrics)."""
    return JSONResponse(process_metrics())


@bp.route(route="ui", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
async def ui(req: Request) -> Response:
    """A small page that streams a run with EventSource (resumes by itself with Last-Event-ID)."""
    return HTMLResponse(UI_PAGE.read_text(encoding="utf-8"))
