"""A real HTTP(S) webhook receiver on loopback, plus signing secrets and TLS material for tests."""
from __future__ import annotations

import asyncio
import base64
import datetime as dt
import email.utils
import os
import ssl
from dataclasses import dataclass, field

import pytest
from aiohttp import web


def make_secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    port: int = 0
    requests: list[Seen] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def paths(self) -> list[str]:
        return [r.path for r in self.requests]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.requests.append(Seen(request.path, dict(request.headers), body))
        path = request.path
        if path.startswith("/status/"):
            return web.Response(status=int(path.rsplit("/", 1)[1]))
        if path == "/redirect":
            return web.Response(status=302, headers={"Location": "/target"})
        if path == "/throttle":
            return web.Response(status=429, headers={"Retry-After": "7"})
        if path == "/unavailable":
            later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=120)
            return web.Response(status=503, headers={"Retry-After": email.utils.format_datetime(later, usegmt=True)})
        if path == "/hang":
            await self.release.wait()
        return web.Response(status=204)


async def start_receiver(ssl_context: ssl.SSLContext | None = None):
    receiver = Receiver()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", receiver.handle)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    receiver.port = runner.addresses[0][1]
    return receiver, runner


@pytest.fixture
async def receiver():
    rec, runner = await start_receiver()
    yield rec
    rec.release.set()
    await runner.cleanup()


@pytest.fixture
def secrets_pair() -> tuple[str, str]:
    return make_secret(), make_secret()


def fixed_resolver(mapping: dict[str, list[str]], calls: list[str] | None = None):
    """A resolver for tests: host -> addresses, recording each lookup."""
    async def resolve(host: str, port: int) -> list[str]:
        if calls is not None:
            calls.append(host)
        return mapping[host]
    return resolve
