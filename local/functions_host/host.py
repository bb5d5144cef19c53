"""The local Functions host: loads the app, serves HTTP, polls queues, fires timers, all on ONE event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import uvicorn

from .errors import StartupError
from .http import HttpFrontend, Keys, new_status
from .invoker import Invoker
from .loader import LoadedApp, load_app
from .queues import QueueListener, make_service_client, validate_queue_name
from .settings import (
    HTTP_CONCURRENCY,
    HostConfig,
    check_init_indexing,
    http_concurrency,
    load_host_json,
    load_local_settings,
    resolve_expression,
)
from .timers import TimerListener, parse_schedule

log = logging.getLogger("functions_host")


@dataclass
class HostOptions:
    app_dir: Path
    host: str = "127.0.0.1"
    port: int = 7071
    grace_seconds: float | None = None  # None -> FUNCTIONS_HOST_GRACE_SECONDS or 30
    master_key: str | None = None
    function_keys: list[str] = field(default_factory=list)
    http_concurrency: int | None = None  # None -> FUNCTIONS_HOST_HTTP_PER_INSTANCE_CONCURRENCY or unlimited


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the host owns SIGINT/SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield


class FunctionsHost:
    def __init__(self, options: HostOptions) -> None:
        self.options = options
        self.app_dir = options.app_dir.resolve()
        self.config: HostConfig | None = None
        self.loaded: LoadedApp | None = None
        self.queue_listeners: list[QueueListener] = []
        self.timer_listeners: list[TimerListener] = []
        self._queue_plans: list[tuple] = []
        self._timer_plans: list[tuple] = []
        self._stop = None
        self.status: dict = {}
        self.grace = 30.0
        self.http_concurrency: int | None = None

    # -- start-up (synchronous part: everything the worker/host would refuse) ---------------------------
    def load(self) -> None:
        applied = load_local_settings(self.app_dir)
        for name in applied["skipped"]:
            log.info(
                "Skipping '%s' from local.settings.json as it's already defined in current environment variables.", name
            )
        self.config = load_host_json(self.app_dir)
        grace = self.options.grace_seconds
        if grace is None:
            grace = float(os.environ.get("FUNCTIONS_HOST_GRACE_SECONDS") or 30)
        self.grace = grace
        self.loaded = load_app(self.app_dir)
        for line in self.loaded.skipped:
            log.warning("Function skipped: %s", line)
        if not self.loaded.functions:
            log.warning("No job functions found.")
        self.keys = Keys.parse(
            self.options.master_key or os.environ.get("FUNCTIONS_HOST_MASTER_KEY"),
            os.environ.get("FUNCTIONS_HOST_FUNCTION_KEYS"),
            self.options.function_keys,
        )
        # Resolve %NAME% expressions and validate every trigger before anything starts.
        for spec in self.loaded.functions:
            if spec.trigger_type == "queueTrigger":
                name = resolve_expression(spec.trigger.queue_name, what=f"Function {spec.name} queue name")
                validate_queue_name(name, spec.name)
                spec.settings["queue_name"] = name
                self._queue_plans.append((spec, name, spec.trigger.connection or "AzureWebJobsStorage"))
            elif spec.trigger_type == "timerTrigger":
                expr = resolve_expression(spec.trigger.schedule, what=f"Function {spec.name} schedule")
                try:
                    schedule = parse_schedule(expr)
                except StartupError as exc:
                    raise StartupError(f"Function {spec.name}: {exc}") from None
                spec.settings["schedule"] = expr
                self._timer_plans.append((spec, schedule, bool(spec.trigger.run_on_startup)))
        check_init_indexing(self.loaded.http_v2)
        self.http_concurrency = http_concurrency(
            self.options.http_concurrency
            if self.options.http_concurrency is not None
            else os.environ.get(HTTP_CONCURRENCY)
        )

    # -- run ------------------------------------------------------------------------------------------
    async def run(self, *, install_signal_handlers: bool = True) -> int:
        assert self.loaded is not None and self.config is not None
        loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        if install_signal_handlers:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, self.request_stop, sig)
        self.invoker = Invoker(function_timeout=self.config.function_timeout)
        self.status = new_status(self.loaded.functions)
        frontend = HttpFrontend(
            functions=self.loaded.functions,
            route_prefix=self.config.route_prefix,
            keys=self.keys,
            invoker=self.invoker,
            http_v2=self.loaded.http_v2,
            status=self.status,
            concurrency=self.http_concurrency,
        )
        self.frontend = frontend

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.options.host, self.options.port))
        except OSError as exc:
            raise StartupError(f"Port {self.options.port} on {self.options.host} is unavailable: {exc}") from None
        config = uvicorn.Config(
            frontend,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=self.grace,
            timeout_keep_alive=5,
        )
        server = _Server(config)
        server_task = asyncio.create_task(server.serve(sockets=[sock]), name="http-server")

        # Queue and timer listeners.
        try:
            for spec, queue_name, connection in self._queue_plans:
                service, credential = make_service_client(connection)
                listener = QueueListener(
                    spec, queue_name, connection, self.config.queues, self.invoker, service, credential
                )
                await listener.start()
                self.queue_listeners.append(listener)
        except StartupError:
            server.should_exit = True
            await server_task
            raise
        for spec, schedule, on_startup in self._timer_plans:
            self.timer_listeners.append(TimerListener(spec, schedule, on_startup, self.invoker))

        while not server.started:
            if server_task.done():
                await server_task
                raise StartupError("The HTTP server did not start")
            await asyncio.sleep(0.01)
        self._log_functions(frontend)
        self.status["state"] = "Running"
        log.info(
            "Host started (local Functions host, app %s, http://%s:%d)",
            self.app_dir,
            self.options.host,
            self.options.port,
        )
        for t in self.timer_listeners:
            t.start()

        await self._stop.wait()

        # -- graceful stop ----------------------------------------------------------------------------
        self.status["state"] = "Stopping"
        deadline = time.monotonic() + self.grace
        log.info(
            "Stopping host: no new messages, timer occurrences or requests; waiting up to %gs for %d "
            "running invocation(s).",
            self.grace,
            self.invoker.active,
        )
        for listener in [*self.queue_listeners, *self.timer_listeners]:
            listener.stop_polling()
        frontend.accepting = False
        server.should_exit = True
        await asyncio.gather(
            *(listener.wait_polling_stopped() for listener in [*self.queue_listeners, *self.timer_listeners])
        )
        remaining = max(deadline - time.monotonic(), 0)
        try:
            await asyncio.wait_for(self.invoker.wait_idle(), remaining)
        except TimeoutError:
            n = self.invoker.cancel_all()
            log.error(
                "Grace period of %gs exceeded: cancelling %d invocation(s); their queue messages are "
                "released (visible again after visibilityTimeout).",
                self.grace,
                n,
            )
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.invoker.wait_idle(), 2)
        # Let queue completion (delete/release) finish.
        pending = [t for listener in self.queue_listeners for t in list(listener.inflight)]
        if pending:
            await asyncio.wait(pending, timeout=5)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(server_task, max(deadline - time.monotonic(), 0) + 1)
        for listener in self.queue_listeners:
            with contextlib.suppress(Exception):
                await listener.close()
        self.invoker.shutdown()
        self.status["state"] = "Stopped"
        log.info("Host stopped.")
        return 0

    def request_stop(self, sig=None) -> None:
        if self._stop is None:
            return
        if self._stop.is_set():
            if sig == signal.SIGINT:
                log.error("Second Ctrl+C: exiting now; unfinished queue messages reappear after their lease.")
                logging.shutdown()
                os._exit(130)
            log.info("Stop already in progress.")
            return
        log.info("Received %s: stopping.", signal.Signals(sig).name if sig else "stop request")
        self._stop.set()

    def _log_functions(self, frontend: HttpFrontend) -> None:
        base = f"http://{self.options.host}:{self.options.port}"
        lines = ["", "Functions:", ""]
        fns = []
        for r in frontend.routes:
            url = frontend.url_for(r, base)
            lines.append(f"        {r.spec.name}: [{','.join(r.methods)}] {url}  (authLevel={r.auth_level})")
            fns.append({"name": r.spec.name, "trigger": "httpTrigger", "route": url})
        for spec in self.loaded.functions:
            if spec.trigger_type == "queueTrigger":
                lines.append(f"        {spec.name}: queueTrigger ({spec.settings['queue_name']})")
                fns.append({"name": spec.name, "trigger": "queueTrigger"})
            elif spec.trigger_type == "timerTrigger":
                lines.append(f"        {spec.name}: timerTrigger ({spec.settings['schedule']})")
                fns.append({"name": spec.name, "trigger": "timerTrigger"})
        self.status["_functions"] = fns
        log.info("%s\n", "\n".join(lines))
        style = (
            "FastAPI types (azurefunctions-extensions-http-fastapi)"
            if self.loaded.http_v2
            else "func.HttpRequest/HttpResponse"
        )
        if frontend.routes:
            log.info(
                "HTTP style: %s; keys %s; per-instance concurrency %s.",
                style,
                "ENFORCED" if self.keys.enforced else "not required (none configured)",
                self.http_concurrency or "unlimited",
            )
