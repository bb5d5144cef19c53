"""HTTP layer of the emulator: routes, OpenAI-shaped errors, fault injection, SSE streaming."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import math
import random
import secrets
import time
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .chat import FAILURE, KNOB_HEADER, ChatLog, ChatStream, build_chat_plan, completion_body, header_knobs
from .config import EmulatorConfig
from .quotas import AZURE_RESPONSES_HEADERS, Quotas, ratelimit_headers, refusal, retry_headers
from .store import Store
from .timeline import (
    TERMINAL,
    KnobError,
    build_content_spec,
    light_status,
    normalize_input,
    render_event,
    resolve_knobs,
    snapshot,
    sse_bytes,
    visible_event_count,
)
from .webhooks import EVENT_TYPES, OBJECT_NAMES, Dispatcher, EndpointError, Endpoints, describe_deliveries

PREFIXES = ("/v1", "/openai/v1", "/openai")
ENDPOINTS = (
    "create",
    "create_stream",
    "retrieve",
    "stream",
    "cancel",
    "delete",
    "input_items",
    "webhook_endpoints",
    "chat",
    "chat_stream",
)
_FAULT_GROUP = {"create_stream": "create", "chat_stream": "chat"}  # endpoint -> its name in fault_endpoints
_MODEL_CALLS = frozenset({"create", "create_stream", "chat", "chat_stream"})  # what quotas and billing apply to
_CHAT_ENDPOINTS = frozenset({"chat", "chat_stream"})
INSUFFICIENT_QUOTA = (
    "You exceeded your current quota, please check your plan and billing details. For more "
    "information on this error, read the docs: "
    "https://platform.openai.com/docs/guides/error-codes/api-errors. (emulated)"
)
_REQUEST_FIELDS = (
    "model",
    "instructions",
    "max_output_tokens",
    "max_tool_calls",
    "previous_response_id",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "temperature",
    "top_p",
    "top_logprobs",
    "reasoning",
    "text",
    "truncation",
    "user",
    "safety_identifier",
    "prompt_cache_key",
    "service_tier",
    "conversation",
)
_MAX_CHUNK = 512 * 1024


def _req_id() -> str:
    return "req_" + secrets.token_hex(16)


def error_response(
    status: int,
    message: str,
    type_: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    hdrs = {"x-request-id": _req_id()}
    hdrs.update(headers or {})
    return JSONResponse(
        {"error": {"message": message, "type": type_, "param": param, "code": code}}, status_code=status, headers=hdrs
    )


def fault_response(status: int, retry_after_ms: float, source: str, *, azure_responses: bool = False) -> JSONResponse:
    """An injected failure. ``azure_responses``: as Azure OpenAI's Responses API answers (``-1``/``0`` rate-limit
    headers, no retry-after)."""
    headers = {"x-emulator-fault": source}
    if status in (429, 503) and not azure_responses:
        headers["retry-after-ms"] = str(int(retry_after_ms))
        headers["retry-after"] = str(max(0, math.ceil(retry_after_ms / 1000.0)))
    if status == 429:
        headers.update(
            AZURE_RESPONSES_HEADERS
            if azure_responses
            else {
                "x-ratelimit-limit-requests": "10000",
                "x-ratelimit-remaining-requests": "0",
                "x-ratelimit-reset-requests": f"{int(retry_after_ms)}ms",
                "x-ratelimit-limit-tokens": "2000000",
                "x-ratelimit-remaining-tokens": "0",
                "x-ratelimit-reset-tokens": f"{int(retry_after_ms)}ms",
            }
        )
        return error_response(
            429,
            f"Rate limit reached for requests (emulated). Please try again in {int(retry_after_ms)}ms.",
            "requests",
            None,
            "rate_limit_exceeded",
            headers,
        )
    if status == 500:
        return error_response(
            500,
            "The server had an error while processing your request. Sorry about that! (emulated)",
            "server_error",
            None,
            None,
            headers,
        )
    if status == 503:
        return error_response(
            503,
            "The engine is currently overloaded, please try again later. (emulated)",
            "server_error",
            None,
            None,
            headers,
        )
    return error_response(
        status,
        f"Emulated HTTP {status}.",
        "server_error" if status >= 500 else "invalid_request_error",
        None,
        None,
        headers,
    )


def insufficient_quota() -> JSONResponse:
    """OpenAI's billing refusal: a 429 that no waiting fixes, so no retry-after."""
    return error_response(429, INSUFFICIENT_QUOTA, "insufficient_quota", None, "insufficient_quota")


def outage_response(name: str) -> JSONResponse:
    return error_response(
        503,
        f"The service is temporarily unavailable. (emulated outage of deployment '{name}')",
        "server_error",
        None,
        "service_unavailable",
    )


def not_found(resp_id: str) -> JSONResponse:
    return error_response(404, f"Response with id '{resp_id}' not found.")


class DropResponse:
    """Send the status line + headers, then close the connection without a body (a lost reply)."""

    async def __call__(self, scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        # returning without completing makes uvicorn close the transport


class Gate:
    """Outcome of the pre-request fault checks."""

    __slots__ = ("delay_s", "drop", "response")

    def __init__(self) -> None:
        self.response: Response | None = None
        self.delay_s = 0.0
        self.drop = False


class Emulator:
    """One emulated resource: its config, response store, quotas, webhooks and routes.

    ``name`` is its deployment name (several run side by side, see server.py); ``outage`` is None while it
    serves, ``"503"`` or ``"refuse"`` while it is down (set by its Deployment); ``extra_routes`` are served
    besides its own (the server's fleet control routes)."""

    def __init__(
        self, config: EmulatorConfig | None = None, *, name: str = "default", extra_routes: list[Route] | None = None
    ):
        self.config = config or EmulatorConfig()
        self.name = name
        self.outage: str | None = None
        self.store = Store(self.config.db)
        self.rng = random.Random(self.config.seed)
        self.quotas = Quotas(self.config)
        self.closing = False
        self._listeners: dict[str, set[asyncio.Event]] = {}
        self._all_listeners: set[asyncio.Event] = set()
        self.started_at = time.time()
        self.endpoints = Endpoints(self.store)
        self.webhooks = Dispatcher(self)
        self.chat = ChatLog()
        if self.config.webhook_url:
            types = [t.strip() for t in self.config.webhook_event_types.split(",") if t.strip()]
            self.endpoints.ensure(self.config.webhook_url, self.config.webhook_secret, types)
        self._reset_stats()
        self.app = self._build_app(extra_routes or [])

    # ------------------------------------------------------------------ bookkeeping
    def _reset_stats(self) -> None:
        self.stats: dict[str, Any] = {
            "requests": dict.fromkeys(ENDPOINTS, 0),
            "faults": {
                "429": 0,
                "500": 0,
                "503": 0,
                "other": 0,
                "stream_cut": 0,
                "slow_first_byte": 0,
                "drop": 0,
                "per_response_http_error": 0,
            },
            "events_sent": 0,
            "streams_open": 0,
            "streams_cut": 0,
            "unauthorized": 0,
            "outage_refusals": 0,
            "quota": {"insufficient_quota": 0},
        }

    def listen(self, resp_id: str, ev: asyncio.Event) -> None:
        self._listeners.setdefault(resp_id, set()).add(ev)
        self._all_listeners.add(ev)

    def unlisten(self, resp_id: str, ev: asyncio.Event) -> None:
        group = self._listeners.get(resp_id)
        if group is not None:
            group.discard(ev)
            if not group:
                del self._listeners[resp_id]
        self._all_listeners.discard(ev)

    def _wake(self, resp_id: str) -> None:
        for ev in self._listeners.get(resp_id, ()):
            ev.set()

    def shutdown_streams(self) -> None:
        self.closing = True
        self.interrupt_streams()

    def interrupt_streams(self) -> None:
        """Wake every live stream so that it sees ``closing`` or an outage and is cut."""
        for ev in list(self._all_listeners):
            ev.set()

    @property
    def cutting_streams(self) -> bool:
        return self.closing or self.outage is not None

    def lookup(self, resp_id: str) -> dict | None:
        rec = self.store.get(resp_id)
        if rec is None:
            return None
        if self.store.is_expired(rec, time.time(), self.config.ttl_s, self.config.ttl_store_false_s):
            self.store.delete(resp_id)
            return None
        return rec

    def sweep(self) -> int:
        return self.store.sweep(
            time.time(), self.config.ttl_s, self.config.ttl_store_false_s, self.config.max_responses
        )

    # ------------------------------------------------------------------ faults
    def _gate(self, request: Request, endpoint: str) -> Gate:
        self.stats["requests"][endpoint] += 1
        gate = Gate()
        cfg = self.config
        if self.outage is not None:
            self.stats["outage_refusals"] += 1
            gate.response = outage_response(self.name)
            return gate
        if cfg.api_keys:
            refusal = self._check_key(request)
            if refusal is not None:
                gate.response = refusal
                return gate
        model_call = endpoint in _MODEL_CALLS
        azure_responses = cfg.ratelimit_headers == "azure_responses" and endpoint not in _CHAT_ENDPOINTS
        header = (request.headers.get("x-emulator-fault") or "").strip().lower()
        if (cfg.insufficient_quota and model_call) or header == "insufficient_quota":
            self.stats["quota"]["insufficient_quota"] += 1
            gate.response = insufficient_quota()
            return gate
        if header:
            if header == "drop":
                gate.drop = True
            else:
                code, _, limit = header.partition(":")
                try:
                    status = int(code)
                    attempt = int(request.headers.get("x-stainless-retry-count") or 0)
                    active = not limit or attempt < int(limit)
                except ValueError:
                    status, active = 0, False
                if active and 400 <= status <= 599:
                    self._count_fault(status)
                    gate.response = fault_response(
                        status, cfg.retry_after_ms, "header", azure_responses=azure_responses
                    )
                    return gate
        try:
            gate.delay_s += float(request.headers.get("x-emulator-delay-ms") or 0) / 1000.0
        except ValueError:
            pass
        if _FAULT_GROUP.get(endpoint, endpoint) in cfg.fault_endpoint_set():
            r = self.rng.random()
            for status, rate in ((429, cfg.fault_429_rate), (500, cfg.fault_500_rate), (503, cfg.fault_503_rate)):
                if r < rate:
                    self._count_fault(status)
                    gate.response = fault_response(
                        status, cfg.retry_after_ms, "global", azure_responses=azure_responses
                    )
                    return gate
                r -= rate
            if cfg.slow_first_byte_rate > 0 and self.rng.random() < cfg.slow_first_byte_rate:
                self.stats["faults"]["slow_first_byte"] += 1
                gate.delay_s += cfg.slow_first_byte_ms / 1000.0
        return gate

    def _check_key(self, request: Request) -> Response | None:
        auth = request.headers.get("authorization") or ""
        key = auth[7:].strip() if auth.lower().startswith("bearer ") else (request.headers.get("api-key") or "")
        accepted = {k.strip() for k in self.config.api_keys.split(",") if k.strip()}
        if any(hmac.compare_digest(key.encode(), k.encode()) for k in accepted):
            return None
        self.stats["unauthorized"] += 1
        if not key:
            return error_response(
                401,
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            )
        hint = key[:3] + "*" * 4 + key[-4:] if len(key) > 8 else "****"
        return error_response(
            401,
            f"Incorrect API key provided: {hint}. You can find your API key at "
            f"https://platform.openai.com/account/api-keys.",
            code="invalid_api_key",
        )

    def _count_fault(self, status: int) -> None:
        key = str(status) if str(status) in ("429", "500", "503") else "other"
        self.stats["faults"][key] += 1

    def _per_response_error(self, rec: dict) -> Response | None:
        plan = rec["knobs"]["http_errors"]
        if not plan:
            return None
        served = rec["counters"]["http_errors_served"]
        acc = 0
        for status, count in plan:
            acc += count
            if served < acc:
                rec["counters"]["http_errors_served"] = served + 1
                self.store.touch(rec)
                self.stats["faults"]["per_response_http_error"] += 1
                self._count_fault(status)
                return fault_response(
                    status,
                    rec["knobs"]["retry_after_ms"],
                    "response",
                    azure_responses=self.config.ratelimit_headers == "azure_responses",
                )
        return None

    # ------------------------------------------------------------------ quotas
    def _admit(self, model: str, tokens: int, *, chat: bool) -> tuple[Response | None, dict[str, str]]:
        """Quota admission of a model call: (the 429 to answer or None, the rate-limit headers for the answer)."""
        cfg = self.config
        mode = "openai" if chat and cfg.ratelimit_headers == "azure_responses" else cfg.ratelimit_headers
        if not self.quotas.active:
            return None, ratelimit_headers(None, mode)
        verdict = self.quotas.admit(model, tokens, time.time())
        headers = ratelimit_headers(verdict, mode)
        if verdict.refused is None:
            return None, headers
        message, type_, code = refusal(
            verdict, cfg.quota_style, "ChatCompletions_Create" if chat else "Responses_Create"
        )
        return error_response(
            429, message, type_, None, code, {**headers, **retry_headers(verdict.retry_after_s, mode)}
        ), headers

    def _admit_get(self, rec: dict) -> Response | None:
        """With ``quota_counts_gets``: a retrieve/cancel/delete/input_items costs a request of the response's model."""
        if not self.config.quota_counts_gets:
            return None
        refused, _headers = self._admit(rec["request"].get("model") or "", 0, chat=False)
        return refused

    # ------------------------------------------------------------------ routes
    def _build_app(self, extra_routes: list[Route]) -> Starlette:
        routes = list(extra_routes)
        for p in PREFIXES:
            routes += [
                Route(f"{p}/responses", self.create, methods=["POST"]),
                Route(f"{p}/responses/{{resp_id}}", self.retrieve, methods=["GET"]),
                Route(f"{p}/responses/{{resp_id}}", self.delete, methods=["DELETE"]),
                Route(f"{p}/responses/{{resp_id}}/cancel", self.cancel, methods=["POST"]),
                Route(f"{p}/responses/{{resp_id}}/input_items", self.input_items, methods=["GET"]),
                Route(f"{p}/chat/completions", self.chat_completions, methods=["POST"]),
                Route(f"{p}/deployments/{{deployment}}/chat/completions", self.chat_completions, methods=["POST"]),
                Route(f"{p}/_emulator/chat_completions", self.list_chat_calls, methods=["GET"]),
                Route(f"{p}/_emulator/config", self.get_config, methods=["GET"]),
                Route(f"{p}/_emulator/config", self.set_config, methods=["POST"]),
                Route(f"{p}/_emulator/stats", self.get_stats, methods=["GET"]),
                Route(f"{p}/_emulator/reset", self.reset, methods=["POST"]),
                Route(f"{p}/_emulator/responses", self.list_responses, methods=["GET"]),
                Route(f"{p}/_emulator/quotas", self.get_quotas, methods=["GET"]),
                Route(f"{p}/_emulator/webhook_endpoints", self.list_endpoints_with_secrets, methods=["GET"]),
                Route(f"{p}/_emulator/webhook_deliveries", self.list_deliveries, methods=["GET"]),
            ]
            routes += self._endpoint_routes(p)
        routes.append(Route("/healthz", self.healthz, methods=["GET"]))

        async def http_error(request: Request, exc: HTTPException) -> Response:
            if exc.status_code == 404:
                return error_response(404, f"Invalid URL ({request.method} {request.url.path})")
            return error_response(exc.status_code, str(exc.detail))

        async def server_error(request: Request, exc: Exception) -> Response:
            return error_response(500, f"Emulator internal error: {exc!r}", "server_error")

        return Starlette(routes=routes, exception_handlers={HTTPException: http_error, Exception: server_error})

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"ok": True})

    async def _delayed(self, delay_s: float, response: Response) -> Response:
        if delay_s > 0:
            await asyncio.sleep(delay_s)
        return response

    # POST /responses ------------------------------------------------------------------
    async def create(self, request: Request) -> Response:
        raw = await request.body()
        try:
            body = json.loads(raw or b"null")
        except ValueError:
            body = None
        streaming = isinstance(body, dict) and bool(body.get("stream"))
        gate = self._gate(request, "create_stream" if streaming else "create")
        if gate.response is not None:
            return gate.response
        if not isinstance(body, dict):
            return error_response(
                400,
                "We could not parse the JSON body of your request. (HINT: This likely "
                "means you aren't using your HTTP library correctly.)",
            )
        rec_or_error = self._make_record(body)
        if isinstance(rec_or_error, Response):
            return rec_or_error
        rec = rec_or_error
        refused, headers = self._admit(
            rec["request"]["model"],
            self.quotas.estimate(rec["content"]["input_tokens"], body.get("max_output_tokens")),
            chat=False,
        )
        if refused is not None:
            return refused
        self.store.put(rec)
        self.webhooks.schedule_end(rec)
        delay = gate.delay_s + rec["knobs"]["first_byte_ms"] / 1000.0
        if gate.drop:
            self.stats["faults"]["drop"] += 1
            return await self._delayed(delay, DropResponse())  # type: ignore[arg-type]
        if rec["stream"]:
            return SSEStream(self, rec, -1, delay, headers)  # type: ignore[return-value]
        plan = self.store.plan(rec)
        if not rec["background"]:
            wait = plan.t_end - time.time()
            if wait > 0:
                await asyncio.sleep(wait)
                if self.outage is not None:  # went down while the call was running
                    return outage_response(self.name)
        return await self._delayed(delay, self._json(snapshot(rec, plan, time.time()), headers=headers))

    def _check_metadata(self, metadata: Any) -> Response | None:
        if not isinstance(metadata, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
        ):
            return error_response(
                400,
                "Invalid 'metadata': expected an object of string keys and string values.",
                param="metadata",
                code="invalid_type",
            )
        if self.config.enforce_metadata_limits:
            if len(metadata) > 16:
                return error_response(
                    400,
                    f"Invalid 'metadata': too many properties. Expected an object with at "
                    f"most 16 properties, but got an object with {len(metadata)} properties "
                    f"instead.",
                    param="metadata",
                    code="object_above_max_properties",
                )
            for k, v in metadata.items():
                if len(k) > 64:
                    return error_response(
                        400,
                        f"Invalid 'metadata': metadata key '{k[:80]}' exceeds the maximum length of 64 characters.",
                        param="metadata",
                        code="invalid_value",
                    )
                if len(v) > 512:
                    return error_response(
                        400,
                        f"Invalid 'metadata': string too long for key '{k}'. Expected a maximum length of 512.",
                        param="metadata",
                        code="string_above_max_length",
                    )
        return None

    def _make_record(self, body: dict) -> dict | Response:
        cfg = self.config
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return error_response(
                400, "Missing required parameter: 'model'.", param="model", code="missing_required_parameter"
            )
        background = bool(body.get("background") or False)
        stream = bool(body.get("stream") or False)
        store = body.get("store")
        store = True if store is None else bool(store)
        if background and not cfg.background_mode:
            return error_response(
                400,
                "Background mode is not supported by this server (emulator "
                "background_mode=false); use stream=true or a plain request.",
                param="background",
                code="unsupported_parameter",
            )
        if background and not store and cfg.reject_background_store_false:
            return error_response(400, "Background sampling requires store=true.", param="store")
        metadata = body.get("metadata") or {}
        refusal = self._check_metadata(metadata)
        if refusal is not None:
            return refusal
        tools = body.get("tools") or []
        if not isinstance(tools, list):
            return error_response(400, "Invalid 'tools': expected an array.", param="tools", code="invalid_type")
        mot = body.get("max_output_tokens")
        if mot is not None and (not isinstance(mot, int) or isinstance(mot, bool) or mot < 16):
            return error_response(
                400,
                f"Invalid 'max_output_tokens': integer below minimum value. Expected a value "
                f">= 16, but got {mot} instead.",
                param="max_output_tokens",
                code="integer_below_min_value",
            )
        try:
            items = normalize_input(body.get("input"))
        except KnobError as exc:
            return error_response(400, f"Invalid 'input': {exc}", param="input")
        prev_id = body.get("previous_response_id")
        previous = None
        now = time.time()
        if prev_id is not None:
            if not isinstance(prev_id, str):
                return error_response(
                    400, "Invalid 'previous_response_id': expected a string.", param="previous_response_id"
                )
            if body.get("conversation") is not None:
                return error_response(
                    400,
                    "Mutually exclusive parameters: 'previous_response_id' and 'conversation'.",
                    param="previous_response_id",
                )
            prev = self.lookup(prev_id)
            if prev is None or (not prev["store"] and not prev["background"]):
                return error_response(
                    404,
                    f"Previous response with id '{prev_id}' not found.",
                    param="previous_response_id",
                    code="previous_response_not_found",
                )
            prev_status = light_status(prev, now)[0]
            if prev_status not in TERMINAL:
                return error_response(
                    400,
                    f"Previous response with id '{prev_id}' is still {prev_status}; wait until it is finished.",
                    param="previous_response_id",
                )
            prev_calls = prev["content"].get("calls", []) if prev_status == "completed" else []
            previous = {"id": prev_id, "calls": prev_calls}
            known = {c["call_id"] for c in prev_calls} | {
                i.get("call_id") for i in items if i.get("type") == "function_call"
            }
            for item in items:
                if item.get("type") == "function_call_output" and item.get("call_id") not in known:
                    return error_response(
                        400,
                        f"No tool call found for function call output with call_id {item.get('call_id')}.",
                        param="input",
                    )
        try:
            knobs = resolve_knobs(metadata, cfg, background=background)
        except KnobError as exc:
            return error_response(400, str(exc), param="metadata", code="invalid_value")
        resp_id = "resp_" + secrets.token_hex(24)
        content = build_content_spec(
            resp_id=resp_id,
            items=items,
            instructions=body.get("instructions"),
            tools=tools,
            meta=metadata,
            previous=previous,
            model=model,
        )
        request_fields = {k: body[k] for k in _REQUEST_FIELDS if k in body}
        return {
            "id": resp_id,
            "created_at": now,
            "background": background,
            "stream": stream,
            "store": store,
            "metadata": metadata,
            "request": request_fields,
            "input": _input_items_with_ids(resp_id, items),
            "knobs": knobs,
            "content": content,
            "cancelled_at": None,
            "counters": {"retrieve": 0, "stream": 0, "cancel": 0, "http_errors_served": 0, "events_sent": 0},
        }

    # POST /chat/completions --------------------------------------------------------------
    async def chat_completions(self, request: Request) -> Response:
        raw = await request.body()
        try:
            body = json.loads(raw or b"null")
        except ValueError:
            body = None
        streaming = isinstance(body, dict) and bool(body.get("stream"))
        gate = self._gate(request, "chat_stream" if streaming else "chat")
        if gate.response is not None:
            return gate.response
        if not isinstance(body, dict):
            return error_response(
                400,
                "We could not parse the JSON body of your request. (HINT: This likely "
                "means you aren't using your HTTP library correctly.)",
            )
        refusal = self._check_chat_request(body)
        if refusal is not None:
            return refusal
        try:
            meta = {**(body.get("metadata") or {}), **header_knobs(request.headers.get(KNOB_HEADER))}
            knobs = resolve_knobs(meta, self.config, background=True)
            plan = build_chat_plan(body, meta, knobs, time.time())
        except KnobError as exc:  # a ChatRequestError names its field; other knob errors are metadata's
            return error_response(
                400, str(exc), param=getattr(exc, "param", "metadata"), code=getattr(exc, "code", "invalid_value")
            )
        delay = gate.delay_s + knobs["first_byte_ms"] / 1000.0
        fault = self._chat_http_error(raw, knobs)
        if fault is not None:
            return await self._delayed(delay, fault)
        # the quota key: Azure's deployment path segment, else the model (a v1 deployment name or an OpenAI model)
        refused, headers = self._admit(
            request.path_params.get("deployment") or body["model"],
            self.quotas.estimate(
                plan.usage["prompt_tokens"], body.get("max_completion_tokens") or body.get("max_tokens")
            ),
            chat=True,
        )
        if refused is not None:
            return refused
        entry = self.chat.record(plan, body, meta, streaming)
        if gate.drop:
            self.stats["faults"]["drop"] += 1
            return await self._delayed(delay, DropResponse())  # type: ignore[arg-type]
        if streaming:
            cut = knobs["stream_cut_after"]
            if (
                cut is not None
                and knobs["stream_cut_sends"] is not None
                and self.chat.stream_send(raw) >= knobs["stream_cut_sends"]
            ):
                cut = None  # this body was cut often enough: this send goes through
            n = len(plan.chunks)
            if self.config.stream_cut_rate > 0 and self.rng.random() < self.config.stream_cut_rate and n >= 2:
                k = self.rng.randint(1, n - 1)
                cut = k if cut is None else min(cut, k)
            return ChatStream(self, plan, entry, cut, delay, headers)  # type: ignore[return-value]
        wait = plan.t_end - time.time()
        if wait > 0:
            await asyncio.sleep(wait)
            if self.outage is not None:  # went down while the call was running
                return outage_response(self.name)
        if plan.failed:
            return await self._delayed(
                delay, error_response(500, FAILURE["message"], "server_error", code="server_error")
            )
        return await self._delayed(delay, self._json(completion_body(plan), headers=headers))

    def _check_chat_request(self, body: dict) -> Response | None:
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return error_response(
                400, "Missing required parameter: 'model'.", param="model", code="missing_required_parameter"
            )
        if not isinstance(body.get("messages"), list) or not body["messages"]:
            return error_response(
                400, "Missing required parameter: 'messages'.", param="messages", code="missing_required_parameter"
            )
        if body.get("metadata") is not None:
            if self.config.chat_metadata_requires_store and body.get("store") is not True:
                return error_response(
                    400, "The 'metadata' parameter is only allowed when 'store' is enabled.", param="metadata"
                )
            refusal = self._check_metadata(body["metadata"])
            if refusal is not None:
                return refusal
        if body.get("stream_options") is not None and not body.get("stream"):
            return error_response(
                400, "The 'stream_options' parameter is only allowed when 'stream' is enabled.", param="stream_options"
            )
        if body.get("n") not in (None, 1):
            return error_response(
                400, "Invalid 'n': the emulator generates one choice only (n=1).", param="n", code="invalid_value"
            )
        return None

    def _chat_http_error(self, raw: bytes, knobs: dict) -> Response | None:
        """``emulator_http_errors`` on chat: the first N sends of this exact body fail (there is no response
        to GET, and SDK retries as well as app-level retries resend the same body)."""
        plan = knobs["http_errors"]
        if not plan:
            return None
        attempt = self.chat.attempt(raw)
        acc = 0
        for status, count in plan:
            acc += count
            if attempt < acc:
                self.stats["faults"]["per_response_http_error"] += 1
                self.chat.stats["http_errors"] += 1
                self._count_fault(status)
                return fault_response(status, knobs["retry_after_ms"], "response")
        return None

    async def list_chat_calls(self, request: Request) -> Response:
        """Recent chat calls (bounded log): ``?metadata.<k>=<v>`` / ``?knob.<k>=<v>`` filters."""
        q = request.query_params
        meta = {k[len("metadata.") :]: v for k, v in q.items() if k.startswith("metadata.")}
        knob = {k[len("knob.") :]: v for k, v in q.items() if k.startswith("knob.")}
        rows = [
            c
            for c in self.chat.calls
            if all(c["metadata"].get(k) == v for k, v in meta.items())
            and all(c["knobs"].get(k if k.startswith("emulator_") else "emulator_" + k) == v for k, v in knob.items())
        ]
        return JSONResponse({"object": "list", "now": time.time(), "data": rows, "stats": self.chat.stats})

    def _json(self, obj: dict, status: int = 200, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse(obj, status_code=status, headers={"x-request-id": _req_id(), **(headers or {})})

    def _visible(self, rec: dict | None) -> bool:
        # a non-background store=false response is never retrievable, like the real API
        return rec is not None and (rec["store"] or rec["background"])

    # GET /responses/{id} ----------------------------------------------------------------
    async def retrieve(self, request: Request) -> Response:
        resp_id = request.path_params["resp_id"]
        q = request.query_params
        stream = (q.get("stream") or "").lower() == "true"
        gate = self._gate(request, "stream" if stream else "retrieve")
        if gate.response is not None:
            return gate.response
        rec = self.lookup(resp_id)
        if not self._visible(rec):
            return not_found(resp_id)
        refused = self._admit_get(rec)
        if refused is not None:
            return refused
        rec["counters"]["stream" if stream else "retrieve"] += 1
        self.store.touch(rec)
        delay = gate.delay_s + rec["knobs"]["first_byte_ms"] / 1000.0
        fault = self._per_response_error(rec)
        if fault is not None:
            return await self._delayed(delay, fault)
        if gate.drop:
            self.stats["faults"]["drop"] += 1
            return await self._delayed(delay, DropResponse())  # type: ignore[arg-type]
        if not stream:
            return await self._delayed(delay, self._json(snapshot(rec, self.store.plan(rec), time.time())))
        # streaming rules
        if not rec["background"]:
            return error_response(
                400,
                "This response cannot be streamed because it was not created with background=true.",
                param="stream",
                code="invalid_request_error",
            )
        if self.config.require_stream_for_resume and not rec["stream"]:
            return error_response(
                400,
                "This response cannot be streamed because it was not created with stream=true.",
                param="stream",
                code="invalid_request_error",
            )
        window = self.config.resume_window_s
        if time.time() - rec["created_at"] > window:
            mins = window / 60.0
            age = f"{mins:g} minutes" if window >= 60 else f"{window:g} seconds"
            return error_response(
                400,
                f"This response can no longer be streamed because it is more than {age} old.",
                param="stream",
                code="invalid_request_error",
            )
        starting_after = q.get("starting_after")
        try:
            after = int(starting_after) if starting_after not in (None, "") else -1
        except ValueError:
            return error_response(
                400, "Invalid 'starting_after': expected an integer.", param="starting_after", code="invalid_type"
            )
        return SSEStream(self, rec, max(-1, after), delay)  # type: ignore[return-value]

    # POST /responses/{id}/cancel ----------------------------------------------------------
    async def cancel(self, request: Request) -> Response:
        resp_id = request.path_params["resp_id"]
        gate = self._gate(request, "cancel")
        if gate.response is not None:
            return gate.response
        rec = self.lookup(resp_id)
        if not self._visible(rec):
            return not_found(resp_id)
        refused = self._admit_get(rec)
        if refused is not None:
            return refused
        rec["counters"]["cancel"] += 1
        self.store.touch(rec)
        if not rec["background"]:
            return error_response(400, "Cannot cancel a synchronous response.", param=None)
        now = time.time()
        plan = self.store.plan(rec)
        status = light_status(rec, now)[0]
        if status not in TERMINAL:
            rec["cancelled_at"] = now
            self.store.save(rec)
            self._wake(resp_id)
            self.webhooks.schedule_end(rec)  # the end moved: the response.cancelled event is due now
        return await self._delayed(gate.delay_s, self._json(snapshot(rec, plan, now)))

    # DELETE /responses/{id} -----------------------------------------------------------------
    async def delete(self, request: Request) -> Response:
        resp_id = request.path_params["resp_id"]
        gate = self._gate(request, "delete")
        if gate.response is not None:
            return gate.response
        rec = self.lookup(resp_id)
        if not self._visible(rec):
            return not_found(resp_id)
        refused = self._admit_get(rec)
        if refused is not None:
            return refused
        rec["deleted"] = True
        self.store.delete(resp_id)
        self._wake(resp_id)
        return await self._delayed(gate.delay_s, self._json({"id": resp_id, "object": "response", "deleted": True}))

    # GET /responses/{id}/input_items ----------------------------------------------------------
    async def input_items(self, request: Request) -> Response:
        resp_id = request.path_params["resp_id"]
        gate = self._gate(request, "input_items")
        if gate.response is not None:
            return gate.response
        rec = self.lookup(resp_id)
        if not self._visible(rec):
            return not_found(resp_id)
        refused = self._admit_get(rec)
        if refused is not None:
            return refused
        q = request.query_params
        items = list(rec["input"])
        if (q.get("order") or "desc") == "desc":
            items.reverse()
        after = q.get("after")
        if after:
            ids = [i.get("id") for i in items]
            items = items[ids.index(after) + 1 :] if after in ids else []
        try:
            limit = max(1, min(100, int(q.get("limit") or 20)))
        except ValueError:
            return error_response(400, "Invalid 'limit': expected an integer.", param="limit")
        page = items[:limit]
        return await self._delayed(
            gate.delay_s,
            self._json(
                {
                    "object": "list",
                    "data": page,
                    "first_id": page[0]["id"] if page else None,
                    "last_id": page[-1]["id"] if page else None,
                    "has_more": len(items) > limit,
                }
            ),
        )

    # ---------------------------------------------------------------- /_emulator/*
    async def get_config(self, request: Request) -> Response:
        return JSONResponse(self.config.as_dict())

    async def set_config(self, request: Request) -> Response:
        try:
            values = await request.json()
            if not isinstance(values, dict):
                raise ValueError("expected a JSON object")
            self.config.update(values)
        except ValueError as exc:
            return error_response(400, str(exc))
        if "seed" in values:
            self.rng = random.Random(self.config.seed)
        return JSONResponse(self.config.as_dict())

    async def get_quotas(self, request: Request) -> Response:
        """Every model's budgets as they stand now (nothing is taken)."""
        cfg = self.config
        return JSONResponse(
            {
                "object": "list",
                "style": cfg.quota_style,
                "window_s": cfg.quota_window_s,
                "data": self.quotas.describe(time.time()),
                "stats": self.quotas.stats,
            }
        )

    def status_counts(self) -> dict[str, int]:
        now = time.time()
        counts = dict.fromkeys(("queued", "in_progress", "completed", "failed", "cancelled", "incomplete"), 0)
        for rec in self.store.records.values():
            counts[light_status(rec, now)[0]] += 1
        return counts

    async def get_stats(self, request: Request) -> Response:
        body = dict(self.stats)
        body["responses"] = {"total": len(self.store.records), "by_status": self.status_counts()}
        body["uptime_s"] = time.time() - self.started_at
        body["chat"] = dict(self.chat.stats)
        body["quota"] = {**self.stats["quota"], **self.quotas.stats}
        body["webhooks"] = {
            **self.webhooks.stats,
            "pending": self.webhooks.pending,
            "endpoints": len(self.endpoints.items),
        }
        return JSONResponse(body)

    async def reset(self, request: Request) -> Response:
        try:
            opts = await request.json() if await request.body() else {}
        except ValueError:
            opts = {}
        self._reset_stats()
        self.webhooks.reset_stats()
        self.chat.reset_stats()
        self.quotas.reset()
        self.rng = random.Random(self.config.seed)
        if isinstance(opts, dict) and opts.get("webhook_endpoints"):
            self.endpoints.clear()
        if isinstance(opts, dict) and opts.get("responses"):
            for resp_id in list(self.store.records):
                self._wake(resp_id)
            self.store.clear()
            self.chat.calls.clear()
        else:
            for rec in self.store.records.values():
                for key in ("retrieve", "stream", "cancel", "events_sent"):
                    rec["counters"][key] = 0
                self.store.touch(rec)
        return JSONResponse({"ok": True, "responses": len(self.store.records)})

    def describe(self, rec: dict, now: float) -> dict:
        status, started, finished = light_status(rec, now)
        k = rec["knobs"]
        return {
            "id": rec["id"],
            "status": status,
            "model": rec["request"].get("model"),
            "metadata": rec["metadata"],
            "background": rec["background"],
            "stream": rec["stream"],
            "store": rec["store"],
            "previous_response_id": rec["request"].get("previous_response_id"),
            "created_at": rec["created_at"],
            "started_at": started,
            "finished_at": finished,
            "cancelled_at": rec.get("cancelled_at"),
            "output_kind": rec["content"]["kind"],
            "knobs": {
                "duration_ms": k["duration_ms"],
                "queue_ms": k["queue_ms"],
                "output_chars": k["output_chars"],
                "deltas": k["deltas"],
                "outcome": k["outcome"],
                "time_scale": k["scale"],
            },
            "counters": dict(rec["counters"]),
            "webhook": describe_deliveries(rec),
        }

    async def list_responses(self, request: Request) -> Response:
        now = time.time()
        q = request.query_params
        wanted_meta = {k[len("metadata.") :]: v for k, v in q.items() if k.startswith("metadata.")}
        wanted_status = q.get("status")
        out = []
        for rec in self.store.records.values():
            if any(rec["metadata"].get(k) != v for k, v in wanted_meta.items()):
                continue
            d = self.describe(rec, now)
            if wanted_status and d["status"] != wanted_status:
                continue
            out.append(d)
        out.sort(key=lambda d: d["created_at"])
        return JSONResponse({"object": "list", "now": now, "data": out})

    # ---------------------------------------------------------------- webhook endpoints (management API)
    def _endpoint_routes(self, prefix: str) -> list[Route]:
        """OpenAI's ``/webhook_endpoints`` and Azure's ``/dashboard/webhook_endpoints``: one registry."""

        def bind(handler, flavour: str):
            async def endpoint(request: Request) -> Response:
                gate = self._gate(request, "webhook_endpoints")
                if gate.response is not None:
                    return gate.response
                try:
                    return await self._delayed(gate.delay_s, await handler(request, flavour))
                except EndpointError as exc:
                    return error_response(400, str(exc), param=exc.param)

            return endpoint

        routes = []
        for base, flavour in (
            (f"{prefix}/webhook_endpoints", "openai"),
            (f"{prefix}/dashboard/webhook_endpoints", "azure"),
        ):
            routes += [
                Route(base, bind(self.endpoint_create, flavour), methods=["POST"]),
                Route(base, bind(self.endpoint_list, flavour), methods=["GET"]),
                Route(base + "/{ep_id}", bind(self.endpoint_get, flavour), methods=["GET"]),
                Route(base + "/{ep_id}", bind(self.endpoint_update, flavour), methods=["POST"]),
                Route(base + "/{ep_id}", bind(self.endpoint_delete, flavour), methods=["DELETE"]),
                Route(base + "/{ep_id}/rotate_secret", bind(self.endpoint_rotate, flavour), methods=["POST"]),
                Route(base + "/{ep_id}/test", bind(self.endpoint_test, flavour), methods=["POST"]),
            ]
        return routes

    @staticmethod
    async def _body(request: Request, *, optional: bool = False) -> Any:
        raw = await request.body()
        if not raw and optional:
            return {}
        try:
            return json.loads(raw)
        except ValueError:
            raise EndpointError("We could not parse the JSON body of your request.") from None

    def _endpoint(self, request: Request) -> dict:
        ep = self.endpoints.items.get(request.path_params["ep_id"])
        if ep is None:
            raise LookupError(request.path_params["ep_id"])
        return ep

    @staticmethod
    def _endpoint_missing(ep_id: str) -> Response:
        return error_response(404, f"Webhook endpoint with id '{ep_id}' not found.")

    async def endpoint_create(self, request: Request, flavour: str) -> Response:
        ep = self.endpoints.create(await self._body(request))
        return self._json(Endpoints.public(ep, flavour, with_secret=True))

    async def endpoint_list(self, request: Request, flavour: str) -> Response:
        q = request.query_params
        try:
            limit = max(1, min(100, int(q.get("limit") or 20)))
        except ValueError:
            raise EndpointError("Invalid 'limit': expected an integer.", "limit") from None
        items = sorted(self.endpoints.items.values(), key=lambda e: (e["created_at"], e["id"]), reverse=True)
        after = q.get("after")
        if after:
            ids = [e["id"] for e in items]
            items = items[ids.index(after) + 1 :] if after in ids else []
        page = [Endpoints.public(e, flavour) for e in items[:limit]]
        return self._json(
            {
                "object": "list",
                "data": page,
                "first_id": page[0]["id"] if page else None,
                "last_id": page[-1]["id"] if page else None,
                "has_more": len(items) > limit,
            }
        )

    async def endpoint_get(self, request: Request, flavour: str) -> Response:
        try:
            return self._json(Endpoints.public(self._endpoint(request), flavour))
        except LookupError as exc:
            return self._endpoint_missing(str(exc.args[0]))

    async def endpoint_update(self, request: Request, flavour: str) -> Response:
        try:
            ep = self._endpoint(request)
        except LookupError as exc:
            return self._endpoint_missing(str(exc.args[0]))
        return self._json(Endpoints.public(self.endpoints.update(ep, await self._body(request)), flavour))

    async def endpoint_delete(self, request: Request, flavour: str) -> Response:
        try:
            ep = self._endpoint(request)
        except LookupError as exc:
            return self._endpoint_missing(str(exc.args[0]))
        self.endpoints.delete(ep["id"])
        return self._json({"id": ep["id"], "object": OBJECT_NAMES[flavour] + ".deleted", "deleted": True})

    async def endpoint_rotate(self, request: Request, flavour: str) -> Response:
        try:
            ep = self._endpoint(request)
        except LookupError as exc:
            return self._endpoint_missing(str(exc.args[0]))
        body = await self._body(request, optional=True)
        keep = body.get("keep_old_secret_active_for_24_hours", False) if isinstance(body, dict) else None
        if not isinstance(keep, bool):
            raise EndpointError(
                "Invalid 'keep_old_secret_active_for_24_hours': expected a boolean.",
                "keep_old_secret_active_for_24_hours",
            )
        return self._json(Endpoints.public(self.endpoints.rotate(ep, keep), flavour, with_secret=True))

    async def endpoint_test(self, request: Request, flavour: str) -> Response:
        try:
            ep = self._endpoint(request)
        except LookupError as exc:
            return self._endpoint_missing(str(exc.args[0]))
        body = await self._body(request)
        event_type = body.get("event_type") if isinstance(body, dict) else None
        if event_type not in EVENT_TYPES:
            raise EndpointError(
                f"Invalid 'event_type': expected one of the webhook event types, got {event_type!r}.", "event_type"
            )
        status, error = await self.webhooks.send_test(ep, event_type)
        if status is None:
            raise EndpointError(f"The test delivery to {ep['url']} failed: {error}", "url")
        return self._json(
            {
                "object": "webhook_endpoint.test",
                "event_type": event_type,
                "status_code": status,
                "success": True,
                "webhook_endpoint_id": ep["id"],
            }
        )

    async def list_endpoints_with_secrets(self, request: Request) -> Response:
        """Introspection (dev only): the endpoints with their signing secrets."""
        return JSONResponse(
            {
                "object": "list",
                "data": [
                    {
                        **Endpoints.public(e, "openai", with_secret=True),
                        "old_secret_active": len(Endpoints.signing_secrets(e)) > 1,
                    }
                    for e in self.endpoints.items.values()
                ],
            }
        )

    async def list_deliveries(self, request: Request) -> Response:
        """Every delivery, flattened: ``?response_id=&endpoint_id=&state=`` filter."""
        q = request.query_params
        out = []
        records = [self.store.get(q["response_id"])] if q.get("response_id") else self.store.records.values()
        for rec in records:
            hook = rec.get("webhook") if rec else None
            if not hook:
                continue
            for d in hook["deliveries"]:
                if q.get("endpoint_id") and d["endpoint_id"] != q["endpoint_id"]:
                    continue
                if q.get("state") and d["state"] != q["state"]:
                    continue
                out.append(
                    {
                        "response_id": rec["id"],
                        "event_id": hook["event_id"],
                        "type": hook["type"],
                        "fired_at": hook["fired_at"],
                        **d,
                    }
                )
        out.sort(key=lambda d: d["fired_at"])
        return JSONResponse({"object": "list", "data": out, "stats": self.webhooks.stats})


def _input_items_with_ids(resp_id: str, items: list[dict]) -> list[dict]:
    out = []
    for n, item in enumerate(items):
        item = dict(item)
        if "id" not in item:
            h = hashlib.sha256(f"{resp_id}:in:{n}".encode()).hexdigest()[:40]
            item["id"] = {"message": "msg_", "function_call_output": "fco_", "function_call": "fc_"}.get(
                item.get("type"), "item_"
            ) + h
        if item.get("type") == "message":
            item["content"] = _message_content(item.get("content"), item.get("role"))
        if item.get("type") in ("message", "function_call", "function_call_output"):
            item.setdefault("status", "completed")  # listed items always carry a status
        out.append(item)
    return out


def _message_content(content: Any, role: str | None) -> Any:
    """Content parts as the API lists them: user/system/developer text is `input_text`; an assistant
    message given as input is listed like an output message (`output_text` with annotations/logprobs)."""
    if isinstance(content, str):
        content = [{"type": "input_text", "text": content}]
    if role != "assistant" or not isinstance(content, list):
        return content
    parts = []
    for part in content:
        if isinstance(part, dict) and part.get("type") in ("input_text", "output_text", "text"):
            part = {
                "type": "output_text",
                "text": part.get("text", ""),
                "annotations": part.get("annotations", []),
                "logprobs": part.get("logprobs", []),
            }
        parts.append(part)
    return parts


class SSEStream:
    """ASGI app that replays events with sequence_number > starting_after, then follows live ones.

    Ends with the terminal event; for a cancelled or deleted response it ends cleanly (no terminal event,
    the real API has no ``response.cancelled`` stream event). A cut closes the connection abruptly.
    """

    def __init__(
        self, emu: Emulator, rec: dict, starting_after: int, delay_s: float, headers: dict[str, str] | None = None
    ):
        self.emu, self.rec, self.after, self.delay_s = emu, rec, starting_after, delay_s
        self.headers = [(k.encode(), v.encode()) for k, v in (headers or {}).items()]

    async def __call__(self, scope, receive, send) -> None:
        emu, rec = self.emu, self.rec
        plan = emu.store.plan(rec)
        n = len(plan.events)
        seq = self.after + 1
        cut_after = rec["knobs"]["stream_cut_after"]
        cfg = emu.config
        if cfg.stream_cut_rate > 0 and emu.rng.random() < cfg.stream_cut_rate and n - seq >= 2:
            k = emu.rng.randint(1, n - seq - 1)
            cut_after = k if cut_after is None else min(cut_after, k)
        if self.delay_s > 0:
            await asyncio.sleep(self.delay_s)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream; charset=utf-8"),
                    (b"cache-control", b"no-cache"),
                    (b"x-request-id", _req_id().encode()),
                    *self.headers,
                ],
            }
        )
        wake = asyncio.Event()
        gone = False

        async def watch() -> None:
            nonlocal gone
            while True:
                msg = await receive()
                if msg["type"] == "http.disconnect":
                    gone = True
                    wake.set()
                    return

        watcher = asyncio.ensure_future(watch())
        emu.listen(rec["id"], wake)
        emu.stats["streams_open"] += 1
        loop = asyncio.get_running_loop()
        sent = 0
        try:
            while not gone:
                wake.clear()
                if emu.cutting_streams:
                    return self._cut()
                now = time.time()
                visible = visible_event_count(rec, plan, now)
                if seq < visible:
                    chunk: list[bytes] = []
                    size = 0
                    while seq < visible and size < _MAX_CHUNK and (cut_after is None or sent < cut_after):
                        data = sse_bytes(render_event(rec, plan, seq))
                        chunk.append(data)
                        size += len(data)
                        seq += 1
                        sent += 1
                    await send({"type": "http.response.body", "body": b"".join(chunk), "more_body": True})
                    emu.stats["events_sent"] += len(chunk)
                    rec["counters"]["events_sent"] += len(chunk)
                    if cut_after is not None and sent >= cut_after and seq < n:
                        return self._cut()
                    continue
                if seq >= n or rec.get("deleted"):
                    break
                c = rec.get("cancelled_at")
                if c is not None and c < plan.t_end and now >= c:
                    break  # cancelled: the log is frozen, end the stream cleanly
                handle = loop.call_later(max(0.0, plan.dues[seq] - now), wake.set)
                try:
                    await wake.wait()
                finally:
                    handle.cancel()
            if not gone:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            emu.unlisten(rec["id"], wake)
            emu.stats["streams_open"] -= 1
            watcher.cancel()
            emu.store.touch(rec)

    def _cut(self) -> None:
        self.emu.stats["streams_cut"] += 1
        self.emu.stats["faults"]["stream_cut"] += 1
        # returning without a final body message: uvicorn closes the socket mid-chunked-body
        return None
