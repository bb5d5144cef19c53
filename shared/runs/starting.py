"""Starting a run, so that no run is ever lost or silent.

What the backend cannot honour (a parameter the executor's model API has no equivalent for) is refused first,
before anything is written. Order: reserve the session (if any), note the run as open work, record the run,
create the provider response (background, our run id in its metadata, never retried), save the response id with
the first poll message.
If the provider refuses, the run is deleted again (only if nobody changed it meanwhile) and the caller gets
the provider's answer: nothing half-written. A start cut between the steps (a crash) is found by the sweeper
and ends `failed` with `start_interrupted`. If the run was ended while its start was in flight (a cancel, or
the sweeper giving up on a slow start), the provider response is cancelled too.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from .. import clock, telemetry
from ..errors import Conflict, InvalidRequest, NotFound, ServiceError, Unavailable, UpstreamError, not_found
from ..provider import ProviderError, RequestRefused, RunBackend
from ..provider.backend import EventStream
from ..settings import Settings
from ..webhooks import DestinationRefused, ResolutionFailed, check_url, resolve_and_vet
from .callers import OPERATOR, Caller
from .idempotency import IdempotencyStore
from .index import RunIndex
from .lifecycle import RunLifecycle
from .model import Run
from .poll_chain import Backoff, PollScheduler
from .requests import RUN_ID_PREFIX, RunRequest, new_run_id, valid_id
from .results import response_snapshot, result_from_response
from .sessions import Session, SessionConflict, SessionStore
from .store import RunStore

log = logging.getLogger("bgruns.starting")


@dataclass
class Started:
    """The started run (or, for a repeated Idempotency-Key, the existing one)."""

    run: Run
    events: EventStream | None = None  # for streaming starts: the provider's event stream, already open


class RunStarter:
    def __init__(self, settings: Settings, store: RunStore, sessions: SessionStore, idempotency: IdempotencyStore,
                 index: RunIndex, backend: RunBackend, scheduler: PollScheduler, lifecycle: RunLifecycle,
                 backoff: Backoff) -> None:
        self._settings = settings
        self._store = store
        self._sessions = sessions
        self._idempotency = idempotency
        self._index = index
        self._backend = backend
        self._scheduler = scheduler
        self._lifecycle = lifecycle
        self._backoff = backoff
        # A start takes at most one provider call plus a few storage writes; a run still without a provider
        # response well after that was interrupted (crash), and its reservations can be taken over.
        self.start_grace = 2 * settings.provider.timeout_seconds + 5

    async def start(self, request: RunRequest, *, caller: Caller = OPERATOR, idempotency_key: str | None = None,
                    wait_seconds: float = 0.0) -> Started:
        """Start a run for `caller` (its owner). A repeated Idempotency-Key of the same caller returns its run."""
        self._check(request)
        if request.webhook_url:
            await self._vet_webhook(request.webhook_url)
        previous_response_id = await self._previous_response_id(request, caller)
        created_at = clock.now()
        run_id = new_run_id(created_at)
        if idempotency_key is not None:
            existing = await self._claim(idempotency_key, request, run_id, caller)
            if existing is not None:
                return Started(existing)
        try:
            run, events = await self._start(run_id, created_at, request, caller, previous_response_id)
        except BaseException:
            if idempotency_key is not None:
                await self._release(idempotency_key, run_id, caller)
            raise
        if wait_seconds > 0 and run.is_active:
            run = await self._wait_briefly(run, min(wait_seconds, self._settings.max_prefer_wait))
        return Started(run, events)

    async def open_session(self) -> Session:
        session = await self._sessions.create()
        await self._index.expire_at("session", session.id, session.created_at + self._settings.retention_seconds)
        return session

    def _check(self, request: RunRequest) -> None:
        """What the backend cannot honour is refused before anything is written (the executor's model API may not
        take every parameter): OpenAI's 400 naming the parameter."""
        try:
            self._backend.check(self._provider_params(request, "", None))
        except RequestRefused as refused:
            raise InvalidRequest(refused.code, refused.message, param=refused.param) from None

    # -- the steps ------------------------------------------------------------------------------------------
    async def _start(self, run_id: str, created_at: float, request: RunRequest, caller: Caller,
                     previous_response_id: str | None) -> tuple[Run, EventStream | None]:
        session = await self._reserve_session(request.session_id, run_id) if request.session_id else None
        if session:
            previous_response_id = session.last_response_id
        params = self._provider_params(request, run_id, previous_response_id)
        deadline = min(request.deadline_seconds or self._settings.run_deadline, self._settings.run_deadline)
        run = Run(id=run_id, status="queued", created_at=created_at, model=params["model"], request=params,
                  session_id=request.session_id, metadata=request.metadata, stream=request.stream,
                  next_poll_at=created_at + self.start_grace, deadline_at=created_at + deadline,
                  webhook_url=request.webhook_url, owner=caller.owner, previous_run_id=request.previous_run_id,
                  backend=getattr(self._backend, "kind", "background"))
        telemetry.run_created(run)
        await self._index.mark_open(run_id)
        await self._store.create(run)
        await self._index.list_run(run)
        if session:
            await self._sessions.add_run(session.id, run_id, created_at)
        watching = self._settings.completion.strategy == "watch"
        try:  # the poll chain can only watch a response created streaming
            started = await self._backend.start(params, stream=request.stream or watching)
        except ProviderError as error:
            await self._abandon(run)
            raise _start_error(error) from None
        run.response_id = started.state.response_id
        if started.events is not None and not request.stream:
            await started.events.close()
            started.events = None
        try:
            if self._settings.completion.strategy == "push":  # a provider webhook names only the response
                await self._index.remember_response(run.response_id, run_id)
            return await self._record_response(run, started), started.events
        except BaseException:
            # Storage failed after the provider accepted: stop that response rather than leave an orphan; the
            # run (never saved with its response id) is failed by the sweeper as an interrupted start.
            log.warning("run %s: storage failed after the provider accepted %s; cancelling it", run_id, run.response_id)
            await self._cancel_quietly(run.response_id)
            if started.events is not None:
                await started.events.close()
            raise

    async def _record_response(self, run: Run, started) -> Run:
        state = started.state
        run.response = response_snapshot(state.response)
        if not state.is_active:
            status, result = result_from_response(state.response)
            return await self._lifecycle.finish(run, status, result)
        if await self._scheduler.schedule(run, self._backoff.delay(0), status=state.status, event="provider_accepted",
                                          save_all=True):
            return run
        # The run changed while its start was in flight: cancelled, or failed by the sweeper as too slow.
        fresh = await self._store.get(run.id, with_result=True)
        if fresh is None or fresh.is_terminal:
            await self._cancel_quietly(run.response_id)
        return fresh or run

    def _provider_params(self, request: RunRequest, run_id: str, previous_response_id: str | None) -> dict[str, Any]:
        params: dict[str, Any] = {
            **request.options,  # pass-through parameters first: the service's own below always win
            "model": request.model or self._settings.provider.default_model,
            "input": request.input,
            "metadata": {**request.metadata, "bg_run_id": run_id},
            "store": True,
        }
        optional = {"instructions": request.instructions, "tools": request.tools or None,
                    "max_output_tokens": request.max_output_tokens, "reasoning": request.reasoning,
                    "previous_response_id": previous_response_id}
        params.update({k: v for k, v in optional.items() if v is not None})
        return params

    async def _abandon(self, run: Run) -> None:
        """The provider refused the create: delete the run, unless someone ended it meanwhile (a cancel)."""
        if await self._store.delete(run):
            await self._index.unlist(run)
            await self._index.mark_done(run.id)
            if run.session_id:
                await self._lifecycle.advance_session(run)

    async def _cancel_quietly(self, response_id: str) -> None:
        try:
            await self._backend.cancel(response_id)
        except ProviderError as error:
            log.warning("could not cancel orphaned provider response %s: %s", response_id, error.message)

    async def _previous_response_id(self, request: RunRequest, caller: Caller) -> str | None:
        """The provider response a run continues from when it names a previous run (visible to the caller)."""
        if request.previous_run_id is None:
            return None
        if request.session_id is not None:
            raise InvalidRequest("invalid_request", "A run continues either a session or a previous run, not both.",
                                 param="previous_response_id")
        previous = await self._store.get(request.previous_run_id) if valid_id(RUN_ID_PREFIX, request.previous_run_id) \
            else None
        if previous is None or not caller.can_see(previous) or not previous.response_id:
            raise NotFound("previous_response_not_found",
                           f"Previous response with id '{request.previous_run_id}' not found.",
                           param="previous_response_id")
        return previous.response_id

    # -- idempotency ----------------------------------------------------------------------------------------
    async def _claim(self, key: str, request: RunRequest, run_id: str, caller: Caller) -> Run | None:
        """Claim the Idempotency-Key for `run_id`; the run that already holds it, if any."""
        claim = await self._idempotency.claim(key, request.fingerprint(), run_id, scope=caller.owner)
        if claim.is_new:
            await self._index.expire_at("idempotency", claim.digest, clock.now() + self._idempotency.window)
            return None
        existing = await self._store.get(claim.run_id, with_result=True)
        # A run the provider has not accepted yet may still be deleted (its start refused): never hand it out.
        # One that stays so is failed by the sweeper after the start grace, and is handed out then.
        if existing is not None and (existing.response_id or existing.is_terminal):
            return existing
        if existing is not None:
            raise Conflict("idempotency_key_busy", "A run with this Idempotency-Key is being started; retry shortly.",
                           param="Idempotency-Key", retry_after=1)
        # The key is held by a start that has not recorded its run. Right after the claim that is a start in
        # progress; after the start grace it is a start that died, and the key is free again.
        if clock.now() - claim.claimed_at > self.start_grace and await self._idempotency.take_over(
                key, request.fingerprint(), run_id, claim):
            return None
        raise Conflict("idempotency_key_busy", "A run with this Idempotency-Key is being started; retry shortly.",
                       param="Idempotency-Key", retry_after=1)

    async def _release(self, key: str, run_id: str, caller: Caller) -> None:
        try:
            await self._idempotency.release(key, run_id, scope=caller.owner)
        except Exception:  # noqa: BLE001 - the key is taken over after the start grace anyway
            log.warning("could not release the Idempotency-Key of failed start %s", run_id)

    # -- sessions -------------------------------------------------------------------------------------------
    async def _reserve_session(self, session_id: str, run_id: str) -> Session:
        """Make `run_id` the session's one active run. The active run named by the session holds it while it
        is active, and also while it is not recorded yet (a start in flight) unless that reservation is older
        than the start grace (a start that died). One that ended without advancing the session (a crash) is
        repaired here."""
        for _ in range(5):
            session = await self._sessions.get(session_id)
            if session is None:
                raise not_found("session", session_id)
            if session.active_run_id:
                active = await self._store.get(session.active_run_id)
                if active is not None and active.is_terminal:
                    await self._lifecycle.advance_session(active)
                    continue
                if active is not None or clock.now() - session.active_since <= self.start_grace:
                    raise Conflict("session_busy", f"Session {session_id!r} has a run in progress "
                                   f"({session.active_run_id}); wait for it or cancel it.", param="session_id",
                                   retry_after=1)
            session.active_run_id, session.active_since = run_id, clock.now()
            try:
                await self._sessions.save(session)
                return session
            except SessionConflict:
                continue
        raise Conflict("session_busy", f"Session {session_id!r} is being changed concurrently; retry.",
                       param="session_id", retry_after=1)

    # -- Prefer: wait -----------------------------------------------------------------------------------------
    async def _wait_briefly(self, run: Run, seconds: float) -> Run:
        """Look at the provider a few times so a quick run answers 200 at once."""
        deadline = clock.now() + seconds
        delay = 0.25
        while clock.now() < deadline:
            await asyncio.sleep(min(delay, max(0.0, deadline - clock.now())))
            delay = min(delay * 1.5, 2.0)
            try:
                state = await self._backend.observe(run.response_id)
            except ProviderError:  # the poll chain will retry; this is only a shortcut
                break
            if not state.is_active:
                fresh = await self._store.get(run.id, with_result=True)
                if fresh is None or fresh.is_terminal:
                    return fresh or run
                status, result = result_from_response(state.response)
                return await self._lifecycle.finish(fresh, status, result)
        return await self._store.get(run.id, with_result=True) or run

    # -- webhooks ---------------------------------------------------------------------------------------------
    async def _vet_webhook(self, url: str) -> None:
        settings = self._settings
        if not settings.webhook_secrets:
            raise InvalidRequest("webhooks_disabled", "This service has no webhook signing secret configured, so it "
                                 "cannot send webhooks (set WEBHOOK_SIGNING_SECRETS).", param="webhook_url")
        try:
            parsed = check_url(url, allow_http=settings.webhook_allow_http, allow_private=settings.webhook_allow_private)
            await resolve_and_vet(parsed, allow_private=settings.webhook_allow_private)
        except DestinationRefused as refused:
            raise InvalidRequest("invalid_webhook_url", f"webhook_url refused: {refused}", param="webhook_url") from None
        except ResolutionFailed as failed:
            raise InvalidRequest("invalid_webhook_url", f"webhook_url refused: its host does not resolve ({failed})",
                                 param="webhook_url") from None


def _start_error(error: ProviderError) -> ServiceError:
    if error.transient:
        return Unavailable("provider_unavailable", f"The model provider is unavailable: {error.message}",
                           retry_after=max(1, round(error.retry_after or 5)))
    if error.status in (400, 404, 422):
        return InvalidRequest("provider_rejected", f"The model provider rejected the request: {error.message}")
    return UpstreamError("provider_error", f"The model provider refused the request ({error.status}): {error.message}")

