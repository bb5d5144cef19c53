"""Run the emulator: in-process (async context manager or a background thread) or from the CLI."""
from __future__ import annotations

import asyncio
import logging
import signal
import socket
import sys
import threading
from typing import Any

import uvicorn

from .app import Emulator
from .config import EmulatorConfig

_SWEEP_EVERY_S = 5.0
_FLUSH_EVERY_S = 0.5


class _QuietCut(logging.Filter):
    """A deliberate stream cut makes uvicorn log an error; it is expected here, so drop that line."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return "returned without completing response" not in msg


logging.getLogger("uvicorn.error").addFilter(_QuietCut())


class EmulatorServer:
    """The Responses API emulator on 127.0.0.1.

    async:  ``async with EmulatorServer(port=0, time_scale=0.01) as emu: emu.base_url``
    sync:   ``emu = EmulatorServer(port=0).start_in_thread(); ...; emu.stop()``

    Keyword arguments other than host/port/config are EmulatorConfig fields (time_scale, db, seed, ...).
    ``emu.emulator`` is the live core (config, store, stats) for white-box checks.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 7070, *, config: EmulatorConfig | None = None,
                 log_level: str = "warning", **overrides: Any):
        self.host = host
        self.requested_port = port
        self.config = config or EmulatorConfig()
        if overrides:
            self.config = EmulatorConfig.from_env({}, **{**self.config.as_dict(), **overrides})
        self.log_level = log_level
        self.emulator: Emulator | None = None
        self.port: int | None = None
        self._server: uvicorn.Server | None = None
        self._serve_task: asyncio.Task | None = None
        self._tasks: list[asyncio.Task] = []
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # ---------------------------------------------------------------- urls
    @property
    def root_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.root_url}/v1"

    @property
    def azure_base_url(self) -> str:
        return f"{self.root_url}/openai/v1"

    # ---------------------------------------------------------------- async life cycle
    async def start(self) -> "EmulatorServer":
        self.emulator = Emulator(self.config)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.requested_port))
        sock.listen(4096)
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        uv_config = uvicorn.Config(
            self.emulator.app, log_level=self.log_level, access_log=False, lifespan="off",
            timeout_keep_alive=30, timeout_graceful_shutdown=3, backlog=4096, http="h11", loop="asyncio",
        )
        self._server = uvicorn.Server(uv_config)
        self._serve_task = asyncio.create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:
            if self._serve_task.done():
                self._serve_task.result()
                raise RuntimeError("emulator failed to start")
            await asyncio.sleep(0.01)
        self._tasks = [asyncio.create_task(self._housekeeping()),
                       asyncio.create_task(self.emulator.webhooks.run())]
        return self

    async def _housekeeping(self) -> None:
        emu = self.emulator
        assert emu is not None
        ticks = 0
        while True:
            await asyncio.sleep(_FLUSH_EVERY_S)
            ticks += 1
            emu.store.flush()
            if ticks * _FLUSH_EVERY_S >= _SWEEP_EVERY_S:
                ticks = 0
                emu.sweep()

    async def aclose(self) -> None:
        if self._server is None:
            return
        assert self.emulator is not None
        self.emulator.shutdown_streams()
        self._server.should_exit = True
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)   # deliveries in flight stop first
        if self._serve_task is not None:
            try:
                await self._serve_task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - best effort shutdown
                pass
        self.emulator.store.close()
        self._server = None

    async def __aenter__(self) -> "EmulatorServer":
        return await self.start()

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    # ---------------------------------------------------------------- thread life cycle
    def start_in_thread(self) -> "EmulatorServer":
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

    def __enter__(self) -> "EmulatorServer":
        return self.start_in_thread()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ---------------------------------------------------------------- foreground (CLI)
    def serve_forever(self) -> None:
        async def main() -> None:
            await self.start()
            assert self._serve_task is not None
            try:
                await self._serve_task
            finally:
                for t in self._tasks:
                    t.cancel()
                await asyncio.gather(*self._tasks, return_exceptions=True)
                assert self.emulator is not None
                self.emulator.store.close()

        # uvicorn shuts down gracefully on SIGTERM and then re-raises the signal; with the default handler
        # that kills the process before the store's last flush, so make it an ordinary exit instead.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        asyncio.run(main())
