"""The HTTP front end: routing under routePrefix, methods, keys, admin endpoints, both HTTP styles.

Behaviour mirrored from the real host:
- a known route called with a method it does not allow answers **404**, not 405 (azure-functions-host#10098);
- FUNCTION-level routes need a key (`x-functions-key` header or `code` query) only when keys are configured
  (Core Tools never asks for one), 401 with an empty body otherwise; ADMIN routes need the master key;
- FastAPI-style apps (azurefunctions-extensions-http-fastapi imported): the handler receives a FastAPI Request
  for the ORIGINAL request whose `path_params` hold the route parameters (the worker's RequestSynchronizer does
  `request.path_params.clear(); request.path_params.update(route_params)`); a returned Response/StreamingResponse
  is sent as is (streamed), any other return value is JSON-encoded like FastAPI does; an exception is a 500;
- a FastAPI-style invocation lasts until its response is sent: a stream is logged with its full duration, and a
  client that disconnects before the end fails the invocation (Azure does both);
- with a per-instance concurrency limit (Flex `scaleAndConcurrency.triggers.http.perInstanceConcurrency`), at
  most that many HTTP invocations run at once, from request to last byte; the others wait in arrival order,
  as requests wait for a free instance on Flex. Admin endpoints are not counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import azure.functions as func

from .invoker import Invoker
from .loader import FunctionSpec
from .routing import CompiledRoute, compile_route

log = logging.getLogger("functions_host")

ALL_METHODS = ("GET", "POST", "PUT", "DELETE", "HEAD", "PATCH", "OPTIONS", "TRACE")


@dataclass
class HttpRoute:
    spec: FunctionSpec
    route: CompiledRoute
    methods: tuple[str, ...]
    auth_level: str  # anonymous | function | admin


@dataclass
class Keys:
    master: str | None = None
    host: tuple[str, ...] = ()
    per_function: dict[str, tuple[str, ...]] | None = None

    @property
    def enforced(self) -> bool:
        return bool(self.master or self.host or self.per_function)

    def allows(self, level: str, function_name: str | None, key: str | None) -> bool:
        if not self.enforced or level == "anonymous":
            return True
        if not key:
            return False
        if self.master and key == self.master:
            return True
        if level == "admin":
            return False
        if key in self.host:
            return True
        scoped = (self.per_function or {}).get((function_name or "").lower(), ())
        return key in scoped

    @classmethod
    def parse(cls, master: str | None, function_keys: str | None, extra: list[str] | None = None) -> Keys:
        host: list[str] = list(extra or [])
        per: dict[str, list[str]] = {}
        for item in (function_keys or "").replace(";", ",").split(","):
            item = item.strip()
            if not item:
                continue
            if "=" in item:
                name, key = item.split("=", 1)
                per.setdefault(name.strip().lower(), []).append(key.strip())
            else:
                host.append(item)
        return cls(master=master or None, host=tuple(host), per_function={k: tuple(v) for k, v in per.items()})


class ClientDisconnectedError(Exception):
    """The client went away before the whole response was sent."""


class HttpConcurrency:
    """At most `limit` HTTP invocations at once (None: unlimited); the rest wait in arrival order."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.active = 0
        self.queued = 0
        self._slots = asyncio.Semaphore(limit) if limit else None

    @contextlib.asynccontextmanager
    async def slot(self):
        if self._slots is not None:
            self.queued += 1
            try:
                await self._slots.acquire()
            finally:
                self.queued -= 1
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1
            if self._slots is not None:
                self._slots.release()

    def status(self) -> dict:
        return {"perInstanceConcurrency": self.limit, "active": self.active, "queued": self.queued}


class _ResponseDelivery:
    """Sends a FastAPI-style result inside the invocation and tells a complete response from a cut one."""

    def __init__(self, scope, receive, send) -> None:
        self.scope, self._receive, self._send = scope, receive, send
        self.started = False
        self.completed = False
        self.body_bytes = 0

    async def send(self, message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
        elif message["type"] == "http.response.body":
            self.body_bytes += len(message.get("body", b""))
            self.completed = not message.get("more_body", False)
        await self._send(message)

    async def _disconnected(self) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass

    async def deliver(self, result: Any) -> None:
        from fastapi.encoders import jsonable_encoder
        from starlette.requests import ClientDisconnect
        from starlette.responses import JSONResponse, Response

        if not isinstance(result, Response):
            result = JSONResponse(jsonable_encoder(result))
        sending = asyncio.ensure_future(result(self.scope, self._receive, self.send))
        watching = asyncio.ensure_future(self._disconnected())
        try:
            await asyncio.wait({sending, watching}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sending, watching):
                task.cancel()  # a stream the client left stops here (its generator is cancelled)
            await asyncio.gather(sending, watching, return_exceptions=True)
        if self.completed:
            return
        failure = sending.exception() if sending.done() and not sending.cancelled() else None
        if failure is not None and not isinstance(failure, (OSError, ClientDisconnect)):
            raise failure  # the response itself failed (e.g. its generator raised): the invocation fails with it
        raise ClientDisconnectedError(
            f"The client disconnected before the response completed ({self.body_bytes} body bytes sent)."
        )


def _level(trigger) -> str:
    level = getattr(trigger, "auth_level", None)
    level = getattr(level, "value", level) or "function"
    return str(level).lower()


def _methods(trigger) -> tuple[str, ...]:
    methods = getattr(trigger, "methods", None)
    if not methods:
        return ALL_METHODS
    return tuple(str(getattr(m, "value", m)).upper() for m in methods)


class HttpFrontend:
    """A raw ASGI app (served by uvicorn on the host's event loop)."""

    def __init__(
        self,
        *,
        functions: list[FunctionSpec],
        route_prefix: str,
        keys: Keys,
        invoker: Invoker,
        http_v2: bool,
        status: dict,
        concurrency: int | None = None,
    ) -> None:
        self.prefix = route_prefix.strip("/")
        self.concurrency = HttpConcurrency(concurrency)
        self.keys = keys
        self.invoker = invoker
        self.http_v2 = http_v2
        self.status = status
        self.routes: list[HttpRoute] = []
        for spec in functions:
            if spec.trigger_type != "httpTrigger":
                continue
            self.routes.append(
                HttpRoute(
                    spec, compile_route(spec.trigger.route or spec.name), _methods(spec.trigger), _level(spec.trigger)
                )
            )
        self.routes.sort(key=lambda r: r.route.sort_key)
        self.accepting = True
        if http_v2:
            from azurefunctions.extensions.base import RequestTrackerMeta

            self._synchronizer = RequestTrackerMeta.get_synchronizer()

    def url_for(self, r: HttpRoute, base: str) -> str:
        path = r.route.template.strip("/")
        return f"{base}/{self.prefix + '/' if self.prefix else ''}{path}"

    # -- ASGI -----------------------------------------------------------------------------------------
    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        path = scope["path"].strip("/")
        method = scope["method"].upper()
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True))
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        key = headers.get("x-functions-key") or query.get("code")

        if path.lower().startswith("admin/") or path.lower() == "admin":
            await self._admin(path.lower(), method, key, send)
            return

        rel = self._strip_prefix(path)
        if rel is None:
            await _send_simple(send, 404)
            return
        for r in self.routes:
            params = r.route.match(rel)
            if params is None:
                continue
            if method not in r.methods:
                continue  # the host's router treats a method mismatch as "no route" -> 404
            if not self.keys.allows(r.auth_level, r.spec.name, key):
                await _send_simple(send, 401)
                return
            if not self.accepting:
                await _send_simple(send, 503)
                return
            async with self.concurrency.slot():
                if self.http_v2:
                    await self._invoke_v2(r, params, scope, receive, send)
                else:
                    await self._invoke_classic(r, params, scope, receive, send, headers, query)
            return
        await _send_simple(send, 404)

    def _strip_prefix(self, path: str) -> str | None:
        if not self.prefix:
            return path
        low, pre = path.lower(), self.prefix.lower()
        if low == pre:
            return ""
        if low.startswith(pre + "/"):
            return path[len(pre) + 1 :]
        return None

    async def _admin(self, path: str, method: str, key: str | None, send) -> None:
        if path == "admin/host/ping":
            await _send_simple(send, 200)
            return
        if not self.keys.allows("admin", None, key):
            await _send_simple(send, 401)
            return
        if path == "admin/host/status" and method == "GET":
            body = {k: v for k, v in self.status.items() if not k.startswith("_")}
            body["processUptime"] = int((time.monotonic() - self.status["_started"]) * 1000)
            body["http"] = self.concurrency.status()
            body["invocations"] = self.invoker.counts()
            # What a soak watches for growth besides RSS and file descriptors (bench/soak.py): the event loop's
            # tasks, invocations in flight and the blocks Python's allocator holds (O(arenas), cheap).
            body["process"] = {
                "asyncio_tasks": len(asyncio.all_tasks()),
                "running_invocations": self.invoker.active,
                "allocated_blocks": sys.getallocatedblocks(),
            }
            await _send_json(send, 200, body)
            return
        if path == "admin/host/pools" and method == "GET":
            await _send_json(send, 200, connection_pools())
            return
        if path == "admin/functions" and method == "GET":
            await _send_json(
                send,
                200,
                [
                    {"name": s["name"], "trigger": s["trigger"], **({"route": s["route"]} if "route" in s else {})}
                    for s in self.status.get("_functions", [])
                ],
            )
            return
        await _send_simple(send, 404)

    # -- invocation ---------------------------------------------------------------------------------
    async def _invoke_classic(self, r: HttpRoute, params, scope, receive, send, headers, query) -> None:
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        request = func.HttpRequest(
            method=scope["method"].upper(),
            url=_full_url(scope),
            headers=headers,
            params=query,
            route_params=params,
            body=body,
        )
        try:
            result = await self.invoker.invoke(r.spec, request, reason=_http_reason())
        except BaseException as exc:  # logged by the invoker
            await _send_simple(send, 500)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        await _send_func_response(send, result)

    async def _invoke_v2(self, r: HttpRoute, params, scope, receive, send) -> None:
        from fastapi.requests import Request
        from starlette.responses import PlainTextResponse

        scope = dict(scope)
        scope["path_params"] = {}
        request = Request(scope, receive)
        self._synchronizer.sync_route_params(request, params)
        delivery = _ResponseDelivery(scope, receive, send)
        try:
            await self.invoker.invoke(r.spec, request, reason=_http_reason(), deliver=delivery.deliver)
        except BaseException as exc:  # logged by the invoker
            if not delivery.started and not isinstance(exc, ClientDisconnectedError):
                with contextlib.suppress(Exception):
                    await PlainTextResponse("Internal Server Error", status_code=500)(scope, receive, send)
            if isinstance(exc, asyncio.CancelledError):
                raise


def _http_reason() -> str:
    return "This function was programmatically called via the host APIs."


def _full_url(scope) -> str:
    host = dict(scope["headers"]).get(b"host", b"127.0.0.1").decode("latin-1")
    qs = scope.get("query_string", b"").decode("latin-1")
    return f"{scope.get('scheme', 'http')}://{host}{scope.get('root_path', '')}{scope['path']}" + (
        f"?{qs}" if qs else ""
    )


async def _send_simple(send, status: int) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-length", b"0")]})
    await send({"type": "http.response.body", "body": b""})


async def _send_json(send, status: int, obj: Any) -> None:
    body = json.dumps(obj).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _send_func_response(send, result: Any) -> None:
    if result is None:
        await _send_simple(send, 204)
        return
    if isinstance(result, (str, bytes)):
        result = func.HttpResponse(result)
    if not isinstance(result, func.HttpResponse):
        log.error("HTTP function returned %s; expected func.HttpResponse, str or bytes", type(result).__name__)
        await _send_simple(send, 500)
        return
    body = result.get_body() or b""
    headers: list[tuple[bytes, bytes]] = []
    has_ct = False
    for name, value in result.headers.items():
        if name.lower() == "content-length":
            continue
        has_ct = has_ct or name.lower() == "content-type"
        headers.append((name.encode("latin-1"), str(value).encode("latin-1")))
    if not has_ct and body:
        ct = result.mimetype or "text/plain"
        if result.charset:
            ct += f"; charset={result.charset}"
        headers.append((b"content-type", ct.encode("latin-1")))
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": result.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def connection_pools() -> dict:
    """The process's HTTP connection pools (aiohttp: the Azure SDKs; httpx: openai and the webhook sender), each
    connection in use or idle. Idle ones are kept alive for reuse; a connection in use that is never given back
    is a leak. Found by walking the garbage collector's objects: tens of milliseconds, for a soak's minute
    samples (bench/soak.py), not for a hot path."""
    import gc

    import aiohttp
    import httpcore

    pools = {"aiohttp": {"pools": 0, "in_use": 0, "idle": 0}, "httpx": {"pools": 0, "in_use": 0, "idle": 0}}
    for obj in gc.get_objects():
        # type(), not isinstance(): isinstance falls back to obj.__class__, and openai's lazy module proxies
        # import what they stand for when asked (tens of MiB of RSS the first time)
        kind = type(obj)
        if issubclass(kind, aiohttp.BaseConnector) and not obj.closed:
            entry = pools["aiohttp"]
            entry["in_use"] += len(getattr(obj, "_acquired", ()))
            entry["idle"] += sum(len(conns) for conns in getattr(obj, "_conns", {}).values())
        elif issubclass(kind, httpcore.AsyncConnectionPool):
            entry = pools["httpx"]
            live = [c for c in obj.connections if not c.is_closed()]
            entry["idle"] += sum(1 for c in live if c.is_idle())
            entry["in_use"] += sum(1 for c in live if not c.is_idle())
        else:
            continue
        entry["pools"] += 1
    return pools


def new_status(functions: list[FunctionSpec]) -> dict:
    return {
        "state": "Starting",
        "id": uuid.uuid4().hex[:12],
        "version": "local-4.x",
        "_started": time.monotonic(),
        "_functions": [],
    }
