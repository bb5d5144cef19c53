"""The async client: the Agent Framework background-responses shape over the service's HTTP API."""
from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import random
import re
import time
import uuid
from typing import Any, AsyncIterator, Awaitable, Callable, Literal, Mapping, Sequence, overload

import httpx

from . import _sse
from .errors import APIConnectionError, APIError, StreamInterrupted, WaitTimeout
from .types import Response, Session, Update

DEFAULT_BASE_URL = "http://127.0.0.1:7071"
RUN_OPTIONS = frozenset({"background", "continuation_token", "webhook_url", "metadata", "model", "instructions",
                         "tools", "max_output_tokens", "reasoning", "deadline_seconds", "idempotency_key"})
_RETRY_STATUSES = frozenset({429, 502, 503, 504})
_MAX_RETRY_AFTER = 60.0

OnPoll = Callable[[Response, "float | None"], Any]
_WAIT_APPLIED = re.compile(r"(?:^|[,;\s])wait=(\d+)")


_ROTATED = object()
_ENDED = object()  # the service said the run ended and everything was delivered


class _Retry(Exception):
    """Internal: a transient failure worth another attempt (after `delay` seconds when given)."""

    def __init__(self, reason: str, delay: float | None = None) -> None:
        super().__init__(reason)
        self.delay = delay


def _backoff(attempt: int, base: float = 0.25, cap: float = 8.0) -> float:
    """Exponential backoff with a little jitter: ~base, 2*base, 4*base, ... up to cap."""
    return min(cap, base * 2 ** attempt) * (0.8 + 0.4 * random.random())


def to_input(messages: Any) -> str | list[dict[str, Any]]:
    """Messages as the API's `input`: a string stays a string; a list may hold strings (user
    messages), Responses input items (dicts) or message objects with `role` and `text` (as Agent
    Framework's chat messages have)."""
    if isinstance(messages, str):
        return messages
    if isinstance(messages, Mapping) or hasattr(messages, "role"):
        messages = [messages]
    if not isinstance(messages, Sequence):
        raise TypeError("messages must be a string, a message, or a list of them")
    items: list[dict[str, Any]] = []
    for message in messages:
        if isinstance(message, str):
            items.append({"role": "user", "content": message})
        elif isinstance(message, Mapping):
            items.append(dict(message))
        elif hasattr(message, "role") and hasattr(message, "text"):
            role = getattr(message.role, "value", message.role)
            items.append({"role": str(role), "content": str(message.text)})
        else:
            raise TypeError(f"cannot send a message of type {type(message).__name__}")
    if not items:
        raise ValueError("messages must not be empty")
    return items


class AsyncRunStream:
    """The updates of one run's stream, as one unbroken sequence.

    Iterate it with `async for`. Network failures and the server's stream rotation (`reconnect`
    events) are resumed inside, from the last update's continuation token, so the loop sees no
    duplicates and no gaps. `await stream` (or `get_final_response()`) reads to the end and returns
    the final run. Leaving the loop early closes the connection; the run goes on in the background.
    """

    def __init__(self, client: "AsyncClient", *, start_body: dict[str, Any] | None = None,
                 idempotency_key: str | None = None, continuation_token: str | None = None) -> None:
        self._client = client
        self._start_body = start_body
        self._idempotency_key = idempotency_key
        self._token = continuation_token
        self._run_id: str | None = None
        self._status: str | None = None
        self._last_seq: int | None = None
        self._final: Response | None = None
        self._gen: AsyncIterator[Update] | None = None
        self.rotations = 0  # server-side stream rotations resumed transparently
        self.reconnects = 0  # network failures resumed transparently

    # -- public state ---------------------------------------------------------------------------------
    @property
    def continuation_token(self) -> str | None:
        """The token of the last update delivered (resume from here)."""
        return self._token

    @property
    def run_id(self) -> str | None:
        return self._run_id

    @property
    def final_response(self) -> Response | None:
        return self._final

    # -- iteration ----------------------------------------------------------------------------------------
    def __aiter__(self) -> "AsyncRunStream":
        return self

    async def __anext__(self) -> Update:
        if self._gen is None:
            self._gen = self._updates()
        return await self._gen.__anext__()

    async def aclose(self) -> None:
        if self._gen is not None:
            await self._gen.aclose()  # type: ignore[attr-defined]

    async def __aenter__(self) -> "AsyncRunStream":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    async def get_final_response(self) -> Response:
        async for _ in self:
            pass
        if self._final is None:
            raise APIConnectionError("the stream ended without a final run")
        return self._final

    def __await__(self):
        return self.get_final_response().__await__()

    # -- the loop -------------------------------------------------------------------------------------------
    async def _updates(self) -> AsyncIterator[Update]:
        client = self._client
        failures = 0
        while True:
            try:
                async with self._open() as response:
                    if response.status_code != 200:
                        await response.aread()
                        error = APIError.from_parts(response.status_code, response.content, response.headers)
                        if _retryable_error(error):
                            raise _Retry(str(error), error.retry_after)
                        raise error
                    events = _sse.parse(response.aiter_lines())
                    async with contextlib.aclosing(events):  # type: ignore[type-var]
                        async for sse in events:
                            update = self._read(sse)
                            if update is _ROTATED:
                                break
                            if update is _ENDED:
                                return
                            if update is None:
                                continue  # already delivered before a reconnect
                            failures = 0
                            yield update
                            if update.is_final:
                                return
                        else:
                            raise _Retry("the stream ended before the run did")
                self.rotations += 1
            except (httpx.TransportError, _Retry) as error:
                failures += 1
                if failures > client.max_stream_reconnects:
                    raise StreamInterrupted(f"the stream broke {failures} times in a row ({error}); resume with "
                                            f"its continuation token", continuation_token=self._token,
                                            run_id=self._run_id) from error
                self.reconnects += 1
                delay = getattr(error, "delay", None)
                await asyncio.sleep(min(delay, _MAX_RETRY_AFTER) if delay is not None else _backoff(failures - 1))

    def _read(self, sse: _sse.ServerSentEvent) -> Any:
        """An SSE event as an Update; _ROTATED for the server's `reconnect`; None for a duplicate."""
        try:
            data = json.loads(sse.data)
        except ValueError as exc:
            raise _Retry("malformed event data") from exc
        if not isinstance(data, dict):
            raise _Retry("malformed event data")
        kind = sse.event if sse.event != "message" else str(data.get("type", "message"))
        if kind == "reconnect":
            self._token = data.get("continuation_token") or self._token
            self._run_id = data.get("run_id") or self._run_id
            return _ROTATED
        if kind == "end":  # resumed after the final update: nothing more will come
            self._run_id = data.get("run_id") or self._run_id
            return _ENDED
        return self._update(kind, data)

    def _open(self):
        """The request for the next connection: the start POST until the run is known, then a resume GET."""
        client = self._client
        timeout = httpx.Timeout(client.timeout, read=client.stream_read_timeout)
        headers = {"Accept": "text/event-stream"}
        if self._token is None and self._start_body is not None:
            # Nothing was delivered yet. Repeating the POST with the same Idempotency-Key returns the
            # same run (streamed from its start) instead of starting a second one.
            if self._idempotency_key:
                headers["Idempotency-Key"] = self._idempotency_key
            return client._http.stream("POST", "/api/runs", json=self._start_body, headers=headers, timeout=timeout)
        return _LazyStream(self, headers, timeout)

    def _update(self, kind: str, data: dict[str, Any]) -> Update | None:
        seq = data.get("sequence_number")
        seq = seq if isinstance(seq, int) and not isinstance(seq, bool) else None
        if seq is not None and self._last_seq is not None and seq <= self._last_seq:
            return None
        if seq is not None:
            self._last_seq = seq
        self._run_id = data.get("run_id") or self._run_id
        self._token = data.get("continuation_token") or self._token
        run = data.get("run") if isinstance(data.get("run"), dict) else None
        if run is not None:
            self._status = run.get("status", self._status)
        elif isinstance(data.get("status"), str):
            self._status = data["status"]
        update = Update(type=kind, text=data.get("delta", "") if kind == "output_text.delta" else "",
                        continuation_token=self._token, sequence_number=seq, status=self._status,
                        run_id=self._run_id, raw=data)
        if update.is_final and run is not None:
            self._final = update.response = Response(run)
        return update


class _LazyStream:
    """`async with` for a resume GET; learns the run id from the token first when needed."""

    def __init__(self, stream: AsyncRunStream, headers: dict[str, str], timeout: httpx.Timeout) -> None:
        self._stream, self._headers, self._timeout = stream, headers, timeout
        self._cm = None

    async def __aenter__(self) -> httpx.Response:
        stream, client = self._stream, self._stream._client
        if stream._run_id is None:
            # A bare token: POST it with stream=true; the service resumes right after its position
            # (the token stays opaque here; the run id arrives in every event).
            self._cm = client._http.stream("POST", "/api/runs", json={"continuation_token": stream._token, "stream": True},
                                           headers=self._headers, timeout=self._timeout)
        else:
            self._cm = client._http.stream("GET", f"/api/runs/{stream._run_id}/stream",
                                           params={"continuation_token": stream._token},
                                           headers=self._headers, timeout=self._timeout)
        return await self._cm.__aenter__()

    async def __aexit__(self, *exc: Any) -> None:
        if self._cm is not None:
            await self._cm.__aexit__(*exc)


def _retryable_error(error: APIError) -> bool:
    return error.status_code in _RETRY_STATUSES or (error.status_code == 409 and error.code == "idempotency_key_busy")


class AsyncClient:
    """Client of the background-runs service.

        async with AsyncClient("http://127.0.0.1:7071") as client:
            session = await client.create_session()
            response = await client.run("Hello", session=session, options={"background": True})
            while response.continuation_token is not None:
                await asyncio.sleep(2)
                response = await client.run(session=session, options={"continuation_token": response.continuation_token})
            print(response.text)

    `max_retries`: attempts after a transient failure of a single request (network error, 429/502/503/504,
    honouring Retry-After). `max_stream_reconnects`: consecutive failed reconnections of a stream
    before `StreamInterrupted` (reset by every delivered update; server rotations do not count).
    `long_poll`: how long wait() asks the service to hold each read until the run changes (`Prefer: wait`;
    0: poll on Retry-After instead). `poll_initial`/`poll_max`: wait()'s exponential backoff when the service sends
    no Retry-After. `transport`: an httpx transport (tests, proxies).
    """

    def __init__(self, base_url: str = DEFAULT_BASE_URL, *, function_key: str | None = None, timeout: float = 30.0,
                 max_retries: int = 3, max_stream_reconnects: int = 5, stream_read_timeout: float = 60.0,
                 poll_initial: float = 0.5, poll_max: float = 10.0, long_poll: float = 60.0,
                 headers: Mapping[str, str] | None = None, transport: httpx.AsyncBaseTransport | None = None) -> None:
        base = base_url.rstrip("/")
        if base.endswith("/api"):
            base = base[: -len("/api")]
        self.base_url = base
        self.timeout = timeout
        self.max_retries = max_retries
        self.max_stream_reconnects = max_stream_reconnects
        self.stream_read_timeout = stream_read_timeout
        self.poll_initial = poll_initial
        self.poll_max = poll_max
        self.long_poll = long_poll
        all_headers = {"User-Agent": "bgruns-client/0.1", **(headers or {})}
        if function_key:
            all_headers["x-functions-key"] = function_key
        self._http = httpx.AsyncClient(base_url=base, headers=all_headers, timeout=timeout, transport=transport,
                                       follow_redirects=False)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    # -- requests -------------------------------------------------------------------------------------------
    async def _request(self, method: str, path: str, *, json_body: Any = None, headers: Mapping[str, str] | None = None,
                       safe_to_repeat: bool = True, held: float = 0.0) -> httpx.Response:
        """One API call with retries of transient failures. `safe_to_repeat=False`: only failures where
        the request surely never reached the server (connect errors) are retried. `held`: how long the service
        may hold the answer (a long poll), added to the timeout."""
        attempt = 0
        timeout = {"timeout": self.timeout + held} if held else {}
        while True:
            try:
                response = await self._http.request(method, path, json=json_body, headers=headers, **timeout)
            except httpx.TransportError as error:
                retryable = safe_to_repeat or isinstance(error, (httpx.ConnectError, httpx.ConnectTimeout))
                if not retryable or attempt >= self.max_retries:
                    raise APIConnectionError(f"{method} {path}: {type(error).__name__}: {error}") from error
                await asyncio.sleep(_backoff(attempt))
                attempt += 1
                continue
            if response.status_code < 400:
                return response
            error = APIError.from_parts(response.status_code, response.content, response.headers)
            if _retryable_error(error) and attempt < self.max_retries:
                delay = error.retry_after
                await asyncio.sleep(min(delay, _MAX_RETRY_AFTER) if delay is not None else _backoff(attempt))
                attempt += 1
                continue
            raise error

    @staticmethod
    def _response(http_response: httpx.Response) -> Response:
        from .errors import parse_retry_after

        applied = _WAIT_APPLIED.search(http_response.headers.get("preference-applied", ""))
        return Response(http_response.json(), retry_after=parse_retry_after(http_response.headers.get("retry-after")),
                        held_for=float(applied.group(1)) if applied else None)

    # -- sessions -------------------------------------------------------------------------------------------
    async def create_session(self) -> Session:
        response = await self._request("POST", "/api/sessions", safe_to_repeat=False)
        return Session.from_json(response.json())

    async def get_session(self, session: Session | str) -> Session:
        session_id = session.id if isinstance(session, Session) else session
        response = await self._request("GET", f"/api/sessions/{session_id}")
        return Session.from_json(response.json())

    # -- runs -----------------------------------------------------------------------------------------------
    @overload
    def run(self, messages: Any = None, *, session: Session | str | None = None, stream: Literal[False] = False,
            options: Mapping[str, Any] | None = None) -> Awaitable[Response]: ...

    @overload
    def run(self, messages: Any = None, *, session: Session | str | None = None, stream: Literal[True],
            options: Mapping[str, Any] | None = None) -> AsyncRunStream: ...

    def run(self, messages: Any = None, *, session: Session | str | None = None, stream: bool = False,
            options: Mapping[str, Any] | None = None) -> Awaitable[Response] | AsyncRunStream:
        """Start a run, or continue one with `options={"continuation_token": token}`.

        Not streaming (`await client.run(...)`): with `background` (the default) the reply comes at once,
        finished (`continuation_token` None) or not (poll by calling run() again with the token, or
        use wait()). `background: False` returns only once the run is finished.
        Streaming (`async for update in client.run(..., stream=True)`): the run's updates; with a
        continuation token, the updates right after the one that carried it.

        Options: background, continuation_token, webhook_url, metadata, model, instructions, tools,
        max_output_tokens, reasoning, deadline_seconds, idempotency_key. With a continuation token,
        messages, session and the other options are ignored (the run already has them).
        """
        opts = dict(options or {})
        unknown = sorted(set(opts) - RUN_OPTIONS)
        if unknown:
            raise ValueError(f"unknown run option(s) {unknown}; known: {sorted(RUN_OPTIONS)}")
        token = opts.pop("continuation_token", None)
        if token is not None:
            if not isinstance(token, str) or not token:
                raise TypeError("continuation_token must be a non-empty string")
            if stream:
                return AsyncRunStream(self, continuation_token=token)
            return self._poll(token)
        if messages is None:
            raise ValueError("messages are required to start a run (or pass options={'continuation_token': ...})")
        idempotency_key = opts.pop("idempotency_key", None) or f"bgruns-{uuid.uuid4()}"
        background = opts.pop("background", True)
        body: dict[str, Any] = {"input": to_input(messages), "background": bool(background)}
        if session is not None:
            body["session_id"] = session.id if isinstance(session, Session) else session
        body.update({k: v for k, v in opts.items() if v is not None})
        if stream:
            body["stream"] = True
            return AsyncRunStream(self, start_body=body, idempotency_key=idempotency_key)
        return self._start(body, idempotency_key)

    async def _start(self, body: dict[str, Any], idempotency_key: str) -> Response:
        http_response = await self._request("POST", "/api/runs", json_body=body,
                                            headers={"Idempotency-Key": idempotency_key})
        response = self._response(http_response)
        if not body["background"] and response.continuation_token is not None:
            response = await self.wait(response)
        return response

    async def _poll(self, token: str) -> Response:
        return self._response(await self._request("POST", "/api/runs", json_body={"continuation_token": token}))

    async def get(self, run_id: str, *, timeline: bool = False, wait: float = 0.0) -> Response:
        """The run; `timeline=True` adds the steps the service recorded for it (`response.raw["timeline"]`).
        `wait`: a long poll: the service holds the answer until the run changes (begins, ends, needs action) or
        `wait` seconds pass, as far as it allows (`response.held_for`; None: it did not hold it)."""
        path = f"/api/runs/{run_id}" + ("?include=timeline" if timeline else "")
        seconds = max(0, int(wait))
        headers = {"Prefer": f"wait={seconds}"} if seconds else None
        return self._response(await self._request("GET", path, headers=headers, held=seconds))

    async def cancel(self, run: Response | str) -> Response:
        run_id = run.run_id if isinstance(run, Response) else run
        return self._response(await self._request("POST", f"/api/runs/{run_id}/cancel"))

    async def wait(self, run: Response | str, *, timeout: float | None = None,
                   on_poll: OnPoll | None = None) -> Response:
        """Wait until the run is terminal and return it.

        By default each read is a long poll (`long_poll` seconds): the service answers as soon as the run
        changes, so the end is seen at once, at about one request a minute. With `long_poll=0`, or against a
        service that does not hold reads, the delay before each poll is the server's Retry-After (the time
        until it can know more); without one, an exponential backoff from poll_initial doubling up to poll_max.
        `on_poll(response, next_delay)` (sync or async) is called for every state seen, with `next_delay` 0 when
        the next read goes at once and is held by the service, None for the final one. `timeout` raises
        WaitTimeout (after one last poll at the deadline)."""
        started = time.monotonic()
        response = run if isinstance(run, Response) else await self.get(run)
        run_id = response.run_id
        backoff = self.poll_initial
        long_polling = self.long_poll > 0
        while True:
            if response.is_terminal:
                await _call(on_poll, response, None)
                return response
            if long_polling:
                delay = 0.0
            elif response.retry_after is not None:
                delay = min(max(response.retry_after, 0.05), _MAX_RETRY_AFTER * 10)
            else:
                delay = backoff
                backoff = min(backoff * 2, self.poll_max)
            hold = self.long_poll
            if timeout is not None:
                remaining = timeout - (time.monotonic() - started)
                if remaining <= 0:
                    raise WaitTimeout(f"run {run_id} is still {response.status} after {timeout}s", response)
                delay, hold = min(delay, remaining), min(hold, max(1.0, remaining))
            await _call(on_poll, response, delay)
            if delay:
                await asyncio.sleep(delay)
            response = await self.get(run_id, wait=hold if long_polling else 0)
            if long_polling and not response.held_for:
                long_polling = False  # the service holds no read (or for 0 s): poll on its Retry-After


async def _call(callback: OnPoll | None, *args: Any) -> None:
    if callback is None:
        return
    result = callback(*args)
    if inspect.isawaitable(result):
        await result
