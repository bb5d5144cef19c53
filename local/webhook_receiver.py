"""The one webhook receiver of the local stack (`make run`, the tests and the benchmarks). Dev-only.

    python -m local.webhook_receiver --port 7072            # secrets from WEBHOOK_SIGNING_SECRETS

It verifies Standard Webhooks signatures with `shared.webhooks.verify` (204 for a verified event, 401 for a
bad signature; without secrets nothing is verified and every request gets 204) and records every request it
gets, verified or not, before it answers: `receiver.requests` in the same process, `GET /_received` over HTTP.

It misbehaves on purpose, per URL query, so one receiver serves every test:
  `?fail=N`                  500 to the first N attempts of each webhook-id
  `?status=S`                always answers S (`&retry_after=7` adds that Retry-After header,
                             `&retry_after_in=120` an HTTP date 120 s ahead)
  `?redirect=URL`            302 to URL
  `?hang=S`                  waits S seconds (or until the receiver stops) before answering;
                             only the first N attempts of each webhook-id with `&hang_first=N`

`down()` closes the port (connection refused) and `up()` opens it again on the same port; the records belong
to the object, so an outage loses none. It runs in a thread of its own (`up()`/`down()`, or `with`), or inside
the caller's event loop (`await start()`/`await stop()`, or `async with`), over plain HTTP or TLS.
"""

from __future__ import annotations

import argparse
import asyncio
import email.utils
import json
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from shared.webhooks import SignatureError, verify

# Stops a hanging answer early when the receiver stops, so shutting down never waits for a `hang`.
_STOP_WAIT_SECONDS = 2.0


@dataclass
class Received:
    """One request as the receiver got it. `status` is what it answered (None while it hangs)."""

    path: str
    query: dict[str, str]
    headers: CIMultiDict  # case-insensitive: `headers["Host"]` and `headers["webhook-id"]` both work
    body: bytes
    verified: bool | None  # None when the receiver has no secrets to verify with
    at: float
    attempt: int  # 1 for the first request with this webhook-id, 2 for the next, ...
    status: int | None = None

    @property
    def webhook_id(self) -> str | None:
        return self.headers.get("webhook-id")

    def event(self) -> dict[str, Any] | None:
        try:
            event = json.loads(self.body)
        except ValueError:
            return None
        return event if isinstance(event, dict) else None

    def as_dict(self) -> dict[str, Any]:
        """The JSON shape of `GET /_received` (body as text, header names in lower case)."""
        data = (self.event() or {}).get("data")
        data = data if isinstance(data, dict) else {}
        return {
            "path": self.path,
            "query": self.query,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "body": self.body.decode("utf-8", "replace"),
            "verified": self.verified,
            "at": self.at,
            "attempt": self.attempt,
            "status": self.status,
            "webhook_id": self.webhook_id,
            "run_id": data.get("id"),
            "run_status": data.get("status"),
        }


class WebhookReceiver:
    def __init__(
        self,
        secrets: tuple[str, ...] | list[str] = (),
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        ssl_context=None,
        echo: Callable[[str], None] | None = None,
    ) -> None:
        self.secrets = tuple(secrets)
        self.host = host
        self.port = port  # 0: a free port, chosen at the first start and kept for every later one
        self.ssl_context = ssl_context
        self.echo = echo  # called with one line per verified event (make run prints them)
        self.requests: list[Received] = []
        self._attempts: Counter = Counter()
        self._lock = threading.Lock()
        self._runner: web.AppRunner | None = None
        self._stopping: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"

    # -- what was received -------------------------------------------------------------------------------------
    def paths(self) -> list[str]:
        with self._lock:
            return [r.path for r in self.requests]

    def snapshot(self) -> list[dict[str, Any]]:
        """Every request so far, as JSON-shaped dicts (see `Received.as_dict`)."""
        with self._lock:
            return [r.as_dict() for r in self.requests]

    def for_path(self, path: str) -> list[dict[str, Any]]:
        return [r for r in self.snapshot() if r["path"] == path]

    # -- answering -----------------------------------------------------------------------------------------------
    def _record(self, request: web.Request, body: bytes) -> Received:
        headers = CIMultiDict(request.headers)
        verified = None
        if self.secrets:
            try:
                verify(headers, body, self.secrets)
                verified = True
            except (SignatureError, ValueError):
                verified = False
        with self._lock:
            webhook_id = headers.get("webhook-id", "")
            self._attempts[webhook_id] += 1
            received = Received(
                request.path, dict(request.query), headers, body, verified, time.time(), self._attempts[webhook_id]
            )
            self.requests.append(received)
        return received

    async def _hang(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except TimeoutError:
            pass

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.method == "GET" and request.path == "/_received":
            return web.json_response(self.snapshot())
        received = self._record(request, await request.read())
        response = await self._answer(received)
        received.status = response.status
        if received.verified and self.echo and response.status == 204:
            self.echo(_describe(received))
        return response

    async def _answer(self, received: Received) -> web.Response:
        query = received.query
        if "hang" in query and received.attempt <= int(query.get("hang_first", "1000000")):
            await self._hang(float(query["hang"]))
        if "redirect" in query:
            return web.Response(status=302, headers={"Location": query["redirect"]})
        if "status" in query:
            return web.Response(status=int(query["status"]), headers=_retry_after(query))
        if received.attempt <= int(query.get("fail", "0")):
            return web.Response(status=500)
        if received.verified is False:
            return web.json_response({"error": "bad signature"}, status=401)
        return web.Response(status=204)

    # -- in the caller's event loop -----------------------------------------------------------------------------
    async def start(self) -> WebhookReceiver:
        self._stopping = asyncio.Event()
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=_STOP_WAIT_SECONDS)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, ssl_context=self.ssl_context)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self.port = runner.addresses[0][1]
        self._runner = runner
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            self._stopping.set()  # hanging answers end now
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> WebhookReceiver:
        return await self.start()

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    # -- in a thread of its own ---------------------------------------------------------------------------------
    def up(self, timeout: float = 10.0) -> WebhookReceiver:
        """Open the port (again) in a background thread; the records are kept across down()/up()."""
        if self._thread is not None:
            return self
        ready, failure = threading.Event(), []

        def serve() -> None:
            loop = asyncio.new_event_loop()
            try:
                loop.run_until_complete(self.start())
            except BaseException as error:  # noqa: BLE001 - handed to the caller of up()
                failure.append(error)
                ready.set()
                loop.close()
                return
            self._loop = loop
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self.stop())
            loop.close()

        self._thread = threading.Thread(target=serve, name=f"webhook-receiver-{self.port}", daemon=True)
        self._thread.start()
        if not ready.wait(timeout) or failure:
            self._thread = None
            raise RuntimeError(f"webhook receiver did not start on {self.host}:{self.port}") from (
                failure[0] if failure else None
            )
        return self

    def down(self) -> None:
        """Close the port: senders get connection refused until up()."""
        if self._thread is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(_STOP_WAIT_SECONDS + 10)
        self._thread, self._loop = None, None

    def __enter__(self) -> WebhookReceiver:
        return self.up()

    def __exit__(self, *exc: Any) -> None:
        self.down()


def _retry_after(query: dict[str, str]) -> dict[str, str]:
    if "retry_after" in query:
        return {"Retry-After": query["retry_after"]}
    if "retry_after_in" in query:
        return {"Retry-After": email.utils.formatdate(time.time() + float(query["retry_after_in"]), usegmt=True)}
    return {}


def _describe(received: Received) -> str:
    event = received.event() or {}
    data = event.get("data") if isinstance(event.get("data"), dict) else {}
    return (
        f"webhook {received.webhook_id}: {event.get('type')} run={data.get('id')} status={data.get('status')} "
        f"text={str(data.get('output_text'))[:60]!r}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=7072)
    args = parser.parse_args()
    secrets = tuple(os.environ.get("WEBHOOK_SIGNING_SECRETS", "").split())
    if not secrets:
        raise SystemExit("WEBHOOK_SIGNING_SECRETS is empty: nothing to verify with")
    receiver = WebhookReceiver(secrets, port=args.port, echo=lambda line: print(line, flush=True))
    print(f"webhook receiver on {receiver.url}/ (GET /_received lists deliveries)", file=sys.stderr, flush=True)

    async def forever() -> None:
        async with receiver:
            await asyncio.Event().wait()

    try:
        asyncio.run(forever())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
