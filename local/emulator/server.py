"""Run the emulator: in-process (async context manager or a background thread) or from the CLI.

One server runs one or several *deployments* on one event loop. A deployment is one emulated resource (think
one Azure OpenAI resource): its own port and base URL, config (quotas, faults), response store, webhook
endpoints and signing secrets. A response created at one is unknown (404) at another, as on real resources.
Each can be taken down and up at runtime: ``refuse`` closes its port (connection refused, live connections cut),
``503`` answers every API request 503 ``service_unavailable`` (live streams cut). Without ``deployments`` there is
one, named ``default``, and everything is as it always was.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import uvicorn
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .app import PREFIXES, Emulator, error_response
from .config import EmulatorConfig

_SWEEP_EVERY_S = 5.0
_FLUSH_EVERY_S = 0.5
DEFAULT_DEPLOYMENT = "default"
OUTAGES = ("refuse", "503")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class _QuietCut(logging.Filter):
    """A deliberate stream cut makes uvicorn log an error; it is expected here, so drop that line."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return "returned without completing response" not in msg


logging.getLogger("uvicorn.error").addFilter(_QuietCut())


class _Uvicorn(uvicorn.Server):
    """No signal handlers of its own: several run on one loop, and the EmulatorServer handles signals."""

    def capture_signals(self):  # type: ignore[override]
        return contextlib.nullcontext()


def parse_deployments(spec: Any) -> list[tuple[str, dict[str, Any]]]:
    """The deployments to serve, in order (the first is the primary, on the server's port).

    ``None``/``""`` -> one ``default``; ``"ptu,payg"`` or ``["ptu", "payg"]`` -> names; ``{"ptu": {"rpm_limit": 60,
    "port": 7080}, "payg": {}}`` (or its JSON text) -> names with their own settings (EmulatorConfig fields, plus
    ``port``)."""
    if spec is None or spec == "" or spec == []:
        return [(DEFAULT_DEPLOYMENT, {})]
    if isinstance(spec, str):
        text = spec.strip()
        spec = json.loads(text) if text.startswith("{") else [n.strip() for n in text.split(",") if n.strip()]
    if isinstance(spec, (list, tuple)):
        if len(set(spec)) != len(spec):
            raise ValueError(f"deployments: a name appears twice in {spec!r}")
        spec = {name: {} for name in spec}
    if not isinstance(spec, dict) or not spec:
        raise ValueError(f"deployments: expected names or an object of name -> settings, got {spec!r}")
    out = []
    for name, settings in spec.items():
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(f"deployments: bad name {name!r} (letters, digits, '_', '-', '.'; at most 64)")
        if not isinstance(settings, dict):
            raise ValueError(f"deployments[{name!r}]: expected an object of settings, got {settings!r}")
        out.append((name, dict(settings)))
    return out


class Deployment:
    """One emulated resource on its own port: an Emulator core plus the uvicorn server that exposes it."""

    def __init__(
        self, name: str, host: str, port: int, config: EmulatorConfig, log_level: str, fleet_routes: list[Route]
    ) -> None:
        self.name = name
        self.host = host
        self.requested_port = port
        self.config = config
        self.log_level = log_level
        self.fleet_routes = fleet_routes
        self.emulator: Emulator | None = None
        self.port: int | None = None
        self.outage: str | None = None
        self.up_at: float | None = None  # when a timed outage ends by itself
        self._server: _Uvicorn | None = None
        self._serve_task: asyncio.Task | None = None
        self._tasks: list[asyncio.Task] = []
        self._timer: asyncio.TimerHandle | None = None
        self._lock: asyncio.Lock | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    @property
    def root_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.root_url}/v1"

    @property
    def azure_base_url(self) -> str:
        return f"{self.root_url}/openai/v1"

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._lock = asyncio.Lock()
        self.emulator = Emulator(self.config, name=self.name, extra_routes=self.fleet_routes)
        await self._listen()
        self._tasks = [asyncio.create_task(self._housekeeping()), asyncio.create_task(self.emulator.webhooks.run())]

    async def _listen(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port or self.requested_port))  # back up on the same port after an outage
        sock.listen(4096)
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        uv_config = uvicorn.Config(
            self.emulator.app,
            log_level=self.log_level,
            access_log=False,
            lifespan="off",
            timeout_keep_alive=30,
            timeout_graceful_shutdown=3,
            backlog=4096,
            http="h11",
            loop="asyncio",
        )
        self._server = _Uvicorn(uv_config)
        self._serve_task = asyncio.create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:
            if self._serve_task.done():
                self._serve_task.result()
                raise RuntimeError(f"emulator deployment {self.name!r} failed to start")
            await asyncio.sleep(0.01)

    async def _stop_listening(self) -> None:
        """An outage: the port closes and every open connection is cut (a client sees a connection error)."""
        server, task = self._server, self._serve_task
        self._server = self._serve_task = None
        for listener in server.servers:
            listener.close()
        for connection in list(server.server_state.connections):
            if connection.transport is not None:
                connection.transport.abort()
        server.should_exit = server.force_exit = True
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task

    async def _housekeeping(self) -> None:
        emu = self.emulator
        ticks = 0
        while True:
            await asyncio.sleep(_FLUSH_EVERY_S)
            ticks += 1
            emu.store.flush()
            if ticks * _FLUSH_EVERY_S >= _SWEEP_EVERY_S:
                ticks = 0
                emu.sweep()

    # -- outages ---------------------------------------------------------------------------------------
    def begin_outage(self, outage: str | None, for_s: float | None = None) -> None:
        """The immediate part of a change: the state, live streams cut, and (refuse) no new connection accepted.
        ``settle()`` then makes the listener follow; ``set_outage`` does both."""
        if outage not in (None, *OUTAGES):
            raise ValueError(f"outage must be one of {', '.join(OUTAGES)} or None, got {outage!r}")
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.outage = self.emulator.outage = outage
        self.up_at = None
        if outage is not None:
            self.emulator.interrupt_streams()
            if outage == "refuse" and self._server is not None:
                for listener in self._server.servers:
                    listener.close()  # refused from now on, even before settle() runs
            if for_s:
                self.up_at = time.time() + for_s
                self._timer = self._loop.call_later(for_s, lambda: asyncio.ensure_future(self.set_outage(None)))

    async def settle(self) -> None:
        async with self._lock:
            if self.outage == "refuse" and self._server is not None:
                await self._stop_listening()
            elif self.outage != "refuse" and self._server is None:
                await self._listen()
            if self.outage is None:
                self.emulator.webhooks.poke()  # webhooks that fell due during the outage go out now

    async def set_outage(self, outage: str | None, for_s: float | None = None) -> dict[str, Any]:
        self.begin_outage(outage, for_s)
        await self.settle()
        return self.describe()

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "base_url": self.base_url,
            "azure_base_url": self.azure_base_url,
            "port": self.port,
            "outage": self.outage,
            "up_at": self.up_at,
            "responses": len(self.emulator.store.records) if self.emulator else 0,
        }

    async def aclose(self) -> None:
        if self.emulator is None or self._closed:
            return
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        self.emulator.shutdown_streams()
        if self._server is not None:
            self._server.should_exit = True
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)  # deliveries in flight stop first
        if self._serve_task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):  # best effort shutdown
                await self._serve_task
        self.emulator.store.close()
        self._server = self._serve_task = None


class EmulatorServer:
    """The Responses API emulator on 127.0.0.1: one deployment, or several (each on its own port).

    async:  ``async with EmulatorServer(port=0, time_scale=0.01) as emu: emu.base_url``
    sync:   ``emu = EmulatorServer(port=0).start_in_thread(); ...; emu.stop()``
    several: ``EmulatorServer(port=0, deployments={"ptu": {"rpm_limit": 60}, "payg": {}})``; then
            ``emu.deployment("payg").base_url``, ``emu.set_outage("ptu", "refuse", for_s=120)`` (thread mode) or
            ``await emu.deployment("ptu").set_outage("503")`` (on the server's loop), or over HTTP on any deployment:
            ``POST /v1/_emulator/deployments/ptu {"outage": "refuse", "for_s": 120}``.

    Keyword arguments other than host/port/config/deployments are EmulatorConfig fields (time_scale, db, seed, ...),
    shared by every deployment; a deployment's own settings override them. ``emu.emulator``, ``emu.port`` and the
    urls are the first (primary) deployment's, which gets ``port``; the others get their own ``port`` or a free one.
    With ``db``, the others persist to ``<db>.<name>``. ``webhook_secret`` is the primary's only: every other
    deployment signs with its own (its setting, or one generated), as separate resources do.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 7070,
        *,
        config: EmulatorConfig | None = None,
        log_level: str = "warning",
        deployments: Any = None,
        **overrides: Any,
    ):
        self.host = host
        self.requested_port = port
        self.config = config or EmulatorConfig()
        if overrides:
            self.config = EmulatorConfig.from_env({}, **{**self.config.as_dict(), **overrides})
        self.log_level = log_level
        self.deployments: dict[str, Deployment] = {}
        fleet = self._fleet_routes()
        shared = self.config.as_dict()  # what every deployment starts from (not the primary's own)
        for n, (name, settings) in enumerate(parse_deployments(deployments)):
            settings = dict(settings)
            dep_port = settings.pop("port", port if n == 0 else 0)
            if n == 0:
                if settings:
                    self.config = EmulatorConfig.from_env({}, **{**shared, **settings})
                cfg = self.config
            else:
                inherited = {**shared, "webhook_secret": "", "db": f"{shared['db']}.{name}" if shared["db"] else ""}
                cfg = EmulatorConfig.from_env({}, **{**inherited, **settings})
            self.deployments[name] = Deployment(name, host, int(dep_port), cfg, log_level, fleet)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # ---------------------------------------------------------------- deployments and urls
    @property
    def primary(self) -> Deployment:
        return next(iter(self.deployments.values()))

    def deployment(self, name: str) -> Deployment:
        try:
            return self.deployments[name]
        except KeyError:
            raise KeyError(f"no deployment {name!r}; there are {', '.join(self.deployments)}") from None

    @property
    def emulator(self) -> Emulator | None:
        return self.primary.emulator

    @property
    def port(self) -> int | None:
        return self.primary.port

    @property
    def root_url(self) -> str:
        return self.primary.root_url

    @property
    def base_url(self) -> str:
        return self.primary.base_url

    @property
    def azure_base_url(self) -> str:
        return self.primary.azure_base_url

    def set_outage(self, name: str, outage: str | None, for_s: float | None = None) -> dict[str, Any]:
        """Thread mode: take a deployment down (``refuse`` | ``503``) or up (None), from any other thread."""
        if self._loop is None:
            raise RuntimeError("set_outage() is for thread mode; on the loop, await deployment(name).set_outage()")
        dep = self.deployment(name)
        return asyncio.run_coroutine_threadsafe(dep.set_outage(outage, for_s), self._loop).result(30)

    # ---------------------------------------------------------------- async life cycle
    async def start(self) -> EmulatorServer:
        started: list[Deployment] = []
        try:
            for dep in self.deployments.values():
                await dep.start()
                started.append(dep)
        except BaseException:
            for dep in started:
                await dep.aclose()
            raise
        return self

    async def aclose(self) -> None:
        for dep in self.deployments.values():
            await dep.aclose()

    async def __aenter__(self) -> EmulatorServer:
        return await self.start()

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    # ---------------------------------------------------------------- fleet control (served by every deployment)
    def _fleet_routes(self) -> list[Route]:
        routes = []
        for p in PREFIXES:
            routes += [
                Route(f"{p}/_emulator/deployments", self._list_deployments, methods=["GET"]),
                Route(f"{p}/_emulator/deployments/{{name}}", self._get_deployment, methods=["GET"]),
                Route(f"{p}/_emulator/deployments/{{name}}", self._change_deployment, methods=["POST"]),
                Route(f"{p}/_emulator/deployments/{{name}}/config", self._deployment_config, methods=["GET", "POST"]),
            ]
        return routes

    async def _list_deployments(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [d.describe() for d in self.deployments.values()]})

    def _named(self, request: Request) -> Deployment | Response:
        name = request.path_params["name"]
        dep = self.deployments.get(name)
        if dep is None:
            return error_response(
                404, f"No deployment named '{name}'; there are: {', '.join(self.deployments)}.", param="name"
            )
        return dep

    async def _get_deployment(self, request: Request) -> Response:
        dep = self._named(request)
        return dep if isinstance(dep, Response) else JSONResponse(dep.describe())

    async def _change_deployment(self, request: Request) -> Response:
        """``{"outage": "refuse" | "503" | null, "for_s": seconds}``: down (for a while), or up again."""
        dep = self._named(request)
        if isinstance(dep, Response):
            return dep
        try:
            body = json.loads(await request.body() or b"null")
        except ValueError:
            body = None
        if not isinstance(body, dict) or "outage" not in body or set(body) - {"outage", "for_s"}:
            return error_response(
                400, 'Expected {"outage": "refuse" | "503" | null, "for_s"?: seconds}.', param="outage"
            )
        outage, for_s = body["outage"], body.get("for_s")
        if outage == "none":
            outage = None
        if outage not in (None, *OUTAGES):
            return error_response(
                400, f"Invalid 'outage': expected refuse, 503 or null, got {outage!r}.", param="outage"
            )
        if for_s is not None and (
            isinstance(for_s, bool) or not isinstance(for_s, (int, float)) or not 0 < for_s < 86_400 or outage is None
        ):
            return error_response(
                400, "Invalid 'for_s': expected seconds > 0 (and < 86400) with an outage.", param="for_s"
            )
        others_up = any(d.outage != "refuse" for d in self.deployments.values() if d is not dep)
        if outage == "refuse" and for_s is None and not others_up:
            return error_response(
                409,
                "Refusing connections on every deployment without 'for_s' would leave no "
                "port to bring one back through; give 'for_s'.",
                param="for_s",
            )
        if outage == "refuse" and request.scope.get("server", (None, None))[1] == dep.port:
            # this very connection is on the port that closes: answer first, then cut it
            dep.begin_outage(outage, for_s)
            return JSONResponse(dep.describe(), headers={"connection": "close"}, background=BackgroundTask(dep.settle))
        return JSONResponse(await dep.set_outage(outage, for_s))

    async def _deployment_config(self, request: Request) -> Response:
        """Another deployment's ``/_emulator/config`` (reachable while that one refuses connections)."""
        dep = self._named(request)
        if isinstance(dep, Response):
            return dep
        return (
            await dep.emulator.set_config(request)
            if request.method == "POST"
            else await dep.emulator.get_config(request)
        )

    # ---------------------------------------------------------------- thread life cycle
    def start_in_thread(self) -> EmulatorServer:
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.start())
            except BaseException as exc:  # noqa: BLE001
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
                for t in pending:
                    t.cancel()
                if pending:
                    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                loop.close()

        self._thread = threading.Thread(target=run, name="responses-emulator", daemon=True)
        self._thread.start()
        ready.wait(30)
        if failure:
            raise failure[0]
        return self

    def stop(self) -> None:
        if self._thread is None or self._loop is None:
            return
        fut = asyncio.run_coroutine_threadsafe(self.aclose(), self._loop)
        try:
            fut.result(timeout=15)
        except Exception:  # noqa: BLE001
            pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=15)
        self._thread = None
        self._loop = None

    def __enter__(self) -> EmulatorServer:
        return self.start_in_thread()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ---------------------------------------------------------------- foreground (CLI)
    def serve_forever(self, announce: Callable[[], None] | None = None) -> None:
        """Until SIGTERM or SIGINT, then a clean stop (every store flushed); ``announce`` runs once it listens."""

        async def main() -> None:
            await self.start()
            if announce is not None:
                announce()
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            try:
                await stop.wait()
            finally:
                await self.aclose()

        asyncio.run(main())
