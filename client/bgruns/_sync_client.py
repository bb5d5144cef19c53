"""The blocking client: the async client run on a private event loop in a daemon thread.

Every method submits the async client's coroutine to that loop and waits for it, so both clients
share one implementation. An interrupt (Ctrl-C) while waiting cancels the pending operation.
Callbacks (wait's on_poll) run on the loop's thread.
"""
from __future__ import annotations

import asyncio
import threading
from typing import Any, Coroutine, Iterator, Literal, Mapping, TypeVar, overload

from ._async_client import DEFAULT_BASE_URL, AsyncClient, AsyncRunStream, OnPoll
from .types import Response, Session, Update

T = TypeVar("T")


class _Loop:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="bgruns-client-loop", daemon=True)
        self.thread.start()

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()  # e.g. KeyboardInterrupt in the caller's thread: stop the pending work
            try:
                future.result(timeout=5)
            except BaseException:  # noqa: BLE001 - the original exception is what matters
                pass
            raise

    def stop(self) -> None:
        if self.loop.is_closed():
            return
        try:
            self.call(self.loop.shutdown_asyncgens())
        except Exception:  # noqa: BLE001 - closing anyway
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
        self.loop.close()


class RunStream:
    """Blocking iterator over a run's updates (see AsyncRunStream for the guarantees)."""

    def __init__(self, loop: _Loop, stream: AsyncRunStream) -> None:
        self._loop = loop
        self._stream = stream

    def __iter__(self) -> Iterator[Update]:
        return self

    def __next__(self) -> Update:
        async def step() -> Update:
            return await self._stream.__anext__()

        try:
            return self._loop.call(step())
        except StopAsyncIteration:
            raise StopIteration from None

    def close(self) -> None:
        self._loop.call(self._stream.aclose())

    def __enter__(self) -> "RunStream":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def get_final_response(self) -> Response:
        return self._loop.call(self._stream.get_final_response())

    @property
    def continuation_token(self) -> str | None:
        return self._stream.continuation_token

    @property
    def run_id(self) -> str | None:
        return self._stream.run_id

    @property
    def final_response(self) -> Response | None:
        return self._stream.final_response

    @property
    def rotations(self) -> int:
        return self._stream.rotations

    @property
    def reconnects(self) -> int:
        return self._stream.reconnects


class Client:
    """Blocking client with the same methods as AsyncClient (same constructor arguments)."""

    def __init__(self, base_url: str = DEFAULT_BASE_URL, **kwargs: Any) -> None:
        self._loop = _Loop()

        async def make() -> AsyncClient:
            return AsyncClient(base_url, **kwargs)

        try:
            self._async = self._loop.call(make())
        except BaseException:
            self._loop.stop()
            raise

    @property
    def base_url(self) -> str:
        return self._async.base_url

    @property
    def async_client(self) -> AsyncClient:
        return self._async

    def close(self) -> None:
        if not self._loop.loop.is_closed():
            try:
                self._loop.call(self._async.aclose())
            finally:
                self._loop.stop()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def create_session(self) -> Session:
        return self._loop.call(self._async.create_session())

    def get_session(self, session: Session | str) -> Session:
        return self._loop.call(self._async.get_session(session))

    @overload
    def run(self, messages: Any = None, *, session: Session | str | None = None, stream: Literal[False] = False,
            options: Mapping[str, Any] | None = None) -> Response: ...

    @overload
    def run(self, messages: Any = None, *, session: Session | str | None = None, stream: Literal[True],
            options: Mapping[str, Any] | None = None) -> RunStream: ...

    def run(self, messages: Any = None, *, session: Session | str | None = None, stream: bool = False,
            options: Mapping[str, Any] | None = None) -> Response | RunStream:
        """See AsyncClient.run. Streaming returns a blocking iterator of updates."""
        result = self._async.run(messages, session=session, stream=stream, options=options)
        if isinstance(result, AsyncRunStream):
            return RunStream(self._loop, result)

        async def finish() -> Response:
            return await result

        return self._loop.call(finish())

    def get(self, run_id: str, *, timeline: bool = False, wait: float = 0.0) -> Response:
        return self._loop.call(self._async.get(run_id, timeline=timeline, wait=wait))

    def cancel(self, run: Response | str) -> Response:
        return self._loop.call(self._async.cancel(run))

    def wait(self, run: Response | str, *, timeout: float | None = None, on_poll: OnPoll | None = None) -> Response:
        return self._loop.call(self._async.wait(run, timeout=timeout, on_poll=on_poll))


__all__ = ["Client", "RunStream"]
