"""Streaming runs over SSE with a continuation token on every event and exact resume.

Our event ids are the provider's sequence numbers, so "resume after N" is the provider's own
`retrieve(stream=True, starting_after=N)`: nothing missed, nothing repeated. The relay reads the
provider through a queue so it can reconnect after a provider drop (from the last sequence number it
saw, invisible to the client), send keep-alive comments while idle, and end cleanly before the
front end's ~230 s cut with a `reconnect` event. Where the provider cannot stream the response
(it was not created streaming, retention passed, a backend refuses) the relay falls back to the
stored run and still ends with the final run. At the terminal event the relay finishes the run
itself (the same idempotent step the poller uses), so the final event carries the stored run.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, AsyncIterator

import openai
from fastapi import Request
from fastapi.responses import StreamingResponse

from .errors import bad_request
from .lifecycle import result_from_response
from .provider import classify
from .run_requests import RunRequest
from .runs import Run

log = logging.getLogger("runs.streaming")

TERMINAL_EVENTS = {"response.completed", "response.failed", "response.incomplete"}
# Statuses whose provider stream ends with one of TERMINAL_EVENTS (cancel and expiry have none).
PROVIDER_FINAL_STATUSES = {"completed", "failed", "incomplete", "requires_action"}
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
MAX_RECONNECTS_WITHOUT_PROGRESS = 5
_END = object()


class ProviderCannotStream(Exception):
    """The provider refused to stream this response (not created streaming, too old, unknown)."""


def sse(event: str, data: dict[str, Any], event_id: int | None = None) -> bytes:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, separators=(',', ':'), ensure_ascii=False)}\n\n".encode()


def _event_name(provider_type: str) -> str:
    return provider_type.removeprefix("response.")


class Relay:
    """One client's stream of one run, from position `after` (exclusive)."""

    def __init__(self, ctx, run: Run, after: int, first_stream=None) -> None:
        self.ctx = ctx
        self.service = ctx.service
        self.run = run
        self.after = after
        self.after_at_start = after
        self._first_stream = first_stream  # the create call's own stream, for a fresh streaming start
        self._queue: asyncio.Queue = asyncio.Queue(maxsize=256)

    def token(self, position: int) -> str:
        return self.service.tokens.encode(self.run.id, position)

    async def events(self) -> AsyncIterator[bytes]:
        settings = self.ctx.settings
        started = time.monotonic()
        producer = asyncio.create_task(self._produce())
        try:
            yield b"retry: 1000\n\n"
            while True:
                remaining = settings.stream_max_seconds - (time.monotonic() - started)
                if remaining <= 0:
                    yield sse("reconnect", {"type": "reconnect", "run_id": self.run.id,
                                            "continuation_token": self.token(self.after),
                                            "reason": "maximum stream duration reached"})
                    return
                try:
                    item = await asyncio.wait_for(self._queue.get(),
                                                  timeout=min(settings.stream_keepalive_seconds, remaining))
                except asyncio.TimeoutError:
                    if time.monotonic() - started < settings.stream_max_seconds:
                        yield b": keep-alive\n\n"
                    continue
                if item is _END:  # resumed after the final event: say so, so no client waits for more
                    yield sse("end", {"type": "end", "run_id": self.run.id, "continuation_token": self.token(self.after),
                                      "reason": "the run has ended and every event was already delivered"})
                    return
                if isinstance(item, BaseException):
                    raise item
                chunk = await self._translate(item)
                if chunk is not None:
                    yield chunk
                if getattr(item, "type", None) in TERMINAL_EVENTS or isinstance(item, Run):
                    return
        finally:
            producer.cancel()
            await asyncio.gather(producer, return_exceptions=True)

    # -- producing: the provider's stream, reconnected; or the stored run ------------------------------
    async def _produce(self) -> None:
        try:
            if self.run.response_id:
                try:
                    await self._produce_from_provider()
                    return
                except ProviderCannotStream as reason:
                    log.info("run %s: provider cannot stream (%s); using the stored run", self.run.id, reason)
            await self._queue.put(await self._wait_for_stored_end())
        except asyncio.CancelledError:
            raise
        except BaseException as error:  # noqa: BLE001 - handed to the consumer
            await self._queue.put(error)

    async def _produce_from_provider(self) -> None:
        provider = self.service.provider
        failures, position = 0, self.after
        stream = self._first_stream
        while True:
            try:
                if stream is None:
                    kwargs = {"starting_after": position} if position >= 0 else {}
                    stream = await provider.responses.retrieve(self.run.response_id, stream=True, **kwargs)
                async with stream:
                    async for event in stream:
                        seq = getattr(event, "sequence_number", None)
                        if seq is None or seq <= position:
                            continue
                        position, failures = seq, 0
                        await self._queue.put(event)
                        if event.type in TERMINAL_EVENTS:
                            return
                stream = None
                # A clean end without a terminal event: the run may have been cancelled; look at it.
                run = await self.service.store.get(self.run.id)
                if run is not None and run.is_terminal:
                    if run.status in PROVIDER_FINAL_STATUSES and position == self.after_at_start:
                        await self._queue.put(_END)  # resumed after the final event: nothing is missing
                    else:
                        await self._queue.put(run)  # cancelled or expired: no provider final; send ours
                    return
            except openai.APIStatusError as error:
                stream = None
                failure = classify(error)
                if not failure.transient:
                    raise ProviderCannotStream(f"{failure.status}: {failure.message}") from None
            except (openai.APIConnectionError, openai.APITimeoutError, ValueError) as error:
                # ValueError: the SDK could not parse a cut event; treat it like a dropped connection.
                stream = None
                log.info("run %s: provider stream dropped after %s (%s); reconnecting", self.run.id, position,
                         type(error).__name__)
            failures += 1
            if failures > MAX_RECONNECTS_WITHOUT_PROGRESS:
                raise ProviderCannotStream("provider stream keeps failing")
            await asyncio.sleep(min(0.2 * 2 ** failures, 5.0))

    async def _wait_for_stored_end(self) -> Run:
        """Fallback: wait for the poller to finish the run, then hand over the stored run."""
        delay = 0.5
        while True:
            run = await self.service.store.get(self.run.id)
            if run is not None and run.is_terminal:
                return run
            await self._queue.put(("status", run.status if run else "unknown"))
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, self.ctx.settings.poll_max_delay)

    # -- translating provider events into ours ------------------------------------------------------------
    async def _translate(self, item: Any) -> bytes | None:
        if isinstance(item, tuple):  # fallback status heartbeat: no id, it is not a position
            return sse("run.status", {"type": "run.status", "run_id": self.run.id, "status": item[1],
                                      "continuation_token": self.token(self.after)})
        if isinstance(item, Run):  # fallback end: the stored final run
            position = self.after + 1
            self.after = position
            return self._final(item, position)
        seq, kind = item.sequence_number, item.type
        self.after = seq
        if kind == "keepalive":
            return b": keep-alive\n\n"
        if kind in TERMINAL_EVENTS:
            run = await self._finish(item)
            return self._final(run, seq)
        data: dict[str, Any] = {"type": _event_name(kind), "sequence_number": seq, "run_id": self.run.id,
                                "continuation_token": self.token(seq)}
        if kind == "response.created":
            data["run"] = self.service.view(self.run)
            return sse("run.created", {**data, "type": "run.created"}, seq)
        if kind in ("response.queued", "response.in_progress"):
            data["status"] = kind.removeprefix("response.")
            return sse("run.status", {**data, "type": "run.status"}, seq)
        payload = item.model_dump(mode="json", exclude={"type", "sequence_number"}) if hasattr(item, "model_dump") else {}
        data.update({k: v for k, v in payload.items() if k not in ("obfuscation", "logprobs")})
        return sse(data["type"], data, seq)

    async def _finish(self, event: Any) -> Run:
        run = await self.service.store.get(self.run.id) or self.run
        status, result = result_from_response(event.response)
        return await self.service.lifecycle.finish(run, status, result)

    def _final(self, run: Run, position: int) -> bytes:
        kind = f"run.{run.status}"
        return sse(kind, {"type": kind, "sequence_number": position, "run_id": run.id,
                          "run": self.service.view(run), "continuation_token": self.token(position)}, position)


def _streaming_response(relay: Relay, status_code: int = 200) -> StreamingResponse:
    return StreamingResponse(relay.events(), status_code=status_code, media_type="text/event-stream",
                             headers={**SSE_HEADERS, "Location": f"/api/runs/{relay.run.id}"})


async def start_stream(ctx, request: RunRequest, *, idempotency_key: str | None) -> StreamingResponse:
    """POST /api/runs with stream=true: start a background, streaming run and relay it at once."""
    outcome = await ctx.service.start(request, idempotency_key=idempotency_key)
    return _streaming_response(Relay(ctx, outcome.run, -1, first_stream=outcome.provider_stream))


def _position(req: Request, run_id: str, tokens) -> int:
    """Where to resume. A Last-Event-ID header wins: browsers send it only on their own reconnects, and
    it is newer than any ?continuation_token or ?starting_after left in the EventSource URL."""
    header = req.headers.get("last-event-id")
    if header:
        return _sequence_number("Last-Event-ID", header)
    token = req.query_params.get("continuation_token")
    if token:
        claims = tokens.decode(token)
        if claims.run_id != run_id:
            raise bad_request("The continuation token belongs to another run.", param="continuation_token",
                              code="invalid_token")
        return claims.position
    raw = req.query_params.get("starting_after")
    return _sequence_number("starting_after", raw) if raw else -1


def _sequence_number(name: str, raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise bad_request(f"'{name}' must be an integer sequence number.", param=name) from None
    if value < -1:
        raise bad_request(f"'{name}' must be -1 or more.", param=name)
    return value


async def resume_stream_from_token(ctx, token: str) -> StreamingResponse:
    """POST /api/runs {"continuation_token", "stream": true}: the stream right after the token's position."""
    claims = ctx.service.tokens.decode(token)
    run = await ctx.service.get(claims.run_id)
    return _streaming_response(Relay(ctx, run, claims.position))


async def resume_stream(ctx, run_id: str, req: Request) -> StreamingResponse:
    """GET /api/runs/{id}/stream: the run's events after the given position (or from the start)."""
    run = await ctx.service.get(run_id)
    after = _position(req, run_id, ctx.service.tokens)
    return _streaming_response(Relay(ctx, run, after))


__all__ = ["start_stream", "resume_stream", "resume_stream_from_token", "Relay", "sse"]
