"""Admission: a start the provider has no capacity for now is accepted and queued, and started when it has room.

A create answered 429 (a rate limit: not `insufficient_quota`, not a request larger than the whole budget) or 503
(overloaded) proves that nothing was created. Such a start is not handed back to the caller: the run stays
`queued` (native 202, the facade's `queued` Response, token and webhook as for any run) and its poll chain carries
on without a provider response: each step of it (`step`) tries the create again, after the provider's Retry-After
or the chain's backoff, until the provider takes it (`capacity_granted`; from then on it is polled like any run).

Exactly once at the provider: a create is repeated only after an answer that proves nothing was created. A create
whose outcome is unknown (a timeout after sending, a cut connection, a 500/502/504) is never repeated: at the
start the caller gets the error as before (the run is taken back); on a later try the run ends `failed` with
`start_interrupted`, as a start cut by a crash does. (A connection that could not be made at all proves nothing
was created: a later try waits again; at the start it is refused as before unless another deployment takes it.)
Before each try the step consumes its chain position and
notes the create in flight (`Admission.creating_since`), so a duplicate message finds nothing to do, and a step
that dies mid-create leaves a run the sweeper ends `start_interrupted` after the start grace, never a second
create. (Such an unknown create may have left a response at the provider that no run follows; its metadata names
the run, `bg_run_id`.)

While it waits, a queued run is an open run like any other: it holds its session, its deadline counts from its
acceptance, a cancel ends it here without a provider call, a lost message or a crashed host is repaired by the
sweeper (it restarts the chain, and so the tries), and it ends through runs.ending. It may wait at most
ADMISSION_MAX_WAIT_SECONDS; then it ends `failed` with `capacity_wait_exceeded`. A streaming start is queued too:
its stream opens at once and shows the wait (runs.relay), then follows the response once the provider took it.

With provider pacing on (runs.pacing), every create, the start's and each try's, first takes its model's next
slot: a slot later than PACED_INLINE_WAIT is a wait like a 429's, without the provider call (`reason` "paced",
the try scheduled at the slot, which it holds: it does not ask again). What the provider answers a create (its
`x-ratelimit-*` headers, a rate-limit 429) is told to the pacing.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from .. import clock, telemetry
from ..provider import ANYWHERE, Candidate, ProviderError, ProviderState, RunBackend, StartedResponse
from ..provider.errors import may_go_elsewhere, proves_nothing_created
from ..responses_vocabulary import ErrorCode, RunStatus
from .ending import DeadlinePassed, Failed, Observed, ProviderEnded, RunEnding
from .index import RunIndex
from .model import Admission, Run
from .pacing import FAIR_TURN, GO, PACED, ProviderPacing, Reserved
from .poll_chain import DEADLINE_SLACK_SECONDS, Backoff, PollScheduler
from .quotas import quota_caller
from .results import response_snapshot
from .store import RunConflict, RunStore

log = logging.getLogger("bgruns.admission")

# A slot this close is waited for in place (the create goes a moment later) rather than queued: a queued try
# costs a message and two run writes.
PACED_INLINE_WAIT = 0.5
# A run holding a slot looks again when a better-placed deployment reopens only if that could gain it this much
# (each look costs a message and three run writes), spread over this many seconds (not all at the same instant).
MIN_GAIN = 5.0
RECHECK_SPREAD = 2.0


class AdmissionOutcome(StrEnum):
    """What a queued run's step did, when it did not end the run."""

    WAITING = "capacity-waiting"  # the provider still has no room (or the pacing none yet): the next try is scheduled
    GRANTED = "capacity-granted"  # the provider took it: the poll chain follows its response now
    STALE = "stale"  # the run changed meanwhile (cancelled, another step): nothing to do


@dataclass(frozen=True)
class AdmissionRules:
    max_wait: float  # ADMISSION_MAX_WAIT_SECONDS; 0: starts are never queued
    start_grace: float  # how long one create may take before a step that made it counts as dead
    create_streaming: bool  # the poll chain watches each response's stream (COMPLETION_STRATEGY=watch)
    remember_responses: bool  # provider events name only the response: the index maps it to the run (push)


class RunAdmission:
    def __init__(
        self,
        rules: AdmissionRules,
        store: RunStore,
        backend: RunBackend,
        index: RunIndex,
        scheduler: PollScheduler,
        backoff: Backoff,
        ending: RunEnding,
        pacing: ProviderPacing | None = None,
    ) -> None:
        """`backoff` spaces the tries when the provider gives no Retry-After; `scheduler` carries them (the poll
        queue); `pacing` gives each create its slot at its model (none: creates are not paced)."""
        self._rules = rules
        self._store = store
        self._backend = backend
        self._index = index
        self._scheduler = scheduler
        self._backoff = backoff
        self._ending = ending
        self._pacing = pacing if pacing is not None and pacing.enabled and rules.max_wait > 0 else None

    def admits(self, error: ProviderError) -> bool:
        """Whether a start refused with `error` is queued rather than refused."""
        return self._rules.max_wait > 0 and proves_nothing_created(error)

    async def queue(self, run: Run, error: ProviderError) -> Run:
        """Queue the starting run (recorded, its first create refused with `error`): returns it as it now stands
        (another writer's, if it was ended meanwhile, e.g. cancelled while its create was answered)."""
        run.admission = Admission(queued_at=run.created_at)
        return await self._queue(run, self._next_delay(run, error), _reason(error))

    async def queue_paced(self, run: Run, reserved: Reserved) -> Run:
        """Queue the starting run (recorded, not created) until its slot of the pacing or its caller's turn."""
        run.admission = Admission(queued_at=run.created_at, attempts=0, paced=reserved.held, turn=reserved.turn)
        run.admission.slot_at = clock.now() + reserved.wait if reserved.held else None
        return await self._queue(run, self._within_wait(run, _wake_in(reserved)), PACED if reserved.held else FAIR_TURN)

    async def _queue(self, run: Run, delay: float, reason: str) -> Run:
        assert run.admission is not None
        run.admission.next_try_at, run.admission.reason = clock.now() + delay, reason
        log.info("run %s: the provider has no capacity (%s); queued, next try in %.1fs", run.id, reason, delay)
        telemetry.capacity("queued")
        if await self._scheduler.schedule(run, delay, event="capacity_queued", error=reason, save_all=True):
            return run
        return await self._store.get(run.id, with_result=True) or run

    async def place(self, run: Run, *, stream: bool, held: bool = False) -> StartedResponse | Reserved:
        """Create the run's response at the first deployment with room (provider.pool), or say how long to wait.

        The candidates in order (only its own deployment for a chained run: `pinned_deployment`): one whose
        pacing slot or caller's turn (runs.fairness) is later, or that answers 429/503 or cannot be reached, is
        passed over for the next, as is one whose breaker is open. When every one was passed over for its pacing,
        the earliest among them is taken (a slot the run then holds, or a turn it asks again with, both at
        `run.deployment`) and returned, to look again (`recheck`) when a deployment before that one reopens; else
        the refusal is raised (a 429/503 queues the run, as does the 503 when no deployment is available). Sets
        `run.deployment` to where it was created. `held`: the run holds its slot at `run.deployment` already: due,
        it tries there first, unpaced; not due yet, it looks for an earlier one (`_earlier`)."""
        candidates = self._backend.candidates(pinned_deployment(run))
        if held and (slot_in := _held_slot_in(run)) > PACED_INLINE_WAIT:
            return await self._earlier(run, candidates, slot_in, stream)
        if held:  # its slot's deployment first (if it is still a candidate)
            candidates.sort(key=lambda c: c.name != run.deployment)
        alone = len(candidates) == 1  # its one slot is taken at once (one reservation, as without a pool)
        later: list[tuple[Reserved, Candidate]] = []
        refusal: ProviderError | None = None
        for candidate in _available(candidates):
            unpaced = candidate.probe or (held and candidate.name == run.deployment)
            if not unpaced:
                reserved = await self._slot(run, candidate, hold=alone, turn=_turn_at(run, candidate), probe=not alone)
                if reserved.wait:
                    later.append((reserved, candidate))
                    continue
            try:
                return await self._create_at(run, candidate, stream)
            except ProviderError as error:
                if not may_go_elsewhere(error):
                    raise
                log.info("run %s: deployment %s has no room (%s)", run.id, candidate.name, error.status)
                if refusal is None or proves_nothing_created(error):
                    refusal = error
                candidates = _reopening(candidates, candidate, error)
        if later:
            reserved, earliest = min(later, key=lambda r: r[0].wait)
            if not alone and not (reserved := await self._slot(run, earliest, hold=True, turn=reserved.turn)).wait:
                return await self._create_at(run, earliest, stream)
            run.deployment = earliest.name or run.deployment
            return _looking_again(reserved, candidates, earliest.name)
        assert refusal is not None  # candidates() names at least one available, or raises
        raise refusal

    async def _earlier(
        self, run: Run, candidates: list[Candidate], slot_in: float, stream: bool
    ) -> StartedResponse | Reserved:
        """The run holds a slot `slot_in` seconds away at `run.deployment` and looks again before it is due (a
        deployment before that one reopened): the first available one before it with a slot earlier than the
        held one takes the run (created now, or holding that slot), and the held slot is given back; else it
        keeps holding its slot (and looks again at the next reopening)."""
        assert run.admission is not None
        own = next((c for c in candidates if c.name == run.deployment), None)
        earlier_than = slot_in - PACED_INLINE_WAIT
        for candidate in _available(candidates[: candidates.index(own)] if own else candidates):
            if not candidate.probe:  # (a half-open one's probe goes unpaced: refused, it costs no slot there)
                reserved = await self._slot(run, candidate, hold=True, within=earlier_than, turn=None, probe=True)
                if reserved.wait > earlier_than or not reserved.held:
                    continue
                if reserved.wait:  # a later slot there, still earlier than its own: it holds that one now
                    await self._give_back(run, own, slot_in)
                    run.deployment = candidate.name or run.deployment
                    return _looking_again(reserved, candidates, candidate.name)
            try:
                started = await self._create_at(run, candidate, stream)
            except ProviderError as error:
                if may_go_elsewhere(error):  # nothing created: it still holds its own slot
                    candidates = _reopening(candidates, candidate, error)
                    continue
                await self._give_back(run, own, slot_in)  # the run ends: its slot is of no use to it
                raise
            await self._give_back(run, own, slot_in)
            return started
        return _looking_again(Reserved(slot_in, run.admission.turn), candidates, run.deployment)

    async def _give_back(self, run: Run, at: Candidate | None, slot_in: float) -> None:
        """Release the run's held slot at `at` (runs.pacing `release`), `slot_in` seconds from now."""
        if self._pacing is not None and at is not None:
            await self._pacing.release(run.request, clock.now() + slot_in, key=at.pacing_key, budgets=_budgets(at))
        log.info("run %s: gave back its slot at %s (%.1f s away) for an earlier one", run.id, run.deployment, slot_in)

    async def _create_at(self, run: Run, candidate: Candidate, stream: bool) -> StartedResponse:
        started = await self.create(run.request, stream=stream, at=candidate)
        run.deployment = started.deployment or run.deployment
        return started

    async def _slot(
        self,
        run: Run,
        candidate: Candidate,
        *,
        hold: bool,
        turn: float | None,
        probe: bool = False,
        within: float | None = None,
    ) -> Reserved:
        """The run's slot at the candidate, in its caller's fair order there (`turn`: the one it has at that row):
        wait 0 (GO): go now (a slot within PACED_INLINE_WAIT is waited for here). A later slot is taken only if
        `hold` (the run then holds it; `within`: only one at most that far away, else as far as its wait allows);
        a turn not due yet comes back not held, with the time to ask again. `probe`: one look of several (a pool),
        which keeps a new turn only with a slot."""
        if self._pacing is None:
            return GO
        queued_at = run.admission.queued_at if run.admission else run.created_at
        wait_left = max(0.0, queued_at + self._rules.max_wait - clock.now())
        reserved = await self._pacing.reserve_turn(
            run.request,
            within=(wait_left if within is None else min(within, wait_left)) if hold else PACED_INLINE_WAIT,
            key=candidate.pacing_key,
            budgets=_budgets(candidate),
            caller=quota_caller(run.owner),
            turn=turn,
            probe=probe,
        )
        if reserved.wait > PACED_INLINE_WAIT or not reserved.held:
            return reserved
        await asyncio.sleep(reserved.wait)
        return GO

    async def create(self, params: dict[str, Any], *, stream: bool, at: Candidate = ANYWHERE) -> StartedResponse:
        """Create the response at `at` (never repeated here), telling the pacing what the provider answered."""
        key = at.pacing_key or str(params.get("model") or "")
        try:
            started = await self._backend.start(params, stream=stream, deployment=at.name)
        except ProviderError as error:
            if self._pacing is not None and error.status == 429 and proves_nothing_created(error):
                await self._pacing.throttled(key, error.retry_after, error.rate_limits, _budgets(at))
            raise
        if self._pacing is not None:
            self._pacing.noted(key, started.rate_limits)
        return started

    async def step(self, run: Run) -> AdmissionOutcome | RunStatus:
        """One try of a queued run (a poll message at its chain position, the run read without its request)."""
        admission = run.admission
        assert admission is not None and run.response_id is None
        if admission.creating_since is not None:  # consumed: the message of a step that died mid-create
            return AdmissionOutcome.STALE
        if clock.now() >= run.deadline_at:
            return await self._end(
                run,
                DeadlinePassed(" It was still waiting for provider capacity, so it was never started at the provider."),
            )
        if clock.now() >= admission.queued_at + self._rules.max_wait:
            return await self._end(
                run,
                Failed(
                    ErrorCode.CAPACITY_WAIT_EXCEEDED,
                    f"The provider had no capacity for the run within {self._rules.max_wait:.0f} s "
                    f"({admission.attempts} tries; last: {admission.reason}); it was never started at the provider.",
                ),
            )
        full = await self._store.get(run.id, with_request=True)
        if full is None or full.etag != run.etag:
            return AdmissionOutcome.STALE
        held = admission.paced
        if not await self._claim(full):
            return AdmissionOutcome.STALE
        try:
            # A streamed run's response is created streaming, so that its caller's stream can follow it.
            placed = await self.place(full, stream=full.stream or self._rules.create_streaming, held=held)
        except ProviderError as error:
            return await self._refused(full, error)
        if isinstance(placed, Reserved):
            return await self._paced(full, placed)
        started = placed
        if started.events is not None:
            await started.events.close()
        return await self._granted(full, started.state)

    async def _claim(self, run: Run) -> bool:
        """Consume the chain position and note the create in flight, so that a duplicate of this message is stale,
        and a step that dies from here on leaves a run the sweeper ends (its create's outcome unknown)."""
        assert run.admission is not None
        run.admission.creating_since, run.admission.paced = clock.now(), False
        run.admission.attempts += 1
        run.poll_seq, run.poll_nonce = run.poll_seq + 1, secrets.token_hex(6)  # no message carries this position
        run.next_poll_at = clock.now() + self._rules.start_grace
        try:
            await self._store.save(run)
        except RunConflict:
            return False
        return True

    async def _paced(self, run: Run, reserved: Reserved) -> AdmissionOutcome:
        """The pacing gave the run a later slot, or its caller's turn is later: its next try is then, without
        calling the provider now."""
        assert run.admission is not None
        delay = self._within_wait(run, _wake_in(reserved))
        reason = PACED if reserved.held else FAIR_TURN
        run.admission.next_try_at, run.admission.reason = clock.now() + delay, reason
        run.admission.paced, run.admission.turn = reserved.held, reserved.turn
        run.admission.slot_at = clock.now() + reserved.wait if reserved.held else None
        run.admission.creating_since = None  # claimed, but no create was made
        run.admission.attempts -= 1
        log.info("run %s: %s; next try in %.1fs", run.id, reason, delay)
        telemetry.capacity("waiting")
        event = "capacity_paced" if reserved.held else "capacity_turn"
        saved = await self._scheduler.schedule(run, delay, event=event, error=reason, save_all=True)
        return AdmissionOutcome.WAITING if saved else AdmissionOutcome.STALE

    async def _refused(self, run: Run, error: ProviderError) -> AdmissionOutcome | RunStatus:
        assert run.admission is not None
        if may_go_elsewhere(error):  # nothing was created (a 429/503, or the request never left): wait, try again
            run.admission.creating_since = None
            delay = self._next_delay(run, error)
            run.admission.next_try_at, run.admission.reason = clock.now() + delay, _reason(error)
            log.info(
                "run %s: still no provider capacity (%s, try %d); next try in %.1fs",
                run.id,
                _reason(error),
                run.admission.attempts,
                delay,
            )
            telemetry.capacity("waiting")
            saved = await self._scheduler.schedule(
                run, delay, event="capacity_waiting", error=_reason(error), save_all=True
            )
            return AdmissionOutcome.WAITING if saved else AdmissionOutcome.STALE
        if error.transient:  # the create may have been made: never repeat it
            return await self._end(
                run,
                Failed(
                    ErrorCode.START_INTERRUPTED,
                    f"The provider's answer to the run's create was lost or unclear "
                    f"({error.status or 'unreachable'}: {error.message}); it may or may not have started it, so the "
                    "create was not repeated.",
                ),
            )
        return await self._end(
            run, Failed(ErrorCode.PROVIDER_ERROR, f"The provider refused the run ({error.status}): {error.message}")
        )

    async def _granted(self, run: Run, state: ProviderState) -> AdmissionOutcome | RunStatus:
        assert run.admission is not None
        run.response_id = state.response_id
        run.response = response_snapshot(state.response)
        run.admission.creating_since, run.admission.granted_at = None, clock.now()
        log.info(
            "run %s: the provider took it after %.1fs (try %d)",
            run.id,
            run.admission.granted_at - run.admission.queued_at,
            run.admission.attempts,
        )
        telemetry.capacity("granted", run.admission.granted_at - run.admission.queued_at)
        if self._rules.remember_responses:
            await self._index.remember_response(state.response_id, run.id)
        if not state.is_active:
            ended = await self._ending.end(run, ProviderEnded(state.response))
            return RunStatus(ended.status)
        if await self._scheduler.schedule(
            run, self._backoff.delay(0), status=state.status, event="capacity_granted", save_all=True
        ):
            return AdmissionOutcome.GRANTED
        # Ended meanwhile (a cancel, the sweeper): the response it got must not run on.
        fresh = await self._store.get(run.id)
        if fresh is None or fresh.is_terminal:
            log.info("run %s ended while its create was in flight; cancelling %s", run.id, state.response_id)
            try:
                await self._backend.cancel(state.response_id, deployment=run.at)
                if fresh is None:
                    await self._backend.delete(state.response_id, deployment=run.at)
            except ProviderError as error:
                log.warning("could not cancel orphaned provider response %s: %s", state.response_id, error.message)
        return AdmissionOutcome.STALE

    async def _end(self, run: Run, observed: Observed) -> RunStatus:
        assert run.admission is not None
        ended = await self._ending.end(run, observed)
        telemetry.capacity(ended.status, clock.now() - run.admission.queued_at)
        return RunStatus(ended.status)

    def _next_delay(self, run: Run, error: ProviderError) -> float:
        """The provider's Retry-After, else the backoff by tries; never past the end of the wait (a last step
        then ends the run on time)."""
        assert run.admission is not None
        return self._within_wait(run, self._backoff.delay(run.admission.attempts - 1, retry_after=error.retry_after))

    def _within_wait(self, run: Run, delay: float) -> float:
        assert run.admission is not None
        wait_left = run.admission.queued_at + self._rules.max_wait - clock.now()
        return max(0.0, min(delay, wait_left + DEADLINE_SLACK_SECONDS))


def pinned_deployment(run: Run) -> str | None:
    """The deployment a run must start on: the one its conversation lives at (a session's next turn, a
    `previous_response_id`: that response exists only there); None: any."""
    return run.at if run.request.get("previous_response_id") else None


def _turn_at(run: Run, candidate: Candidate) -> float | None:
    """The run's turn in its caller's fair order at the candidate's row: the one it took where it waits, if any."""
    return run.admission.turn if run.admission is not None and candidate.name == run.deployment else None


def _available(candidates: list[Candidate]) -> list[Candidate]:
    """The candidates a start may try now (not those whose breaker is open)."""
    return [c for c in candidates if not c.reopens_in]


def _reopening(candidates: list[Candidate], refused: Candidate, error: ProviderError) -> list[Candidate]:
    """The candidates once `refused` answered `error`: a deployment whose breaker kept the start away (another
    start's probe under way, or it opened just now) reopens after the error's Retry-After."""
    if error.code != "deployment_unavailable":
        return candidates
    reopens = replace(refused, reopens_in=error.retry_after or 1.0, probe=False)
    return [reopens if c is refused else c for c in candidates]


def _held_slot_in(run: Run) -> float:
    """Seconds until the slot the run holds (0: due; a run queued before slots were timed: due)."""
    slot_at = run.admission.slot_at if run.admission is not None else None
    return max(0.0, slot_at - clock.now()) if slot_at is not None else 0.0


def _looking_again(reserved: Reserved, candidates: list[Candidate], where: str | None) -> Reserved:
    """The held slot at `where`, to look again (`recheck`) when a deployment placed before it reopens, if that is
    well before the slot: a backlog queued while the better deployment was down moves back to it (`_earlier`)."""
    before = candidates[: next((i for i, c in enumerate(candidates) if c.name == where), len(candidates))]
    reopening = min((c.reopens_in for c in before if c.reopens_in), default=None)
    if reopening is None or reserved.wait - reopening < MIN_GAIN:
        return reserved
    return replace(reserved, recheck=reopening + random.uniform(0.0, RECHECK_SPREAD))


def _wake_in(reserved: Reserved) -> float:
    """When a queued run's next try is: at its slot or turn, or earlier to look again (`recheck`)."""
    return min(reserved.wait, reserved.recheck) if reserved.recheck is not None else reserved.wait


def _budgets(candidate: Candidate) -> tuple[int, int]:
    return candidate.requests_per_minute, candidate.tokens_per_minute


def _reason(error: ProviderError) -> str:
    return f"provider {error.status}" + (f" {error.code}" if error.code else "")
