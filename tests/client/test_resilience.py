"""Network failures in the middle of a stream are resumed inside the client (one unbroken stream,
no duplicates, no gaps), including a cut before the first event (the start is repeated safely with
its Idempotency-Key); wait() honours Retry-After."""

from __future__ import annotations

import asyncio
import itertools
import time

import httpx
import pytest
from bgruns import AsyncClient, StreamInterrupted, WaitTimeout

from .conftest import emulated, reference_events


class CuttingProxy:
    """A TCP proxy to the API that aborts the next `cuts` event-stream responses once more than
    `after_bytes` of their body passed (mid-event: half of the chunk is sent, then the connection dies)."""

    def __init__(self, target: httpx.URL, *, cuts: int, after_bytes: int) -> None:
        self.target, self.cuts, self.after_bytes = target, cuts, after_bytes
        self.cut = 0
        self.server: asyncio.base_events.Server | None = None
        self.handlers: set[asyncio.Task] = set()

    async def __aenter__(self) -> CuttingProxy:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc) -> None:
        self.server.close()
        for task in list(self.handlers):
            task.cancel()
        await asyncio.gather(*self.handlers, return_exceptions=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self.handlers.add(task)
        try:
            await self._relay(reader, writer)
        except (asyncio.CancelledError, OSError):
            writer.transport.abort()  # swallowed: a cancelled connection task is logged as an error in 3.11
        finally:
            self.handlers.discard(task)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(self.target.host, self.target.port)

        async def upstream() -> None:
            while chunk := await reader.read(65536):
                up_writer.write(chunk)
                await up_writer.drain()

        async def downstream() -> None:
            streamed = None  # bytes of the current event-stream response so far
            while chunk := await up_reader.read(65536):
                if b"text/event-stream" in chunk:
                    streamed = 0
                if streamed is not None and self.cuts > 0:
                    streamed += len(chunk)
                    if streamed > self.after_bytes:
                        self.cuts -= 1
                        self.cut += 1
                        writer.write(chunk[: len(chunk) // 2])
                        await writer.drain()
                        writer.transport.abort()
                        up_writer.transport.abort()
                        return
                writer.write(chunk)
                await writer.drain()

        tasks = [asyncio.create_task(upstream()), asyncio.create_task(downstream())]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        writer.transport.abort()
        up_writer.transport.abort()


async def collect(stream) -> tuple[list, object]:
    updates = [update async for update in stream]
    return updates, updates[-1].response


@pytest.mark.parametrize("after_bytes", [1500, 0], ids=["mid-stream", "before-the-first-event"])
async def test_network_cuts_are_resumed_without_duplicates_or_gaps(stack, after_bytes):
    async with (
        CuttingProxy(httpx.URL(stack.host.base_url), cuts=2, after_bytes=after_bytes) as proxy,
        AsyncClient(proxy.url, function_key=stack.function_key, max_stream_reconnects=3) as client,
    ):
        session = await client.create_session()
        stream = client.run("Cut me twice.", session=session, stream=True, options={"metadata": emulated(2500, 400)})
        updates, final = await collect(stream)
        shown = await client.get_session(session)

    assert proxy.cut == 2 and stream.reconnects == 2
    assert final.status == "completed" and "".join(u.text for u in updates) == final.text
    seqs = [u.sequence_number for u in updates]
    assert seqs == [seq for seq, _, _ in reference_events(stack.host.base_url, final.run_id)]
    assert updates[0].type == "run.created"
    assert len(shown.runs) == 1  # a start repeated after a cut did not start a second run


async def test_failures_without_progress_raise_stream_interrupted_with_a_token_that_resumes(stack):
    """max_stream_reconnects counts reconnections in a row that deliver nothing."""
    async with (
        CuttingProxy(httpx.URL(stack.host.base_url), cuts=0, after_bytes=0) as proxy,
        AsyncClient(proxy.url, function_key=stack.function_key, max_stream_reconnects=2) as client,
    ):
        seen = []

        async def follow() -> None:
            async for update in client.run("Cut me a lot.", stream=True, options={"metadata": emulated(2500, 400)}):
                seen.append(update)
                if sum(bool(u.text) for u in seen) == 3:
                    proxy.cuts = 10  # from now on every connection dies before its first event

        with pytest.raises(StreamInterrupted) as caught:
            await follow()
    assert proxy.cut == 3  # the live connection, then both reconnections
    assert caught.value.continuation_token == seen[-1].continuation_token
    assert caught.value.run_id == seen[-1].run_id
    async with AsyncClient(stack.host.base_url, function_key=stack.function_key) as client:
        rest, final = await collect(
            client.run(stream=True, options={"continuation_token": caught.value.continuation_token})
        )
    assert "".join(u.text for u in seen + rest) == final.text


class Recorder(httpx.AsyncBaseTransport):
    """Records (time, method, path, Retry-After) of every request; forwards to the real transport."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.log: list[tuple[float, str, str, str | None]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        sent = time.monotonic()
        response = await self.inner.handle_async_request(request)
        self.log.append((sent, request.method, request.url.path, response.headers.get("retry-after")))
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_wait_long_polls_by_default_and_sees_the_end_as_the_service_does(stack):
    recorder = Recorder()
    seen: list[tuple[str, float | None]] = []
    async with AsyncClient(stack.host.base_url, function_key=stack.function_key, transport=recorder) as client:
        started = await client.run("Take a while.", options={"metadata": emulated(2500, 100)})
        final = await client.wait(started, on_poll=lambda r, delay: seen.append((r.status, delay)))
    assert final.status == "completed" and len(final.text) == 100
    gets = [entry for entry in recorder.log if entry[1] == "GET"]
    assert 1 <= len(gets) <= 3  # held until it began (queued -> in_progress), then until it ended
    assert all(delay == 0.0 for _, delay in seen[:-1]) and seen[-1] == ("completed", None)
    assert final.held_for == 60.0  # the service agreed to hold each read (Preference-Applied: wait=60)


async def test_wait_polls_on_retry_after_when_the_service_holds_no_read():
    replies = iter(["in_progress", "in_progress", "completed"])
    prefer: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:  # an older service: no Preference-Applied
        prefer.append(request.headers.get("prefer"))
        status = next(replies)
        return httpx.Response(
            200,
            headers={"retry-after": "1"},
            json={"id": "run_x", "status": status, "continuation_token": None if status == "completed" else "tok"},
        )

    delays = []
    async with AsyncClient("http://test", transport=httpx.MockTransport(handler)) as client:
        started = time.monotonic()
        await client.wait("run_x", on_poll=lambda r, delay: delays.append(delay))
    assert prefer == [None, "wait=60", None]  # asked once, then Retry-After polling
    assert delays == [0.0, 1.0, None] and time.monotonic() - started >= 1.0


async def test_wait_polls_when_the_service_says_retry_after(stack):
    recorder = Recorder()
    seen: list[tuple[str, float | None]] = []
    async with AsyncClient(
        stack.host.base_url, function_key=stack.function_key, transport=recorder, poll_initial=0.05, long_poll=0
    ) as client:
        started = await client.run("Take a while.", options={"metadata": emulated(2500, 100)})
        assert started.retry_after is not None and started.retry_after >= 1
        final = await client.wait(started, on_poll=lambda r, delay: seen.append((r.status, delay)))
    assert final.status == "completed" and len(final.text) == 100
    polls = [entry for entry in recorder.log if entry[1] in ("POST", "GET")]
    assert polls[0][1] == "POST" and all(entry[1] == "GET" for entry in polls[1:])
    for (sent, _, _, retry_after), (next_sent, _, _, _) in itertools.pairwise(polls):
        assert retry_after is not None
        assert next_sent - sent >= float(retry_after) - 0.05  # never earlier than asked
    assert [delay for _, delay in seen[:-1]] == [float(entry[3]) for entry in polls[:-1]]
    assert seen[-1] == ("completed", None)
    # A 2.5 s run with Retry-After of 1 s or more: a few polls, not a busy loop (however long a loaded machine
    # makes the run last: at most one a second, plus the start and the last)
    elapsed = polls[-1][0] - polls[0][0]
    assert 3 <= len(polls) <= 2 + elapsed


async def test_wait_backs_off_without_retry_after_and_retries_a_503():
    replies = iter(
        [
            (200, {"retry-after": "2"}, "in_progress"),
            (503, {"retry-after": "1"}, None),
            (200, {}, "in_progress"),
            (200, {}, "in_progress"),
            (200, {}, "completed"),
        ]
    )
    times: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        times.append(time.monotonic())
        status, headers, run_status = next(replies)
        if status != 200:
            return httpx.Response(
                status,
                headers=headers,
                json={"error": {"code": "storage_unavailable", "message": "retry", "param": None}},
            )
        done = run_status == "completed"
        return httpx.Response(
            200,
            headers=headers,
            json={
                "id": "run_x",
                "status": run_status,
                "output_text": "done" if done else None,
                "continuation_token": None if done else "tok",
            },
        )

    delays = []
    async with AsyncClient(
        "http://test", transport=httpx.MockTransport(handler), poll_initial=0.1, long_poll=0
    ) as client:
        final = await client.wait("run_x", on_poll=lambda r, delay: delays.append(delay))
    assert final.text == "done"
    assert delays == [2.0, 0.1, 0.2, None]  # Retry-After, then exponential backoff from poll_initial
    assert times[1] - times[0] >= 2.0 - 0.01 and times[2] - times[1] >= 1.0 - 0.01  # both Retry-Afters honoured


async def test_wait_times_out_with_the_last_state():
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, headers={"retry-after": "1"}, json={"id": "run_x", "status": "queued", "continuation_token": "tok"}
        )

    async with AsyncClient("http://test", transport=httpx.MockTransport(handler)) as client:
        started = time.monotonic()
        with pytest.raises(WaitTimeout) as caught:
            await client.wait("run_x", timeout=0.3)
    assert caught.value.response.status == "queued" and time.monotonic() - started < 1.0
