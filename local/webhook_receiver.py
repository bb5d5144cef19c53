"""A small webhook receiver for local use: verifies Standard Webhooks signatures and prints events.

    python -m local.webhook_receiver --port 7072            # secrets from WEBHOOK_SIGNING_SECRETS

POST any path; the receiver answers 204 for a verified event (401 for a bad signature). For tests it
can misbehave on purpose, per URL query: `?fail=N` answers 500 to the first N attempts of each
webhook-id, `?status=410` always answers that status, `?redirect=URL` answers 302, `?hang=S` waits
S seconds before answering (only the first N attempts with `&hang_first=N`). `GET /_received` lists every request it got (verified or not).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import threading
import time
from collections import Counter
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from shared.webhooks import SignatureError, verify


def create_app(secrets: tuple[str, ...], *, quiet: bool = False) -> Starlette:
    received: list[dict[str, Any]] = []
    attempts: Counter = Counter()

    async def receive(request: Request) -> Response:
        body = await request.body()
        headers = {k.lower(): v for k, v in request.headers.items()}
        webhook_id = headers.get("webhook-id", "")
        attempts[webhook_id] += 1
        try:
            verify(headers, body, secrets)
            event, verified = json.loads(body), True
        except (SignatureError, ValueError):
            event, verified = None, False
        received.append({"path": request.url.path, "query": dict(request.query_params), "headers": headers,
                         "body": body.decode("utf-8", "replace"), "verified": verified, "at": time.time(),
                         "attempt": attempts[webhook_id]})
        query = request.query_params
        if "hang" in query and attempts[webhook_id] <= int(query.get("hang_first", "1000000")):
            await asyncio.sleep(float(query["hang"]))
        if "redirect" in query:
            return Response(status_code=302, headers={"Location": query["redirect"]})
        if "status" in query:
            return Response(status_code=int(query["status"]))
        if attempts[webhook_id] <= int(query.get("fail", "0")):
            return Response(status_code=500)
        if not verified:
            return JSONResponse({"error": "bad signature"}, status_code=401)
        if not quiet:
            data = event.get("data", {}) if isinstance(event, dict) else {}
            print(f"webhook {webhook_id}: {event.get('type')} run={data.get('id')} status={data.get('status')} "
                  f"text={str(data.get('output_text'))[:60]!r}", flush=True)
        return Response(status_code=204)

    async def listing(request: Request) -> Response:
        return JSONResponse(received)

    return Starlette(routes=[Route("/_received", listing, methods=["GET"]),
                             Route("/{path:path}", receive, methods=["POST"])])


class ReceiverThread:
    """The receiver on a loopback port in a background thread (tests)."""

    def __init__(self, secrets: tuple[str, ...], port: int) -> None:
        self.port = port
        config = uvicorn.Config(create_app(secrets, quiet=True), host="127.0.0.1", port=port, log_level="warning")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "ReceiverThread":
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=7072)
    args = parser.parse_args()
    secrets = tuple(os.environ.get("WEBHOOK_SIGNING_SECRETS", "").split())
    if not secrets:
        raise SystemExit("WEBHOOK_SIGNING_SECRETS is empty: nothing to verify with")
    print(f"webhook receiver on http://127.0.0.1:{args.port}/ (GET /_received lists deliveries)", flush=True)
    uvicorn.run(create_app(secrets), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
