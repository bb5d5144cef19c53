"""The executor: the model call of a run the function app performs itself (one execute message, one
invocation), written to the run's event log as it streams, ended through the lifecycle the moment it ends.

One invocation:
1. Claim an attempt on the log's head (ETag-conditional). A message whose run already has a live attempt is a
   duplicate and is dropped; a message redelivered after its invocation died (a higher dequeue count), or one
   finding the attempt silent past EXECUTOR_STALE_SECONDS, starts the next attempt. Past EXECUTOR_MAX_ATTEMPTS
   the run fails with a message saying so.
2. Stream the call (model_client) and append its events in batches (every FLUSH_SECONDS or FLUSH_EVENTS),
   each batch with a heartbeat on the head. A 429/5xx before any output is retried with backoff; a cut after
   output started ends the attempt: the next one begins in this invocation with a `response.output_restarted`
   event, so followers know to drop the partial output, and sequence numbers keep growing.
3. About every second, look at the run: ended by someone else (cancel, deadline on the poll chain) -> stop the
   call; past its deadline -> stop and end it `expired`; past this invocation's share of functionTimeout ->
   stop and fail it with a message naming the limit. A cancel also closes the log, which the next batch notices.
4. At the terminal event: append it and close the log in one transaction, then end the run (runs.ending, which
   makes the webhook's first attempt right here, as every background step does). A crash in between is finished
   from the log by the next message or the poll chain.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from azure.core.exceptions import AzureError

from .. import clock
from ..provider import ProviderError
from ..responses_vocabulary import OUTPUT_RESTARTED_EVENT, ErrorCode, RunStatus, is_terminal_event
from ..runs.ending import Cancelled, DeadlinePassed, Observed, ProviderEnded, RunEnding
from ..runs.model import Run
from ..runs.poll_chain import Backoff
from ..runs.store import RunConflict, RunStore
from ..settings import DEFAULT_DEPLOYMENT, ExecutorSettings
from .backend import ExecuteMessage, executor_response_id, is_executor_id, run_id_of
from .event_log import EventLog, LogConflict, LogHead
from .model_client import Model
from .model_pool import ModelPool
from .model_request import ModelRequest, continuation_items, failed_event, input_items, response_skeleton, with_status

log = logging.getLogger("bgruns.executing")

# The most of a session's earlier turns one call loads (Chat Completions keeps no state: they are read back from our
# runs and sent again). 8 MiB of JSON is more text than any model's context holds (1M tokens are about 4 MB), and
# building a call at that ceiling peaks at 16 MiB (python -m bench.executor_history). Beyond either limit a turn
# fails `history_too_large`, unless it asked for truncation "auto": then its oldest turns are left out
# (Executor._beyond_the_limit).
MAX_HISTORY_TURNS = 500
MAX_HISTORY_BYTES = 8 * 1024 * 1024
PROVIDER_TRIES = 6  # a call refused with 429/5xx before any output: this many tries in all
MAX_BACKOFF_SECONDS = 30.0


class ExecuteOutcome(StrEnum):
    """What an execute message did, when it did not end the run (then its outcome is the run's status)."""

    MALFORMED = "malformed"
    UNKNOWN_RUN = "unknown-run"
    NO_LOG = "no-log"  # the run has no event log (not an executor run, or purged)
    ALREADY_TERMINAL = "already-terminal"
    FINISHED_FROM_LOG = "finished-from-log"  # the log had ended but the run had not (a crash between the two)
    CLOSED = "closed"  # the log was closed while this message claimed it
    DUPLICATE = "duplicate"  # a live attempt holds the log
    BUSY = "busy"  # the head kept changing while this message tried to claim it
    STOPPED = "stopped"  # the run ended elsewhere (a cancel closed the log)
    SUPERSEDED = "superseded"  # a newer attempt owns the log


STORAGE_CONFLICT_TRIES = 4  # ETag conflicts that leave the log ours (a watchdog note) before the attempt stops


@dataclass(frozen=True)
class Timings:
    flush_seconds: float = 0.25  # a batch is written at most this long after its first event
    flush_events: int = 64  # ... or as soon as it has this many
    check_seconds: float = 1.0  # how often the run is looked at while its call streams (cancel, deadline)
    retry_base_seconds: float = 0.5  # first backoff of a call refused before output (doubling, jittered)

    @property
    def retry_backoff(self) -> Backoff:
        """The backoff of a call refused before output: from retry_base_seconds, doubling, up to MAX_BACKOFF_SECONDS;
        the provider's Retry-After can only lengthen it."""
        return Backoff(self.retry_base_seconds, MAX_BACKOFF_SECONDS, 2.0)

    # How long a batch the log would not take (storage down) is tried again before the attempt gives up. Long
    # enough to ride out a storage blip: the batch may hold a whole answer the model was paid for. Nobody else
    # can take the log over meanwhile (that needs storage too), and if someone did, the ETag says so.
    storage_patience_seconds: float = 60.0
    storage_retry_base_seconds: float = 0.5  # doubling up to the max
    storage_retry_max_seconds: float = 4.0


class Superseded(Exception):
    """This attempt no longer owns the log: a newer attempt took over, or a cancel closed it."""

    def __init__(self, head: LogHead | None) -> None:
        super().__init__("superseded")
        self.head = head


class _Stop(Exception):
    def __init__(self, reason: str) -> None:  # stopped | deadline | budget
        super().__init__(reason)
        self.reason = reason


class _Writer:
    """The owning attempt's pen: numbers events, keeps them until the batch is due, writes each batch with a
    heartbeat, and notices at once when it no longer owns the log."""

    def __init__(self, events: EventLog, head: LogHead, timings: Timings, heartbeat_seconds: float) -> None:
        self._log = events
        self.head = head
        self.pending: list[dict[str, Any]] = []
        self._first_pending_at = 0.0
        self._last_write = time.monotonic()
        self._timings = timings
        self._heartbeat = heartbeat_seconds
        self.wake = asyncio.Event()  # set when a batch starts or fills: the writing loop looks again

    def emit(self, event: Mapping[str, Any]) -> None:
        if not self.pending:
            self._first_pending_at = time.monotonic()
            self.wake.set()
        self.pending.append({**event, "sequence_number": self.head.last_seq + 1 + len(self.pending)})
        if len(self.pending) >= self._timings.flush_events:
            self.wake.set()

    @property
    def due(self) -> bool:
        return bool(self.pending) and (
            len(self.pending) >= self._timings.flush_events
            or time.monotonic() - self._first_pending_at >= self._timings.flush_seconds
        )

    @property
    def next_due(self) -> float:
        """Seconds until the pending batch is due (a long time when nothing is pending)."""
        if not self.pending:
            return 3600.0
        return max(0.0, self._first_pending_at + self._timings.flush_seconds - time.monotonic())

    async def flush(self, **changes: Any) -> None:
        """Write what is pending with `changes` to the head. Raises Superseded if the log is no longer ours.
        Events emitted while the write is in flight stay pending (their numbers already follow the batch's)."""
        events = list(self.pending)
        give_up_at = time.monotonic() + self._timings.storage_patience_seconds
        conflicts = failures = 0
        while True:
            try:
                self.head = await self._log.append(self.head, events, heartbeat_at=clock.now(), **changes)
                break
            except LogConflict:
                fresh = await self._log.head(self.head.run_id)
                if (
                    fresh is None
                    or fresh.is_closed
                    or (fresh.attempt, fresh.claimed_by) != (self.head.attempt, self.head.claimed_by)
                ):
                    raise Superseded(fresh) from None
                self.head = fresh  # only a watchdog note changed: still ours
                conflicts += 1
                if conflicts >= STORAGE_CONFLICT_TRIES:
                    raise Superseded(None) from None
            except AzureError:
                if time.monotonic() >= give_up_at:
                    raise
                failures += 1
                await asyncio.sleep(
                    min(
                        self._timings.storage_retry_max_seconds,
                        self._timings.storage_retry_base_seconds * 2 ** (failures - 1),
                    )
                )
        self.pending = self.pending[len(events) :]
        if self.pending:  # emitted while the batch was being written: they start the next batch now
            self._first_pending_at = time.monotonic()
        self._last_write = time.monotonic()

    async def beat(self) -> None:
        """A heartbeat when nothing was written for a while (a model thinking before its first token)."""
        if time.monotonic() - self._last_write >= self._heartbeat:
            await self.flush()


class Executor:
    def __init__(
        self,
        store: RunStore,
        events: EventLog,
        ending: RunEnding,
        model: Model,
        settings: ExecutorSettings,
        timings: Timings = Timings(),
    ) -> None:
        self._store = store
        self._log = events
        self._ending = ending
        # its model servers (PROVIDER_DEPLOYMENTS); one model call alone is the one server, `default`
        self._model = model if isinstance(model, ModelPool) else ModelPool.single(model, DEFAULT_DEPLOYMENT)
        self._settings = settings
        self.timings = timings
        self._heartbeat = max(0.2, min(5.0, settings.stale_seconds / 4))

    # -- one message ---------------------------------------------------------------------------------------------
    async def handle(
        self, data: Mapping[str, Any], *, message_id: str = "", dequeue_count: int = 1
    ) -> ExecuteOutcome | RunStatus:
        """Handle one execute message; returns what happened (for logs and tests)."""
        try:
            message = ExecuteMessage.parse(data)
        except ValueError:
            log.warning("dropping malformed execute message %r", data)
            return ExecuteOutcome.MALFORMED
        run = await self._store.get(message.run_id, with_request=True)
        if run is None:
            return ExecuteOutcome.UNKNOWN_RUN
        head = await self._log.head(run.id)
        if head is None:
            return ExecuteOutcome.NO_LOG
        if run.is_terminal:
            await self._close_quietly(head)  # followers end; nothing is left to run
            return ExecuteOutcome.ALREADY_TERMINAL
        if head.is_closed:
            return await self._finish_from_log(run, head)
        claimed = await self._claim(head, message_id, dequeue_count)
        if isinstance(claimed, ExecuteOutcome):
            return claimed
        if claimed.attempt > self._settings.max_attempts:
            return await self._give_up(run, claimed)
        return await self._execute(run, claimed)

    async def _claim(self, head: LogHead, message_id: str, dequeue_count: int) -> LogHead | ExecuteOutcome:
        """Take the next attempt, unless a live one holds the log. Returns the claimed head (its `attempt` may
        exceed the limit: the caller then fails the run) or why not."""
        for _ in range(10):
            if head.is_closed:
                return ExecuteOutcome.CLOSED
            if head.attempt > 0:
                redelivered = head.claimed_by == message_id and dequeue_count > head.claimed_dequeue
                silent = clock.now() - head.heartbeat_at > self._settings.stale_seconds
                if not (redelivered or silent):
                    return ExecuteOutcome.DUPLICATE
                how = "ended with its invocation (host stopped or failed)" if redelivered else "went silent"
                log.warning(
                    "run %s: attempt %d %s; starting attempt %d", head.run_id, head.attempt, how, head.attempt + 1
                )
            head.attempt += 1
            head.claimed_by, head.claimed_dequeue, head.heartbeat_at = message_id, dequeue_count, clock.now()
            head.status = "in_progress"
            try:
                return await self._log.save_head(head)
            except LogConflict:
                fresh = await self._log.head(head.run_id)
                if fresh is None:
                    return ExecuteOutcome.NO_LOG
                head = fresh
        return ExecuteOutcome.BUSY

    # -- running the attempts ----------------------------------------------------------------------------------
    async def _execute(self, run: Run, head: LogHead) -> ExecuteOutcome | RunStatus:
        started = time.monotonic()
        response_id = executor_response_id(run.id)
        base = response_skeleton(response_id, run.request, run.created_at)
        writer = _Writer(self._log, head, self.timings, self._heartbeat)
        restart_reason = "the host running the previous attempt stopped" if head.attempt > 1 else None
        try:
            try:
                request = await self._conversation(run)
            except HistoryTooLarge as error:
                return await self._fail(run, writer, base, ErrorCode.HISTORY_TOO_LARGE, str(error))
            except ProviderError as error:
                return await self._fail(run, writer, base, ErrorCode.INVALID_CONVERSATION, error.message)
            await self._mark_in_progress(run)
            while True:
                if restart_reason:
                    writer.emit(
                        {"type": OUTPUT_RESTARTED_EVENT, "attempt": writer.head.attempt, "reason": restart_reason}
                    )
                writer.emit({"type": "response.in_progress", "response": with_status(base, "in_progress")})
                await writer.flush()
                try:
                    return await self._call(run, writer, request, base, started)
                except _Cut as cut:
                    restart_reason = cut.reason
                if writer.head.attempt >= self._settings.max_attempts:
                    return await self._fail(
                        run, writer, base, ErrorCode.MODEL_CALL_INTERRUPTED, self._exhausted(restart_reason)
                    )
                await writer.flush(attempt=writer.head.attempt + 1)
                log.info("run %s: %s; attempt %d", run.id, restart_reason, writer.head.attempt)
        except Superseded as superseded:
            closed = superseded.head is not None and superseded.head.is_closed
            log.info(
                "run %s: attempt %d stops: %s",
                run.id,
                head.attempt,
                "the log was closed (cancel)" if closed else "a newer attempt owns the log",
            )
            return ExecuteOutcome.STOPPED if closed else ExecuteOutcome.SUPERSEDED

    async def _call(
        self, run: Run, writer: _Writer, request: ModelRequest, base: dict[str, Any], started: float
    ) -> ExecuteOutcome | RunStatus:
        """One attempt's call, with retries before any output: how the run went. Raises _Cut when the stream
        broke after output began (the attempt is over)."""
        for tries in range(1, PROVIDER_TRIES + 1):
            try:
                terminal = await self._stream(run, writer, request, base, started)
            except _Stop as stop:
                return await self._stopped(run, writer, base, stop.reason)
            except ProviderError as error:
                if not error.transient:
                    return await self._fail(
                        run,
                        writer,
                        base,
                        ErrorCode.PROVIDER_ERROR,
                        f"The model provider refused the call ({error.status}): {error.message}",
                    )
                if tries == PROVIDER_TRIES:
                    return await self._fail(
                        run,
                        writer,
                        base,
                        ErrorCode.PROVIDER_UNAVAILABLE,
                        f"The model provider kept failing ({tries} tries): {error.message}",
                    )
                delay = min(
                    MAX_BACKOFF_SECONDS, self.timings.retry_backoff.delay(tries - 1, retry_after=error.retry_after)
                )
                log.info("run %s: provider hiccup before output (%s); retrying in %.1fs", run.id, error.message, delay)
                try:
                    await self._pause(delay, run, writer, started)
                except _Stop as stop:
                    return await self._stopped(run, writer, base, stop.reason)
                continue
            await writer.flush(status=terminal["response"]["status"])
            await self._end(run, ProviderEnded(terminal["response"]))
            return RunStatus(terminal["response"]["status"])
        raise AssertionError("unreachable")

    async def _stream(
        self, run: Run, writer: _Writer, request: ModelRequest, base: dict[str, Any], started: float
    ) -> dict[str, Any]:
        """Stream the call into the writer; returns the terminal event. Raises _Stop (the run must stop),
        _Cut (the stream broke after output began) or ProviderError (it broke or was refused before)."""
        produced: dict[str, Any] = {"output": False, "terminal": None, "server": None}
        noted = run.deployment

        def served_by(server: str) -> None:
            produced["server"] = server

        async def produce() -> None:
            async for event in self._model.stream(request, base, api=writer.head.api or None, served_by=served_by):
                writer.emit(event)
                if event["type"] == "response.output_item.added":
                    produced["output"] = True
                if is_terminal_event(event["type"]):
                    produced["terminal"] = writer.pending[-1]
                    return

        producer = asyncio.create_task(produce())
        next_check = time.monotonic() + self.timings.check_seconds
        try:
            while not producer.done():
                woken = asyncio.create_task(writer.wake.wait())
                timeout = max(0.0, min(writer.next_due, next_check - time.monotonic()))
                await asyncio.wait({producer, woken}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                woken.cancel()
                writer.wake.clear()  # the state (pending, its age) is read afresh below
                if producer.done():
                    break
                if writer.due:
                    await writer.flush()
                if produced["server"] not in (None, noted):
                    noted = await self._note_server(run, produced["server"])
                if time.monotonic() >= next_check:
                    next_check = time.monotonic() + self.timings.check_seconds
                    await self._check(run, started)
                    await writer.beat()
            error = producer.exception()
            if produced["server"] not in (None, noted):  # a call that ended before the loop looked
                await self._note_server(run, produced["server"])
        finally:
            if not producer.done():
                producer.cancel()  # closes the model's HTTP stream: the call stops here
                await asyncio.gather(producer, return_exceptions=True)
        if error is None and produced["terminal"] is None:
            error = ProviderError(transient=True, status=None, message="the model stream ended early")
        if error is not None:
            if not isinstance(error, ProviderError):
                raise error
            if produced["output"] and error.transient:
                await writer.flush()  # keep what the failed attempt produced; the restart event follows it
                raise _Cut(error.message) from None
            raise error
        terminal: dict[str, Any] = produced["terminal"]
        return terminal

    async def _check(self, run: Run, started: float) -> None:
        """Raise _Stop when the run must stop: ended elsewhere, past its deadline, or out of function time."""
        try:
            fresh = await self._store.get(run.id)
        except AzureError:  # a storage hiccup is no reason to drop the call: look again at the next check
            fresh = run
        if fresh is None or fresh.is_terminal:
            raise _Stop("stopped")
        if clock.now() >= run.deadline_at:
            raise _Stop("deadline")
        budget = self._budget()
        if budget is not None and time.monotonic() - started >= budget:
            raise _Stop("budget")

    async def _pause(self, seconds: float, run: Run, writer: _Writer, started: float) -> None:
        end = time.monotonic() + seconds
        while (remaining := end - time.monotonic()) > 0:
            await asyncio.sleep(min(self.timings.check_seconds, remaining))
            await self._check(run, started)
            await writer.beat()

    async def _mark_in_progress(self, run: Run) -> None:
        """The run reads in_progress from its attempt's start, not from the poll chain's next step (seconds later,
        while its tokens already stream): one conditional write per attempt, none per batch."""
        for _ in range(3):
            if run.status != "queued":
                return
            run.status = "in_progress"
            try:
                await self._store.save_chain(run)
                return
            except RunConflict:  # the poll chain or a cancel wrote meanwhile: look again
                latest = await self._store.get(run.id)
                if latest is None:
                    return
                run = latest
            except AzureError:  # a storage hiccup: the poll chain sets it at its next look (within a minute)
                return

    async def _note_server(self, run: Run, server: str) -> str:
        """Record on the run the model server that serves this attempt (GET's `deployment`; an executor run is not
        pinned, so a later attempt may be served elsewhere): one conditional write when it changes."""
        for _ in range(3):
            try:
                latest = await self._store.get(run.id)
                if latest is None or latest.is_terminal or latest.deployment == server:
                    break
                latest.deployment = server
                await self._store.save(latest)
                break
            except RunConflict:  # the poll chain wrote meanwhile: look again
                continue
            except AzureError:  # a storage hiccup: the next attempt (or none) records it
                break
        run.deployment = server
        return server

    # -- ending ----------------------------------------------------------------------------------------------------
    async def _stopped(
        self, run: Run, writer: _Writer, base: dict[str, Any], reason: str
    ) -> ExecuteOutcome | RunStatus:
        if reason == "budget":
            return await self._fail(run, writer, base, ErrorCode.FUNCTION_TIMEOUT, self._budget_message())
        await writer.flush()  # what was produced before the stop stays in the log
        if reason == "deadline":
            await self._end(run, DeadlinePassed())
        await writer.flush(status=RunStatus.CANCELLED.value)  # close the log: followers end, the relay sends the end
        return RunStatus.EXPIRED if reason == "deadline" else ExecuteOutcome.STOPPED

    async def _fail(self, run: Run, writer: _Writer, base: dict[str, Any], code: ErrorCode, message: str) -> RunStatus:
        log.warning("run %s fails: %s", run.id, message)
        event = failed_event(base, code, message)
        writer.emit(event)
        await writer.flush(status=RunStatus.FAILED.value)
        await self._end(run, ProviderEnded(event["response"]))
        return RunStatus.FAILED

    async def _give_up(self, run: Run, head: LogHead) -> ExecuteOutcome | RunStatus:
        base = response_skeleton(executor_response_id(run.id), run.request, run.created_at)
        writer = _Writer(self._log, head, self.timings, self._heartbeat)
        try:
            return await self._fail(
                run, writer, base, ErrorCode.MODEL_CALL_INTERRUPTED, self._exhausted("the host running it stopped")
            )
        except Superseded:
            return ExecuteOutcome.STOPPED

    def _exhausted(self, last: str) -> str:
        limit = self._settings.max_attempts
        return (
            f"The model call was started {limit} times and did not finish (last: {last}); "
            f"EXECUTOR_MAX_ATTEMPTS is {limit}."
        )

    async def _end(self, run: Run, observed: Observed) -> None:
        """End the run through runs.ending, which makes the webhook's first attempt here."""
        fresh = await self._store.get(run.id, with_result=True) or run
        fresh.response_id = fresh.response_id or executor_response_id(run.id)  # the start may not have saved it yet
        fresh.deployment = run.deployment or fresh.deployment  # the server noted by this attempt (_note_server)
        await self._ending.end(fresh, observed)

    async def _finish_from_log(self, run: Run, head: LogHead) -> ExecuteOutcome | RunStatus:
        """The log ended but the run did not (a crash between the two): end it as the log says."""
        final = await self._log.final_response(head)
        if final is None:
            await self._end(run, Cancelled())
            return RunStatus.CANCELLED
        await self._end(run, ProviderEnded(final))
        return ExecuteOutcome.FINISHED_FROM_LOG

    async def _close_quietly(self, head: LogHead) -> None:
        if head.is_closed:
            return
        head.status = "cancelled"
        try:
            await self._log.save_head(head)
        except LogConflict:
            pass  # someone else is closing or writing it

    # -- time ------------------------------------------------------------------------------------------------------
    def _budget(self) -> float | None:
        """Seconds this invocation may run the call: functionTimeout less a margin to save the result."""
        timeout = self._settings.function_timeout_seconds
        if timeout is None:
            return None
        return timeout - self._margin(timeout)

    @staticmethod
    def _margin(timeout: float) -> float:
        return min(30.0, timeout * 0.1)

    def _budget_message(self) -> str:
        timeout = self._settings.function_timeout_seconds or 0.0
        return (
            f"The model call did not finish within {timeout - self._margin(timeout):.0f} s, the most one executor "
            f"invocation may run: host.json functionTimeout is {timeout:.0f} s and {self._margin(timeout):.0f} s "
            "are kept to save the result. Raise functionTimeout in host.json (on Flex Consumption it may be "
            "unbounded, -1) or shorten the run."
        )

    # -- the conversation --------------------------------------------------------------------------------------------
    async def _conversation(self, run: Run) -> ModelRequest:
        """The call's input: the session's earlier turns (their inputs and outputs, oldest first) and this one.
        Chat Completions keeps no state, so `previous_response_id` is followed here, through our own runs."""
        history = await self._earlier_turns(run)
        return ModelRequest(run.request, history + input_items(run.request.get("input")))

    async def _earlier_turns(self, run: Run) -> list[dict[str, Any]]:
        """The earlier turns, read newest first up to MAX_HISTORY_TURNS turns and MAX_HISTORY_BYTES of JSON: no
        further, so what one call holds in memory is bounded (_beyond_the_limit says what then)."""
        turns: list[list[dict[str, Any]]] = []  # newest first
        size, previous = 0, run.request.get("previous_response_id")
        while previous:
            if len(turns) == MAX_HISTORY_TURNS:
                return self._beyond_the_limit(run, turns, f"more than {MAX_HISTORY_TURNS} earlier turns")
            turn, previous_of_turn = await self._turn(previous)
            size += len(json.dumps(turn, ensure_ascii=False).encode("utf-8"))
            if size > MAX_HISTORY_BYTES:
                return self._beyond_the_limit(run, turns, f"more than {_mib(MAX_HISTORY_BYTES)} of earlier turns")
            turns.append(turn)
            previous = previous_of_turn
        return [item for turn in reversed(turns) for item in turn]

    async def _turn(self, response_id: str) -> tuple[list[dict[str, Any]], str | None]:
        """One earlier turn's input and output items, and the response it continued."""
        if not is_executor_id(response_id):
            raise ProviderError(
                transient=False,
                status=400,
                message=(
                    f"previous_response_id {response_id} was not made by the executor, so it cannot be continued here"
                ),
            )
        earlier = await self._store.get(run_id_of(response_id), with_request=True, with_result=True)
        if earlier is None or earlier.result is None:
            raise ProviderError(transient=False, status=404, message=f"the previous response {response_id} is gone")
        items = input_items(earlier.request.get("input")) + continuation_items(earlier.result.get("output"))
        return items, earlier.request.get("previous_response_id")

    @staticmethod
    def _beyond_the_limit(run: Run, turns: list[list[dict[str, Any]]], over: str) -> list[dict[str, Any]]:
        """A session longer than the executor loads. As a model server refuses a prompt too long for it rather than
        forget part of it, the turn fails (HistoryTooLarge), unless it asked for truncation "auto" (the Responses
        API's "drop items from the beginning of the conversation"): then the turns that did not fit are left out,
        oldest first and whole, and so are tool results at the new beginning whose calls were left out."""
        if run.request.get("truncation") != "auto":
            raise HistoryTooLarge(
                f"This turn continues {over}, more than the executor sends to the model in one call "
                f"({MAX_HISTORY_TURNS} turns, {_mib(MAX_HISTORY_BYTES)}). Start a new session, or set "
                "truncation to 'auto' to leave the oldest turns out."
            )
        log.info("run %s: %s; the older turns are left out (truncation auto)", run.id, over)
        history = [item for turn in reversed(turns) for item in turn]
        while history and (history[0].get("type") or "message") != "message":
            history.pop(0)
        return history


def _mib(size: int) -> str:
    return f"{size / 2**20:.3g} MiB"


class HistoryTooLarge(Exception):
    """A session's earlier turns exceed what the executor loads for one call (MAX_HISTORY_TURNS, MAX_HISTORY_BYTES)."""


class _Cut(Exception):
    """The model stream broke after output began: the attempt is over (`reason` says why, for the next one)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
