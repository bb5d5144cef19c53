"""A run's events as SSE, with a continuation token on every event and exact resume.

Our event ids are the provider's sequence numbers, so "resume after N" is the provider's own
`starting_after=N`: nothing missed, nothing repeated. The relay reads the provider through a queue (a
StreamFollower: it reconnects after a provider drop from the last sequence number it saw, invisible to the
client), so it can send keep-alive comments while idle, and end cleanly before the front end's ~230 s cut with a
`reconnect` event.
A run queued for provider capacity (runs.admission) is shown waiting (`run.status` events, keep-alives) until the
provider takes it; then its stream is followed from the first event. Where the provider cannot stream the
response (it was not created streaming, retention passed, a backend refuses) the relay falls back to the stored
run and still ends with the final run. A provider that is only unreachable for now (a deployment's outage) is
waited for instead, across `reconnect`s, so the stream stays exact (see UNREACHABLE_AFTER_END_SECONDS). At the
provider's terminal event the relay ends the run itself (runs.ending, as the poll chain does), so the final event
carries the stored run.

A run that ends without a provider terminal event (cancelled, expired, or served from the stored run) gets a
final event of our own with the id FINAL_EVENT_ID, above any provider sequence number: resuming after it, as
after any final event, gives the single `end` event.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncGenerator
from typing import Any, Protocol

from .. import clock, telemetry
from ..provider import ProviderError, RunBackend
from ..provider.backend import EventStream
from ..responses_vocabulary import STREAMED_END_STATUSES, is_terminal_event
from .ending import ProviderEnded, RunEnding
from .model import Run
from .store import RunStore
from .stream_following import RECONNECT_BACKOFF, StreamFollower
from .views import RunViews

log = logging.getLogger("bgruns.relay")

FINAL_EVENT_ID = 2**31 - 1
# A provider whose stream keeps failing (transiently) is waited for, connection after connection (`reconnect`), while
# the run goes on and this long after it ended; then the stored run ends the stream, with whatever gap it leaves.
UNREACHABLE_AFTER_END_SECONDS = 300.0
KEEPALIVE = b": keep-alive\n\n"
_END = object()


class ProviderCannotStream(Exception):
    """The provider refused to stream this response (not created streaming, too old, unknown)."""


def sse(event: str, data: dict[str, Any], event_id: int | None = None) -> bytes:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, separators=(',', ':'), ensure_ascii=False)}\n\n".encode()


class RelayFactory:
    """Builds a Relay per client stream with the collaborators they all share."""

    def __init__(
        self,
        store: RunStore,
        backend: RunBackend,
        ending: RunEnding,
        views: RunViews,
        *,
        max_seconds: float,
        keepalive_seconds: float,
        fallback_max_delay: float,
    ) -> None:
        self.store, self.backend, self.ending, self.views = store, backend, ending, views
        self.max_seconds = max_seconds
        self.keepalive_seconds = keepalive_seconds
        self.fallback_max_delay = fallback_max_delay

    def relay(
        self, run: Run, after: int, first_stream: EventStream | None = None, event_format: EventFormat | None = None
    ) -> Relay:
        return Relay(self, run, after, first_stream, event_format or RunEventFormat(self.views))


class Relay:
    """One client's stream of one run, from position `after` (exclusive)."""

    def __init__(
        self, deps: RelayFactory, run: Run, after: int, first_stream: EventStream | None, event_format: EventFormat
    ) -> None:
        self._deps = deps
        self._format = event_format
        self.run = run
        self.after = after  # moves as the client is sent events
        self._after_at_start = after
        self._first_stream = first_stream  # the create call's own stream, for a fresh streaming start
        self._queue: asyncio.Queue[object] = asyncio.Queue(maxsize=256)  # events, a Run, an error, _END

    async def events(self) -> AsyncGenerator[bytes, None]:
        started = time.monotonic()
        producer = asyncio.create_task(self._produce())
        try:
            yield self._format.preamble()
            while True:
                remaining = self._deps.max_seconds - (time.monotonic() - started)
                if remaining <= 0:
                    yield self._format.reconnect(self.run, self.after)
                    return
                try:  # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancel that races an item
                    async with asyncio.timeout(min(self._deps.keepalive_seconds, remaining)):
                        item = await self._queue.get()
                except TimeoutError:
                    if time.monotonic() - started < self._deps.max_seconds:
                        yield KEEPALIVE
                    continue
                if item is _END:  # resumed after the final event: say so, so no client waits for more
                    yield self._format.end(self.run, self.after)
                    return
                if isinstance(item, BaseException):
                    raise item
                chunk = await self._translate(item)
                if chunk is not None:
                    yield chunk
                if is_terminal_event(getattr(item, "type", None)) or isinstance(item, Run):
                    return
        finally:
            producer.cancel()
            await asyncio.gather(producer, return_exceptions=True)
            if self._first_stream is not None:  # never entered (the client left at once): close it here
                await self._first_stream.close()

    # -- producing: the provider's stream, reconnected; or the stored run --------------------------------------
    async def _produce(self) -> None:
        try:
            if not self.run.response_id and self.after < FINAL_EVENT_ID:  # queued for provider capacity
                self.run = await self._wait_for_admission()
            if self.run.response_id and self.after < FINAL_EVENT_ID:
                try:
                    await self._produce_from_provider()
                    return
                except ProviderCannotStream as reason:
                    log.info("run %s: provider cannot stream (%s); using the stored run", self.run.id, reason)
            await self._queue.put(await self._stored_end())
        except asyncio.CancelledError:
            raise
        except BaseException as error:  # noqa: BLE001 - handed to the consumer
            await self._queue.put(error)

    async def _produce_from_provider(self) -> None:
        response_id = self.run.response_id or ""
        follower = StreamFollower(
            self._deps.backend, response_id, self.after, self._first_stream, deployment=self.run.at
        )
        self._first_stream = None
        try:
            while True:
                try:
                    async with contextlib.aclosing(follower.events()) as events:
                        async for event in events:
                            await self._queue.put(event)
                            if is_terminal_event(event.type):
                                return
                    # A clean end without a terminal event: the run may have been cancelled; look at it.
                    run = await self._deps.store.get(self.run.id, with_result=True)
                    if run is not None and run.is_terminal:
                        if run.status in STREAMED_END_STATUSES and follower.position == self._after_at_start:
                            await self._queue.put(_END)  # resumed after the final event: nothing is missing
                        else:
                            await self._queue.put(run)  # cancelled or expired: no provider final; send ours
                        return
                except ProviderError as error:
                    if not error.transient:
                        raise ProviderCannotStream(f"{error.status}: {error.message}") from None
                try:
                    await follower.pause()
                except ProviderError:
                    if await self._ended_long_ago():
                        raise ProviderCannotStream("provider stream keeps failing") from None
                    # Unreachable for now (a deployment's outage): its events are still there. Keep trying until
                    # this connection's time is up; the client then gets `reconnect` and resumes exactly where it
                    # was. The stored run now would end the stream with a gap in its deltas.
                    await asyncio.sleep(RECONNECT_BACKOFF.maximum)
        finally:
            await follower.close()

    async def _ended_long_ago(self) -> bool:
        """Whether the run ended more than UNREACHABLE_AFTER_END_SECONDS ago (or is gone): a provider unreachable
        that long after the end is not coming back for this stream, so the stored run ends it."""
        run = await self._deps.store.get(self.run.id)
        if run is None or not run.is_terminal:
            return run is None
        return clock.now() - (run.completed_at or 0.0) > UNREACHABLE_AFTER_END_SECONDS

    async def _wait_for_admission(self) -> Run:
        """A run waiting for provider capacity (runs.admission): say so (status events, keep-alives) until the
        provider takes it (then its stream follows, from its first event) or it ends."""
        delay = 0.5
        while True:
            run = await self._deps.store.get(self.run.id)
            if run is None or run.response_id or run.is_terminal:
                return run or self.run
            await self._queue.put(("status", run.status))
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, self._deps.fallback_max_delay)

    async def _stored_end(self) -> Any:
        """Fallback: wait for the poll chain to end the run, then hand over the stored run (or END if the
        client already had our final event)."""
        run = await self._wait_for_stored_end()
        return _END if self.after >= FINAL_EVENT_ID else run

    async def _wait_for_stored_end(self) -> Run:
        delay = 0.5
        while True:
            run = await self._deps.store.get(self.run.id, with_result=True)
            if run is not None and run.is_terminal:
                return run
            await self._queue.put(("status", run.status if run else "unknown"))
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, self._deps.fallback_max_delay)

    # -- translating items into the format's bytes ----------------------------------------------------------------
    async def _translate(self, item: Any) -> bytes | None:
        if isinstance(item, tuple):  # fallback status heartbeat: no id, it is not a position
            return self._format.status(self.run, item[1], self.after)
        if isinstance(item, Run):  # our own final event: the stored final run
            self.after = FINAL_EVENT_ID
            return self._format.final(item, FINAL_EVENT_ID, None)
        self.after = item.sequence_number
        if item.type == "keepalive":
            return KEEPALIVE
        if is_terminal_event(item.type):
            return self._format.final(await self._finish(item), item.sequence_number, item)
        return self._format.event(self.run, item)

    async def _finish(self, event: Any) -> Run:
        run = await self._deps.store.get(self.run.id, with_result=True) or self.run
        with telemetry.run_step("stream end", run, logger=log.name):
            # The stream's final event does not wait on the webhook receiver: the queue delivers at once.
            return await self._deps.ending.end(run, ProviderEnded(event.response), deliver_now=False)


class EventFormat(Protocol):
    """How a relay's items become bytes on the wire (the native API's `run.*` events, or another API's)."""

    def preamble(self) -> bytes: ...
    def event(self, run: Run, event: Any) -> bytes | None: ...
    def status(self, run: Run, status: str, position: int) -> bytes | None: ...
    def final(self, run: Run, position: int, event: Any | None) -> bytes: ...
    def end(self, run: Run, position: int) -> bytes: ...
    def reconnect(self, run: Run, position: int) -> bytes: ...


class RunEventFormat:
    """The native API's events: `run.created`, `run.status`, the provider's deltas by their short names, one
    final `run.<status>` with the stored run; a continuation token on every event."""

    def __init__(self, views: RunViews) -> None:
        self._views = views

    def preamble(self) -> bytes:
        return b"retry: 1000\n\n"

    def event(self, run: Run, event: Any) -> bytes | None:
        seq, kind = event.sequence_number, event.type
        data: dict[str, Any] = {
            "type": kind.removeprefix("response."),
            "sequence_number": seq,
            "run_id": run.id,
            "continuation_token": self._views.token(run.id, seq),
        }
        if kind == "response.created":
            return sse("run.created", {**data, "type": "run.created", "run": self._views.render(run)}, seq)
        if kind in ("response.queued", "response.in_progress"):
            return sse("run.status", {**data, "type": "run.status", "status": kind.removeprefix("response.")}, seq)
        payload = (
            event.model_dump(mode="json", exclude={"type", "sequence_number"}) if hasattr(event, "model_dump") else {}
        )
        data.update({k: v for k, v in payload.items() if k not in ("obfuscation", "logprobs")})
        return sse(data["type"], data, seq)

    def status(self, run: Run, status: str, position: int) -> bytes | None:
        return sse(
            "run.status",
            {
                "type": "run.status",
                "run_id": run.id,
                "status": status,
                "continuation_token": self._views.token(run.id, position),
            },
        )

    def final(self, run: Run, position: int, event: Any | None) -> bytes:
        kind = f"run.{run.status}"
        return sse(
            kind,
            {
                "type": kind,
                "sequence_number": position,
                "run_id": run.id,
                "run": self._views.render(run),
                "continuation_token": self._views.token(run.id, position),
            },
            position,
        )

    def end(self, run: Run, position: int) -> bytes:
        return sse(
            "end",
            {
                "type": "end",
                "run_id": run.id,
                "continuation_token": self._views.token(run.id, position),
                "reason": "the run has ended and every event was already delivered",
            },
        )

    def reconnect(self, run: Run, position: int) -> bytes:
        return sse(
            "reconnect",
            {
                "type": "reconnect",
                "run_id": run.id,
                "continuation_token": self._views.token(run.id, position),
                "reason": "maximum stream duration reached",
            },
        )
