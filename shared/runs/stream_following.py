"""Following a response's event stream from a position, across dropped connections: the one loop the relay (a
client's stream) and the poll chain's watcher (COMPLETION_STRATEGY=watch) share.

`StreamFollower.events()` yields each event after `position` once, in order. A connection that drops mid-stream (or
an event cut in half) is opened again from the last event seen, after a backoff (`pause`); the backend refusing to
open the stream raises ProviderError, transient or not, for the caller to judge (the relay tries again, the watcher
asks once instead). It returns after the terminal event, or when the stream ends cleanly without one (a cancelled
response's stream just ends: the caller looks at the run). After MAX_TRIES_WITHOUT_PROGRESS reconnections that
brought no new event, `pause` gives up with a transient ProviderError.

Whatever the backend: a provider's stream (retrieve with `starting_after`), or the executor's event log, polled
(executor.event_log.PolledLogStream), which is what an executor run's `events` is.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator
from typing import Any

import httpx
import openai

from ..provider import ProviderError, RunBackend
from ..provider.backend import EventStream
from ..responses_vocabulary import is_terminal_event
from ..settings import DEFAULT_DEPLOYMENT
from .poll_chain import Backoff

log = logging.getLogger("bgruns.stream_following")

MAX_TRIES_WITHOUT_PROGRESS = 5
RECONNECT_BACKOFF = Backoff(0.4, 5.0, 2.0)  # 0.4 s, doubling, at most 5 s between tries
# A stream that breaks this way is reconnected: a dropped connection, a timeout, an event cut in half (ValueError).
DROPS = (ValueError, httpx.HTTPError, openai.APIConnectionError, openai.APITimeoutError)


class StreamFollower:
    def __init__(
        self,
        backend: RunBackend,
        response_id: str,
        after: int,
        first: EventStream | None = None,
        *,
        deployment: str = DEFAULT_DEPLOYMENT,
    ) -> None:
        """`first`: a stream already open at `after` (a streaming create's own), used before any other;
        `deployment`: where the response lives (provider.pool)."""
        self._backend = backend
        self._response_id = response_id
        self._deployment = deployment
        self.position = after  # the last event seen
        self._first = first
        self._tries = 0  # reconnections since the last new event

    async def events(self) -> AsyncGenerator[Any, None]:
        while True:
            stream, self._first = self._first, None
            if stream is None:
                stream = await self._backend.events(self._response_id, self.position, deployment=self._deployment)
            try:
                async for event in stream:
                    seq = getattr(event, "sequence_number", None)
                    if seq is None or seq <= self.position:
                        continue  # seen already (a reconnection replays from the position)
                    self.position, self._tries = seq, 0
                    yield event
                    if is_terminal_event(event.type):
                        return
                return  # a clean end without a terminal event
            except DROPS as error:
                log.info(
                    "response %s: its stream broke after %s (%s); reconnecting",
                    self._response_id,
                    self.position,
                    type(error).__name__,
                )
            finally:
                await stream.close()
            await self.pause()

    async def pause(self) -> None:
        """Wait before the next try; a transient ProviderError once the tries brought nothing new for too long."""
        self._tries += 1
        if self._tries > MAX_TRIES_WITHOUT_PROGRESS:
            raise ProviderError(transient=True, status=None, message="the response's stream keeps failing")
        await asyncio.sleep(RECONNECT_BACKOFF.delay(self._tries - 1))

    async def close(self) -> None:
        """Close the first stream if it was never read."""
        if self._first is not None:
            first, self._first = self._first, None
            await first.close()
