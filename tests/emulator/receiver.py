"""A recording webhook receiver for the emulator tests (real HTTP on a free loopback port, own thread).

It keeps the raw body bytes and headers of every POST so tests verify them with the openai SDK's own
``client.webhooks.unwrap`` / ``verify_signature``. Misbehaviour per URL query: ``?fail=N`` answers 500 to the
first N attempts of each webhook-id, ``?status=S`` always answers S, ``?hang=S`` sleeps S seconds first.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


@dataclass
class Delivery:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float
    answered: int


class Receiver:
    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        self._attempts: Counter = Counter()
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        app = Starlette(routes=[Route("/{path:path}", self._receive, methods=["POST"])])
        self._server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True)

    def url(self, path: str = "hook", **query: object) -> str:
        qs = "&".join(f"{k}={v}" for k, v in query.items())
        return f"http://127.0.0.1:{self.port}/{path}" + (f"?{qs}" if qs else "")

    async def _receive(self, request: Request) -> Response:
        body = await request.body()
        headers = {k.lower(): v for k, v in request.headers.items()}
        q = request.query_params
        self._attempts[headers.get("webhook-id")] += 1
        if "hang" in q:
            await asyncio.sleep(float(q["hang"]))
        status = 204
        if "status" in q:
            status = int(q["status"])
        elif self._attempts[headers.get("webhook-id")] <= int(q.get("fail", 0)):
            status = 500
        self.deliveries.append(Delivery(request.url.path, headers, body, time.time(), status))
        return Response(status_code=status)

    def for_response(self, resp_id: str, path: str | None = None) -> list[Delivery]:
        return [d for d in self.deliveries if resp_id.encode() in d.body and (path is None or d.path == "/" + path)]

    def wait_for(self, predicate, timeout: float = 20.0) -> list[Delivery]:
        end = time.monotonic() + timeout
        while not predicate(self.deliveries):
            assert time.monotonic() < end, f"timed out; got {len(self.deliveries)} deliveries"
            time.sleep(0.01)
        return self.deliveries

    def start(self) -> Receiver:
        self._thread.start()
        while not self._server.started:
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(10)
