"""The Responses-API-compatible facade: OpenAI's `/responses` routes over the service's runs, so the official
SDKs and Agent Framework work unchanged but for `base_url` and `api_key`.

Routes (each under `/api/v1/` for `OpenAI(base_url=".../api/v1")`, and under `/api/openai/v1/` and `/api/openai/`
for the Azure clients; `api-version` is accepted and ignored): `POST responses`, `GET|DELETE responses/{id}`
(`?stream=true[&starting_after=N]`), `POST responses/{id}/cancel`, `GET responses/{id}/input_items`.

The routes are ANONYMOUS at the Functions level (the SDKs cannot send a function key without more changes than
`base_url`) and check the key themselves: `Authorization: Bearer <key>` (OpenAI) or `api-key: <key>` (Azure),
against RESPONSES_API_KEYS. A response id is a run id: the same run reads through both APIs.

- `background: true`: the run starts and the Response (queued or in_progress) answers at once; GET serves it
  from storage (no provider call) and, once the run ended, the provider's final Response.
- `stream: true`: the provider's event stream through the relay (ResponsesEventFormat), resumable.
- neither: the run starts in the background and the request waits for it, following the provider's stream, at
  most RESPONSES_MAX_WAIT_SECONDS (below Azure's 230 s HTTP limit); a run still going then is answered as the
  in-progress Response, which the caller GETs until it ends.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import azure.functions as func
from azurefunctions.extensions.http.fastapi import JSONResponse, Request, Response

from ..api.bodies import json_body
from ..api.callers import authenticated
from ..api.errors import Handler
from ..api.prefer import prefer_wait, wait_applied
from ..api.queries import limit_param, path_param
from ..api.responses_errors import openai_handler, response_not_found
from ..api.responses_format import ResponseRenderer, ResponsesEventFormat
from ..api.responses_items import input_items, page
from ..api.responses_requests import parse_create_body
from ..api.streams import sequence_number, streaming_response
from ..composition import Services, services
from ..errors import NotFound
from ..runs.callers import Caller
from ..runs.model import Run
from ..runs.starting import StartedRun
from ..storage import counting_as

bp = func.Blueprint()
log = logging.getLogger("bgruns.responses_api")

# Route prefix -> function name prefix. `openai/v1` is Azure OpenAI's v1 layout (`OpenAI(base_url=
# ".../api/openai/v1")`); `openai` is where `AzureOpenAI(azure_endpoint=".../api", api_version=...)` sends
# `/responses` (its base URL is `{azure_endpoint}/openai`).
PREFIXES = {"v1": "responses", "openai/v1": "azure_v1_responses", "openai": "azure_responses"}
renderer = ResponseRenderer()
event_format = ResponsesEventFormat(renderer)


# -- the handlers (one set, routed under each prefix below) ------------------------------------------------------
async def create(req: Request) -> Response:
    svc, caller = await _facade(req, "create_response")
    body = parse_create_body(await json_body(req, svc.limits.max_request_bytes))
    key = req.headers.get("idempotency-key")
    if body.stream:
        started = await svc.starter.start(body.request, caller=caller, idempotency_key=key)
        return streaming_response(
            svc.relays.relay(started.run, -1, started.events, event_format), _location(req, started.run.id)
        )
    if body.background:
        started = await svc.starter.start(body.request, caller=caller, idempotency_key=key)
        return JSONResponse(renderer.render(started.run))
    body.request.stream = True  # followed here through the provider's stream: no polling for the wait
    started = await svc.starter.start(body.request, caller=caller, idempotency_key=key)
    return JSONResponse(renderer.render(await _follow(svc, started, caller)))


async def retrieve(req: Request) -> Response:
    svc, caller = await _facade(req, "get_response")
    run = await _visible_run(svc, req, caller)
    if req.query_params.get("stream", "").lower() not in ("true", "1"):
        # Long polling for clients that send `Prefer: wait=N` (OpenAI's SDK sends none: nothing changes for it)
        wait = prefer_wait(req.headers, svc.limits.max_read_wait)
        if wait is None:
            return JSONResponse(renderer.render(run))
        run = await svc.waiter.wait(run, wait, lambda: _visible_run(svc, req, caller))
        return JSONResponse(renderer.render(run), headers=wait_applied(wait))
    raw = req.query_params.get("starting_after")
    after = sequence_number("starting_after", raw) if raw else -1  # none: replay from the start
    return streaming_response(svc.relays.relay(run, after, None, event_format), _location(req, run.id))


async def delete(req: Request) -> Response:
    svc, caller = await _facade(req, "delete_response")
    run_id = path_param(req, "response_id")
    try:
        await svc.deleter.delete(run_id, caller=caller)
    except NotFound as error:
        raise response_not_found(run_id, error) from None
    return JSONResponse({"id": run_id, "object": "response", "deleted": True})


async def cancel(req: Request) -> Response:
    svc, caller = await _facade(req, "cancel_response")
    run_id = path_param(req, "response_id")
    try:
        run = await svc.canceller.cancel(run_id, caller=caller)
    except NotFound as error:
        raise response_not_found(run_id, error) from None
    return JSONResponse(renderer.render(run))


async def list_input_items(req: Request) -> Response:
    svc, caller = await _facade(req, "list_input_items")
    run = await _visible_run(svc, req, caller, with_request=True)
    query = req.query_params
    return JSONResponse(
        page(
            input_items(run), after=query.get("after"), limit=limit_param(query, 20), order=query.get("order") or "desc"
        )
    )


# -- helpers -----------------------------------------------------------------------------------------------------
async def _facade(req: Request, name: str) -> tuple[Services, Caller]:
    counting_as(name)
    svc = await services()
    return svc, authenticated(svc.callers, req.headers, what="Responses API")


async def _visible_run(svc: Services, req: Request, caller: Caller, *, with_request: bool = False) -> Run:
    run_id = path_param(req, "response_id")
    try:
        return await svc.reader.get(run_id, caller=caller, with_request=with_request)
    except NotFound as error:
        raise response_not_found(run_id, error) from None


def _location(req: Request, run_id: str) -> str:
    return f"{req.url.path.split('/responses', 1)[0]}/responses/{run_id}"


async def _follow(svc: Services, started: StartedRun, caller: Caller) -> Run:
    """Wait for a foreground run: follow its provider stream (the relay ends the run at the provider's final
    event), for at most RESPONSES_MAX_WAIT_SECONDS; then the run as stored, ended or not."""
    run = started.run
    if run.is_active or started.events is not None:
        events = svc.relays.relay(run, -1, started.events, event_format).events()
        follower = asyncio.create_task(_drain(events))
        try:
            await asyncio.wait({follower}, timeout=svc.limits.facade_max_wait)
        finally:
            follower.cancel()
            await asyncio.gather(follower, return_exceptions=True)
            await events.aclose()
        if not follower.cancelled() and follower.exception() is not None:
            # The run goes on (its poll chain ends it): answer what is stored.
            log.warning(
                "run %s: following its stream failed (%s); answering the stored run",
                run.id,
                type(follower.exception()).__name__,
            )
    return await svc.reader.get(run.id, caller=caller)


async def _drain(events: AsyncIterator[bytes]) -> None:
    async for _ in events:
        pass


# -- routes ------------------------------------------------------------------------------------------------------
ANONYMOUS = func.AuthLevel.ANONYMOUS  # the handlers check the caller's key themselves
ROUTES = (
    (create, "responses", ["POST"], "create"),
    (retrieve, "responses/{response_id}", ["GET"], "get"),
    (delete, "responses/{response_id}", ["DELETE"], "delete"),
    (cancel, "responses/{response_id}/cancel", ["POST"], "cancel"),
    (list_input_items, "responses/{response_id}/input_items", ["GET"], "input_items"),
)


def _register(handler: Handler, route: str, methods: list[str], name: str) -> None:
    wrapped = openai_handler(handler)
    wrapped.__name__ = name
    decorated = bp.route(route=route, methods=methods, auth_level=ANONYMOUS)(wrapped)
    bp.function_name(name=name)(decorated)


for _prefix, _names in PREFIXES.items():
    for _handler, _route, _methods, _suffix in ROUTES:
        _register(_handler, f"{_prefix}/{_route}", _methods, f"{_names}_{_suffix}")
