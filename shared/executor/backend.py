"""The executor as a RunBackend: runs the function app performs itself, for models without a background mode.

`start` records nothing at a provider: it opens the run's event log (response.created, response.queued) and
queues an execute message; the response id is the executor's own (`exec_` + the run id's hex), so every later
call finds the log from the id alone. `observe` reads the log's head (and, once it is closed, its final
response); `cancel` closes the log, which the running attempt notices at its next write; `events` follows the
log. So the poll chain, the relay, cancel, deadlines and webhooks work for executor runs unchanged.

The poll chain doubles as the executor's watchdog: when `observe` finds an attempt silent for longer than
EXECUTOR_STALE_SECONDS (its host died: on Azure the queue message it held stays invisible for up to 10
minutes), it queues the run again, and the executor starts the next attempt. While no attempt has begun, the chain
looks only once a minute (runs.polling.EXECUTOR_WAITING_LOOK_SECONDS): the run can only wait or expire.

`BackendRouter` puts both backends behind the one seam: new runs go to the configured one, everything else by
the response id, so runs started before RUN_BACKEND changed finish where they began.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .. import clock
from ..provider import ANYWHERE, Candidate, ProviderError, ProviderState, RunBackend, StartedResponse
from ..provider.backend import EventStream
from ..responses_vocabulary import RunStatus
from ..runs.requests import RUN_ID_PREFIX, valid_id
from ..runs.store import RunStore
from ..settings import DEFAULT_DEPLOYMENT
from ..storage import Queue
from .event_log import EventLog, LogConflict, LogHead, PolledLogStream
from .model_client import Model
from .model_request import response_skeleton

log = logging.getLogger("bgruns.executor_backend")

EXECUTOR_ID_PREFIX = "exec_"
# A run whose execute message no attempt has claimed for this long lost that message: queue it again.
UNCLAIMED_REDISPATCH_SECONDS = 300.0


def executor_response_id(run_id: str) -> str:
    return EXECUTOR_ID_PREFIX + run_id.removeprefix(RUN_ID_PREFIX)


def is_executor_id(response_id: str | None) -> bool:
    return response_id is not None and response_id.startswith(EXECUTOR_ID_PREFIX)


def run_id_of(response_id: str) -> str:
    return RUN_ID_PREFIX + response_id.removeprefix(EXECUTOR_ID_PREFIX)


@dataclass(frozen=True)
class ExecuteMessage:
    run_id: str

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id}

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> ExecuteMessage:
        """Raises ValueError for a malformed message."""
        run_id = data.get("run_id") if isinstance(data, Mapping) else None
        if not isinstance(run_id, str) or not valid_id(RUN_ID_PREFIX, run_id):
            raise ValueError(f"not an execute message: {data!r}")
        return cls(run_id)


class ExecutorBackend:
    kind = "executor"

    def __init__(self, events: EventLog, store: RunStore, queue: Queue, model: Model, *, stale_seconds: float) -> None:
        self._log = events
        self._store = store
        self._queue = queue  # EXECUTE_QUEUE
        self._model = model  # only its `check` and `api` are used here
        self._stale = stale_seconds

    def check(self, params: dict[str, Any]) -> None:
        """Refuse what the model API cannot take (RequestRefused), before the start writes anything."""
        self._model.check(params)

    def candidates(self, pinned: str | None = None) -> list[Candidate]:
        """The executor calls its one model server (the deployments are the background mode's)."""
        return [ANYWHERE]

    async def start(self, params: dict[str, Any], *, stream: bool, deployment: str | None = None) -> StartedResponse:
        """Open the log and queue the run (`check` has passed)."""
        run_id = params["metadata"]["bg_run_id"]
        response_id = executor_response_id(run_id)
        base = response_skeleton(response_id, params, clock.now())
        await self._log.create(
            run_id,
            [{"type": "response.created", "response": base}, {"type": "response.queued", "response": base}],
            api=getattr(self._model, "api", ""),
        )
        try:
            await self._queue.send(ExecuteMessage(run_id).to_dict())
        except Exception:  # no attempt will ever run it: the start fails, and leaves no log behind
            await self._log.purge(run_id)
            raise
        # A streaming start follows the log (events()).
        return StartedResponse(ProviderState(response_id, RunStatus.QUEUED.value, base))

    async def observe(self, response_id: str, *, deployment: str = DEFAULT_DEPLOYMENT) -> ProviderState:
        head = await self._head(response_id)
        if head.is_closed:
            return await self._closed_state(response_id, head)
        if self._is_silent(head):
            await self._dispatch_again(head)
        return ProviderState(response_id, head.status, _brief(response_id, head.status))

    async def cancel(self, response_id: str, *, deployment: str = DEFAULT_DEPLOYMENT) -> ProviderState | None:
        """Close the log (the running attempt stops at its next write or check); a log that already ended keeps
        its end, which the caller reports instead of a cancel."""
        for _ in range(10):
            head = await self._log.head(run_id_of(response_id))
            if head is None:
                return None
            if head.is_closed:
                return await self._closed_state(response_id, head)
            head.status = "cancelled"
            try:
                await self._log.save_head(head)
            except LogConflict:
                continue  # the attempt wrote meanwhile: look again
            return ProviderState(response_id, "cancelled", _brief(response_id, "cancelled"))
        raise ProviderError(transient=True, status=None, message="the run's log kept changing; cancel again")

    async def delete(self, response_id: str, *, deployment: str = DEFAULT_DEPLOYMENT) -> None:
        """The executor's stored response is its event log: delete it."""
        await self._log.purge(run_id_of(response_id))

    async def events(self, response_id: str, after: int, *, deployment: str = DEFAULT_DEPLOYMENT) -> PolledLogStream:
        run_id = run_id_of(response_id)

        async def run_ended() -> bool:
            run = await self._store.get(run_id)
            return run is None or run.is_terminal

        return PolledLogStream(self._log, run_id, after, run_ended)

    # -- helpers -----------------------------------------------------------------------------------------------
    async def _head(self, response_id: str) -> LogHead:
        head = await self._log.head(run_id_of(response_id))
        if head is None:
            raise ProviderError(transient=False, status=404, message=f"the executor has no log for {response_id}")
        return head

    async def _closed_state(self, response_id: str, head: LogHead) -> ProviderState:
        final = await self._log.final_response(head)
        if final is None:  # closed without a terminal event: stopped by a cancel (or at a deadline)
            final = _brief(response_id, "cancelled")
        return ProviderState(response_id, final.get("status") or head.status, final)

    def _is_silent(self, head: LogHead) -> bool:
        """An attempt that stopped giving signs of life. A run no attempt has claimed yet is waiting in the queue
        (a backlog: queueing it again would only grow it); only a wait far longer than that means its message
        was lost."""
        now = clock.now()
        stale = self._stale if head.claimed_by else max(10 * self._stale, UNCLAIMED_REDISPATCH_SECONDS)
        return now - head.heartbeat_at > stale and now - head.dispatched_at > stale

    async def _dispatch_again(self, head: LogHead) -> None:
        """Queue the run again (once per stale period): its attempt went silent, so its host is presumed dead."""
        log.warning(
            "run %s: attempt %d silent for %.0f s; queueing it again",
            head.run_id,
            head.attempt,
            clock.now() - head.heartbeat_at,
        )
        head.dispatched_at = clock.now()
        try:
            await self._log.save_head(head)
        except LogConflict:
            return  # it moved meanwhile: alive after all, or someone else dispatched it
        await self._queue.send(ExecuteMessage(head.run_id).to_dict())


def _brief(response_id: str, status: str) -> dict[str, Any]:
    """The response of a run still going or stopped without output worth keeping: what observers read of it."""
    return {
        "id": response_id,
        "object": "response",
        "status": status,
        "output": [],
        "error": None,
        "incomplete_details": None,
        "usage": None,
    }


class BackendRouter:
    """The one RunBackend the service uses: starts with the configured backend, and sends every later call to
    the backend that made the response (executor ids start with `exec_`)."""

    def __init__(self, background: RunBackend, executor: RunBackend, default: str) -> None:
        self._background = background
        self._executor = executor
        self.kind = default
        self._starting = executor if default == "executor" else background

    def _for(self, response_id: str) -> RunBackend:
        return self._executor if is_executor_id(response_id) else self._background

    def check(self, params: dict[str, Any]) -> None:
        self._starting.check(params)

    def candidates(self, pinned: str | None = None) -> list[Candidate]:
        return self._starting.candidates(pinned)

    async def start(self, params: dict[str, Any], *, stream: bool, deployment: str | None = None) -> StartedResponse:
        if deployment is None:  # placed by the backend (a test's stand-in backend may know no deployments)
            return await self._starting.start(params, stream=stream)
        return await self._starting.start(params, stream=stream, deployment=deployment)

    async def observe(self, response_id: str, *, deployment: str = DEFAULT_DEPLOYMENT) -> ProviderState:
        return await self._for(response_id).observe(response_id, deployment=deployment)

    async def cancel(self, response_id: str, *, deployment: str = DEFAULT_DEPLOYMENT) -> ProviderState | None:
        return await self._for(response_id).cancel(response_id, deployment=deployment)

    async def events(self, response_id: str, after: int, *, deployment: str = DEFAULT_DEPLOYMENT) -> EventStream:
        return await self._for(response_id).events(response_id, after, deployment=deployment)

    async def delete(self, response_id: str, *, deployment: str = DEFAULT_DEPLOYMENT) -> None:
        await self._for(response_id).delete(response_id, deployment=deployment)
