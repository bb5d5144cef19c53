"""Starting a run, so that no run is ever lost or silent.

What the backend cannot honour (a parameter the executor's model API has no equivalent for) is refused first,
before anything is written. Order: claim the Idempotency-Key (if any), admit the start against its caller's
quota (runs.quotas: a 429 over it, and nothing kept), reserve the session (if any), note the run as open work,
record the run, create the provider response (background, our run id in its metadata, never retried), save the
response id with the first poll message. A create the provider has no capacity for
(429/503), or that the provider pacing gives a later slot (runs.pacing), queues the run instead (runs.admission):
it is accepted, and started later.
A start that fails at any step, for any reason (the provider refusing, storage failing, a bug), takes back
everything it wrote: the provider response is cancelled and deleted, the run goes with its rows in the index
(open work, run lists, provider response, retention date) and in its session, the session's reservation is
given back, so is the caller's quota slot, and the Idempotency-Key is released; no webhook is sent, and the caller
gets the error. Only a run that somebody else ended meanwhile (a cancel, the sweeper) stays, and tells its webhook
so; the key then names it. A start cut by a crash (or cancelled, which is treated alike) runs no code to take
anything back: the sweeper finds it and ends it `failed` with `start_interrupted`. If the run was ended while its
start was in flight (a cancel, or the sweeper giving up on a slow start), the provider response is cancelled too,
and deleted if the run was deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

from .. import clock, telemetry
from ..errors import Conflict, InvalidRequest, NotFound, ServiceError, Unavailable, UpstreamError, not_found
from ..provider import ProviderError, RequestRefused, RunBackend, StartedResponse
from ..provider.backend import EventStream
from ..settings import DEFAULT_DEPLOYMENT
from .admission import RunAdmission
from .callers import OPERATOR, Caller
from .ending import ProviderEnded, RunEnding
from .idempotency import IdempotencyStore
from .index import RunIndex
from .lifecycle import RunLifecycle
from .model import Run
from .pacing import Reserved
from .poll_chain import Backoff, PollScheduler
from .quotas import CallerQuotas, Slot
from .requests import RUN_ID_PREFIX, RunRequest, new_run_id, valid_id
from .results import response_snapshot
from .sessions import Session, SessionConflict, SessionStore
from .store import RunStore
from .webhook_outbox import WebhookUrls

log = logging.getLogger("bgruns.starting")


@dataclass
class _Attempt:
    """What one start has written so far, so that a start that fails can take it back."""

    run_id: str
    created_at: float
    session_id: str | None = None  # the session reserved for the run
    slot: Slot | None = None  # the caller's active-run slot it holds (runs.quotas)
    run: Run | None = None  # the run, from just before it is recorded
    recorded: bool = False  # its entity was written, and `run.etag` is this start's last write
    response_id: str | None = None  # the provider response created for it
    events: EventStream | None = None  # that response's open event stream


@dataclass(frozen=True)
class StartRules:
    """What a start reads of the settings."""

    default_model: str  # for a request that names none
    run_deadline: float  # the longest a run may go on (RUN_DEADLINE_SECONDS); a start may ask for less
    max_prefer_wait: float  # the longest `Prefer: wait` may hold the answer (MAX_PREFER_WAIT_SECONDS)
    retention_seconds: float  # how long an ended run, an idle session, is kept (RETENTION_DAYS)
    # How long a start may take (a provider call plus a few writes); a run still without a provider response well
    # after that was interrupted (a crash), and its reservations can be taken over.
    start_grace: float
    create_streaming: bool  # the poll chain watches each response's stream (COMPLETION_STRATEGY=watch)
    remember_responses: bool  # provider events name only the response: the index maps it to the run (push)


@dataclass
class StartedRun:
    """The started run (or, for a repeated Idempotency-Key, the existing one)."""

    run: Run
    events: EventStream | None = None  # for streaming starts: the provider's event stream, already open


class RunStarter:
    def __init__(
        self,
        rules: StartRules,
        store: RunStore,
        sessions: SessionStore,
        idempotency: IdempotencyStore,
        index: RunIndex,
        backend: RunBackend,
        webhook_urls: WebhookUrls,
        scheduler: PollScheduler,
        backoff: Backoff,
        ending: RunEnding,
        lifecycle: RunLifecycle,
        quotas: CallerQuotas | None,
        admission: RunAdmission,
    ) -> None:
        """`scheduler` and `backoff` send the run's first poll; `ending` ends a run its provider answers at once;
        `lifecycle` repairs a session whose run ended without advancing it; `quotas` admits each new start against
        its caller's quota (none: no quotas); `admission` places the create (runs.admission: the deployment with room,
        or queued until there is)."""
        self._rules = rules
        self._store = store
        self._sessions = sessions
        self._idempotency = idempotency
        self._index = index
        self._backend = backend
        self._webhook_urls = webhook_urls
        self._scheduler = scheduler
        self._backoff = backoff
        self._ending = ending
        self._lifecycle = lifecycle
        self._quotas = quotas
        self._admission = admission
        self.start_grace = rules.start_grace

    async def start(
        self,
        request: RunRequest,
        *,
        caller: Caller = OPERATOR,
        idempotency_key: str | None = None,
        wait_seconds: float = 0.0,
    ) -> StartedRun:
        """Start a run for `caller` (its owner). A repeated Idempotency-Key of the same caller returns its run."""
        self._check(request)
        if request.webhook_url:
            await self._webhook_urls.vet(request.webhook_url)
        previous_response_id, chain_deployment = await self._previous_response_id(request, caller)
        created_at = clock.now()
        run_id = new_run_id(created_at)
        key_expires_at = None
        if idempotency_key is not None:
            existing, key_expires_at = await self._claim(idempotency_key, request, run_id, caller)
            if existing is not None:
                return StartedRun(existing)
        attempt = _Attempt(run_id, created_at)
        try:  # after the key's claim (a retry of a start that took gets its run even at the caller's limit)
            attempt.slot = await self._quotas.admit(caller.owner, run_id) if self._quotas else None
        except Exception:  # refused (429) or storage failing: nothing of the start is kept, its key neither
            if idempotency_key is not None:
                await self._release(idempotency_key, run_id, caller, key_expires_at)
            raise
        try:
            run, events = await self._start(attempt, request, caller, previous_response_id, chain_deployment)
        except Exception:  # a crash or a cancellation (BaseException) is the sweeper's, as it runs nothing here
            if not await self._take_back(attempt) and idempotency_key is not None:
                await self._release(idempotency_key, run_id, caller, key_expires_at)
            raise
        if wait_seconds > 0 and run.is_active and run.response_id:
            try:
                run = await self._wait_briefly(run, min(wait_seconds, self._rules.max_prefer_wait))
            except Exception:  # the run started and goes on: answer it as it started
                log.warning("run %s: waiting for its result failed; answering it as started", run_id, exc_info=True)
        return StartedRun(run, events)

    async def open_session(self) -> Session:
        session = await self._sessions.create()
        await self._index.expire_at("session", session.id, session.created_at + self._rules.retention_seconds)
        return session

    def _check(self, request: RunRequest) -> None:
        """What the backend cannot honour is refused before anything is written (the executor's model API may not
        take every parameter): OpenAI's 400 naming the parameter."""
        try:
            self._backend.check(self._provider_params(request, "", None))
        except RequestRefused as refused:
            raise InvalidRequest(refused.code, refused.message, param=refused.param) from None

    # -- the steps ------------------------------------------------------------------------------------------
    async def _start(
        self,
        attempt: _Attempt,
        request: RunRequest,
        caller: Caller,
        previous_response_id: str | None,
        chain_deployment: str | None,
    ) -> tuple[Run, EventStream | None]:
        """`chain_deployment`: where `previous_response_id` lives; the run must start there (provider.pool)."""
        run_id, created_at = attempt.run_id, attempt.created_at
        if request.session_id:
            session = await self._reserve_session(request.session_id, run_id)
            attempt.session_id, previous_response_id = session.id, session.last_response_id
            chain_deployment = (session.last_deployment or DEFAULT_DEPLOYMENT) if previous_response_id else None
        params = self._provider_params(request, run_id, previous_response_id)
        deadline = min(request.deadline_seconds or self._rules.run_deadline, self._rules.run_deadline)
        backend = getattr(self._backend, "kind", "background")
        run = attempt.run = Run(
            id=run_id,
            status="queued",
            created_at=created_at,
            model=params["model"],
            request=params,
            session_id=request.session_id,
            metadata=request.metadata,
            stream=request.stream,
            next_poll_at=created_at + self.start_grace,
            deadline_at=created_at + deadline,
            webhook_url=request.webhook_url,
            owner=caller.owner,
            previous_run_id=request.previous_run_id,
            quota_slot=attempt.slot is not None,
            backend=backend,
            deployment=chain_deployment if backend == "background" else None,  # the executor notes its server
        )
        telemetry.run_created(run)
        await self._index.mark_open(run_id)
        await self._store.create(run)
        attempt.recorded = True
        await self._index.list_run(run)
        if attempt.session_id:
            await self._sessions.add_run(attempt.session_id, run_id, created_at)
        stream = request.stream or self._rules.create_streaming  # the poll chain can only watch a streamed create
        try:  # placed at the first deployment with room; a later slot or turn everywhere: queued until then
            placed = await self._admission.place(run, stream=stream)
        except ProviderError as error:
            if self._admission.admits(error):
                return await self._admission.queue(run, error), None
            raise _start_error(error) from None
        if isinstance(placed, Reserved):
            return await self._admission.queue_paced(run, placed), None
        started = placed
        attempt.response_id = run.response_id = started.state.response_id
        if started.events is not None and not request.stream:
            events, started.events = started.events, None
            await events.close()
        attempt.events = started.events
        if self._rules.remember_responses:
            await self._index.remember_response(run.response_id, run_id)
        return await self._record_response(attempt, run, started), started.events

    async def _record_response(self, attempt: _Attempt, run: Run, started: StartedResponse) -> Run:
        state = started.state
        run.response = response_snapshot(state.response)
        if not state.is_active:
            saved_as = run.etag
            # The caller's answer does not wait on its webhook receiver: the queue delivers at once.
            ended = await self._ending.end(run, ProviderEnded(state.response), deliver_now=False)
            if ended is run and run.etag == saved_as:  # not saved, and nobody else's: the run was deleted
                await self._deleted_while_starting(attempt)
            return ended
        if await self._scheduler.schedule(
            run, self._backoff.delay(0), status=state.status, event="provider_accepted", save_all=True
        ):
            return run
        # The run changed while its start was in flight: cancelled, failed by the sweeper as too slow, or deleted.
        fresh = await self._store.get(run.id, with_result=True)
        if fresh is None:
            await self._deleted_while_starting(attempt)
        elif fresh.is_terminal:
            await self._cancel_quietly(run.response_id, run.at)
        return fresh or run

    async def _deleted_while_starting(self, attempt: _Attempt) -> None:
        """A DELETE removed the run while this start was in flight: what the start wrote after it goes too, and the
        provider response is stopped and deleted."""
        log.info(
            "run %s was deleted while it started; its provider response %s goes too",
            attempt.run_id,
            attempt.response_id,
        )
        assert attempt.run is not None  # a response is created for a recorded run
        await self._cancel_quietly(attempt.response_id, attempt.run.at)
        await self._forget_rows(attempt)
        await self._delete_quietly(attempt.response_id, attempt.run.at)

    def _provider_params(self, request: RunRequest, run_id: str, previous_response_id: str | None) -> dict[str, Any]:
        params: dict[str, Any] = {
            **request.options,  # pass-through parameters first: the service's own below always win
            "model": request.model or self._rules.default_model,
            "input": request.input,
            "metadata": {**request.metadata, "bg_run_id": run_id},
            "store": True,
        }
        optional = {
            "instructions": request.instructions,
            "tools": request.tools or None,
            "max_output_tokens": request.max_output_tokens,
            "reasoning": request.reasoning,
            "previous_response_id": previous_response_id,
        }
        params.update({k: v for k, v in optional.items() if v is not None})
        return params

    # -- a start that failed ----------------------------------------------------------------------------------
    async def _take_back(self, attempt: _Attempt) -> bool:
        """Undo what the failed start wrote. True if its run is left behind: ended meanwhile by someone else (a
        cancel, the sweeper), so it stays with its webhook; or this undo failed too (storage down), and the
        sweeper ends the run as an interrupted start."""
        try:
            return await self._undo(attempt)
        except Exception:  # the caller gets the start's own error; this one is logged
            log.warning(
                "run %s: could not take back its failed start; the sweeper will end it", attempt.run_id, exc_info=True
            )
            return True

    async def _undo(self, attempt: _Attempt) -> bool:
        if attempt.events is not None:
            with contextlib.suppress(Exception):  # a stream that cannot close cleanly is closed enough
                await attempt.events.close()
        run = attempt.run
        if attempt.response_id and run is not None:  # first: it may be running (billing)
            await self._cancel_quietly(attempt.response_id, run.at)
        if attempt.recorded and run is not None:
            if not await self._store.delete(run):  # ETag-conditional: someone else ended it meanwhile
                return True
        elif run is not None:  # the create failed; if only its reply was lost, the run exists all the same
            landed = await self._store.get(run.id)
            if landed is None:
                await self._store.delete_blobs(run.id)  # parts it wrote for an entity that never was
            elif not (landed.is_active and await self._store.delete(landed)):
                return True
        await self._forget_rows(attempt)
        if attempt.response_id and run is not None:
            await self._delete_quietly(attempt.response_id, run.at)
        log.info("run %s: its start failed; nothing of it is kept", attempt.run_id)
        return False

    async def _forget_rows(self, attempt: _Attempt) -> None:
        """Remove the rows the start wrote around its run (the run itself is gone)."""
        run = attempt.run
        if run is not None:
            await self._index.unlist(run)
            if run.completed_at is not None:  # it ended at once, and its retention date was noted
                await self._index.forget_expiry("run", run.id, run.completed_at + self._rules.retention_seconds)
        if attempt.response_id:
            await self._index.forget_response(attempt.response_id)
        if attempt.session_id:
            await self._sessions.remove_run(attempt.session_id, attempt.run_id, attempt.created_at)
            await self._sessions.release(attempt.session_id, attempt.run_id)
        if attempt.slot is not None and self._quotas:
            await self._quotas.release(attempt.slot)
        await self._index.mark_done(attempt.run_id)  # last: until here the sweeper can still find the run

    async def _cancel_quietly(self, response_id: str | None, deployment: str) -> None:
        if response_id is None:  # the provider never accepted it: nothing to stop
            return
        try:
            await self._backend.cancel(response_id, deployment=deployment)
        except ProviderError as error:
            log.warning("could not cancel orphaned provider response %s: %s", response_id, error.message)

    async def _delete_quietly(self, response_id: str | None, deployment: str) -> None:
        if response_id is None:
            return
        try:
            await self._backend.delete(response_id, deployment=deployment)
        except ProviderError as error:
            log.warning("could not delete orphaned provider response %s: %s", response_id, error.message)

    async def _previous_response_id(self, request: RunRequest, caller: Caller) -> tuple[str | None, str | None]:
        """The provider response a run continues from when it names a previous run (visible to the caller), and the
        deployment it lives at."""
        if request.previous_run_id is None:
            return None, None
        if request.session_id is not None:
            raise InvalidRequest(
                "invalid_request",
                "A run continues either a session or a previous run, not both.",
                param="previous_response_id",
            )
        previous = (
            await self._store.get(request.previous_run_id) if valid_id(RUN_ID_PREFIX, request.previous_run_id) else None
        )
        if previous is None or not caller.can_see(previous) or not previous.response_id:
            raise NotFound(
                "previous_response_not_found",
                f"Previous response with id '{request.previous_run_id}' not found.",
                param="previous_response_id",
            )
        return previous.response_id, previous.at

    # -- idempotency ----------------------------------------------------------------------------------------
    async def _claim(self, key: str, request: RunRequest, run_id: str, caller: Caller) -> tuple[Run | None, float]:
        """Claim the Idempotency-Key for `run_id`: the run that already holds it, if any, and when the key's claim
        expires (its retention note's date)."""
        claim = await self._idempotency.claim(key, request.fingerprint(), run_id, scope=caller.owner)
        expires_at = clock.now() + self._idempotency.window
        if claim.is_new:
            return await self._note_claim(key, run_id, caller, claim.digest, expires_at)
        existing = await self._store.get(claim.run_id, with_result=True)
        # A run the provider has not accepted yet may still be deleted (its start refused): never hand it out.
        # One that stays so is failed by the sweeper after the start grace, and is handed out then.
        # A run queued for provider capacity is durable: it is handed out too.
        if existing is not None and (existing.response_id or existing.is_terminal or existing.admission):
            return existing, expires_at
        if existing is not None:
            raise Conflict(
                "idempotency_key_busy",
                "A run with this Idempotency-Key is being started; retry shortly.",
                param="Idempotency-Key",
                retry_after=1,
            )
        # The key is held by a start that has not recorded its run. Right after the claim that is a start in
        # progress; after the start grace it is a start that died, and the key is free again.
        if clock.now() - claim.claimed_at > self.start_grace and await self._idempotency.take_over(
            key, request.fingerprint(), run_id, claim
        ):
            return await self._note_claim(key, run_id, caller, claim.digest, expires_at)
        raise Conflict(
            "idempotency_key_busy",
            "A run with this Idempotency-Key is being started; retry shortly.",
            param="Idempotency-Key",
            retry_after=1,
        )

    async def _note_claim(
        self, key: str, run_id: str, caller: Caller, digest: str, expires_at: float
    ) -> tuple[None, float]:
        """Note the new claim's retention date; a claim that cannot be noted is given up."""
        try:
            await self._index.expire_at("idempotency", digest, expires_at)
        except Exception:
            await self._release(key, run_id, caller, None)
            raise
        return None, expires_at

    async def _release(self, key: str, run_id: str, caller: Caller, expires_at: float | None) -> None:
        """Free the key of a start that failed (if it still names that start's run), and its retention note."""
        try:
            digest = await self._idempotency.release(key, run_id, scope=caller.owner)
            if digest is not None and expires_at is not None:
                await self._index.forget_expiry("idempotency", digest, expires_at)
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
                    raise Conflict(
                        "session_busy",
                        f"Session {session_id!r} has a run in progress "
                        f"({session.active_run_id}); wait for it or cancel it.",
                        param="session_id",
                        retry_after=1,
                    )
            session.active_run_id, session.active_since = run_id, clock.now()
            try:
                await self._sessions.save(session)
                return session
            except SessionConflict:
                continue
        raise Conflict(
            "session_busy",
            f"Session {session_id!r} is being changed concurrently; retry.",
            param="session_id",
            retry_after=1,
        )

    # -- Prefer: wait -----------------------------------------------------------------------------------------
    async def _wait_briefly(self, run: Run, seconds: float) -> Run:
        """Look at the provider a few times so a quick run answers 200 at once."""
        if run.response_id is None:  # nothing at the provider to look at
            return run
        deadline = clock.now() + seconds
        delay = 0.25
        while clock.now() < deadline:
            await asyncio.sleep(min(delay, max(0.0, deadline - clock.now())))
            delay = min(delay * 1.5, 2.0)
            try:
                state = await self._backend.observe(run.response_id, deployment=run.at)
            except ProviderError:  # the poll chain will retry; this is only a shortcut
                break
            if not state.is_active:
                fresh = await self._store.get(run.id, with_result=True)
                if fresh is None or fresh.is_terminal:
                    return fresh or run
                return await self._ending.end(fresh, ProviderEnded(state.response), deliver_now=False)
        return await self._store.get(run.id, with_result=True) or run


def _start_error(error: ProviderError) -> ServiceError:
    if error.transient:
        return Unavailable(
            "provider_unavailable",
            f"The model provider is unavailable: {error.message}",
            retry_after=max(1, round(error.retry_after or 5)),
        )
    if error.status in (400, 404, 422):
        return InvalidRequest("provider_rejected", f"The model provider rejected the request: {error.message}")
    return UpstreamError("provider_error", f"The model provider refused the request ({error.status}): {error.message}")
