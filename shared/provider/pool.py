"""The pool of model deployments (PROVIDER_DEPLOYMENTS): where a run starts, and where it lives afterwards.

`DeploymentPool` is the RunBackend of background runs: one backend (a ResponsesBackend with its own client,
created once) per deployment. A background response lives at the resource that created it, so each run records
the deployment it was created on (`StartedResponse.deployment`, `Run.deployment`) and every later call names it:
`observe`, `cancel`, `events` and `delete` go to that deployment only, whatever its state.

Placement is admission's (runs.admission `place`, with each deployment's pacing): `candidates` gives the
deployments by priority (lower first), in a weighted random order within a priority, those whose circuit breaker
is open marked with when it reopens; a start goes to the first, and moves on to the next when it answers 429 or
503, or cannot be reached at all (each proves nothing was created). Any other failure ends the start there: a
timeout or a 500 may have created the response, and a create is never repeated. `start` creates at the deployment
placement named. A chained start (a session's next turn, a `previous_response_id`) names its deployment and
never moves; while that deployment is unavailable its start is refused with a 503 that admission queues.

The circuit breaker (one per deployment, in this instance's memory: each instance learns on its own, from its
own starts) trips after FAILURES_TO_TRIP transient failures (429, 5xx, timeouts, unreachable) within
FAILURE_WINDOW seconds, and then keeps starts away for TRIP_SECONDS, or for the provider's Retry-After when that
is longer; a 429/503 with a Retry-After keeps starts away that long at once. Then it is half-open: one start, the
probe, goes; its success closes the breaker, its failure opens it again. Only starts count: polls of the runs
already there go on regardless (they finish when the deployment returns, or end at their deadline).
"""

from __future__ import annotations

import logging
import random
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from .. import clock
from ..settings import DEFAULT_DEPLOYMENT
from .backend import Candidate, EventStream, ProviderState, StartedResponse
from .errors import ProviderError

log = logging.getLogger("bgruns.pool")

FAILURES_TO_TRIP = 3
FAILURE_WINDOW = 30.0  # seconds
TRIP_SECONDS = 30.0
MAX_HOLD_SECONDS = 300.0  # the longest a Retry-After keeps starts away (a bogus hour is not obeyed)


class DeploymentBackend(Protocol):
    """What one deployment offers: the provider's Responses API at one endpoint (provider.backend)."""

    def check(self, params: dict[str, Any]) -> None: ...
    async def start(self, params: dict[str, Any], *, stream: bool) -> StartedResponse: ...
    async def observe(self, response_id: str) -> ProviderState: ...
    async def cancel(self, response_id: str) -> ProviderState | None: ...
    async def events(self, response_id: str, after: int) -> EventStream: ...
    async def delete(self, response_id: str) -> None: ...


class CircuitBreaker:
    """Closed, open (until `open_until`) or half-open (after it: one probe at a time)."""

    def __init__(self, *, failures: int = FAILURES_TO_TRIP, window: float = FAILURE_WINDOW, trip: float = TRIP_SECONDS):
        self._failures, self._window, self._trip = failures, window, trip
        self._recent: deque[float] = deque()
        self._open_until = 0.0  # 0: closed
        self._probing = False

    def available(self, now: float) -> bool:
        """Whether a start may go now (closed, or half-open with no probe under way); takes nothing."""
        return now >= self._open_until and not self._probing

    def claim(self, now: float) -> bool:
        """Let one start go: always when closed; when half-open, only the probe."""
        if not self.available(now):
            return False
        self._probing = self._open_until > 0
        return True

    def state(self, now: float) -> str:
        if not self._open_until:
            return "closed"
        return "half-open" if now >= self._open_until else "open"

    def reopens_in(self, now: float) -> float:
        return max(self._open_until - now, 1.0 if self._probing else 0.0)

    def succeeded(self) -> None:
        self._recent.clear()
        self._open_until, self._probing = 0.0, False

    def released(self) -> None:
        """A start that ended without a verdict on the deployment (cancelled, or the request's own fault)."""
        self._probing = False

    def failed(self, now: float, retry_after: float | None) -> bool:
        """Note a transient failure; True if it opened the breaker."""
        probe, self._probing = self._probing, False
        self._recent.append(now)
        while self._recent and self._recent[0] < now - self._window:
            self._recent.popleft()
        hold = min(retry_after or 0.0, MAX_HOLD_SECONDS)
        tripped = probe or len(self._recent) >= self._failures
        if tripped:
            hold = max(hold, self._trip)
        if hold > 0:
            self._open_until = max(self._open_until, now + hold)
        return tripped


class NeverOpen(CircuitBreaker):
    """The implicit `default` deployment's: with nowhere to spill to, it stays as before the pool (admission waits
    out a 429/503 per model; a Retry-After of one model must not hold another's starts)."""

    def failed(self, now: float, retry_after: float | None) -> bool:
        return False


def weighted_order(members: Sequence[tuple[str, int, int]], rng: random.Random) -> list[str]:
    """The names of `members` (name, priority, weight) by priority, lower first, in a weighted random order within
    a priority (the executor's model servers are ordered so too: executor.model_pool)."""
    # Efraimidis-Spirakis: sorting by u^(1/weight) draws a weighted order without replacement.
    keyed = [(priority, -(rng.random() ** (1.0 / weight)), name) for name, priority, weight in members]
    return [name for _, _, name in sorted(keyed)]


@dataclass
class _Member:
    name: str
    backend: DeploymentBackend
    model: str | None  # sent as `model` instead of the caller's
    priority: int
    weight: int
    candidate: Candidate
    breaker: CircuitBreaker


@dataclass(frozen=True)
class Member:
    """A deployment of the pool as composition builds it (settings.DeploymentSettings plus its backend)."""

    name: str
    backend: DeploymentBackend
    model: str | None = None
    priority: int = 0
    weight: int = 1
    requests_per_minute: int = 0
    tokens_per_minute: int = 0


class DeploymentPool:
    """The deployments as one RunBackend: each call sent to the run's deployment (a start's: where it was placed)."""

    kind = "background"

    def __init__(self, members: Sequence[Member], *, implicit: bool = False, rng: random.Random | None = None):
        """`implicit`: the one `default` deployment of the single-provider settings (PROVIDER_DEPLOYMENTS unset),
        which behaves as before the pool: paced per model, no circuit breaker. Otherwise each deployment is paced
        by its name."""
        self._members = {
            m.name: _Member(
                m.name,
                m.backend,
                m.model,
                m.priority,
                m.weight,
                Candidate(m.name, None if implicit else m.name, m.requests_per_minute, m.tokens_per_minute),
                NeverOpen() if implicit else CircuitBreaker(),
            )
            for m in members
        }
        self._rng = rng or random.Random()

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._members)

    def check(self, params: dict[str, Any]) -> None:
        """Nothing to refuse here: the provider judges the parameters it is passed."""

    def candidates(self, pinned: str | None = None) -> list[Candidate]:
        """Where a start may go, best first; `pinned`: only there. Those whose breaker is open now are among them
        with the seconds until it reopens (`reopens_in`): not to be tried, but a run that waits elsewhere may look
        again then (runs.admission). Raises the 503 admission queues when none is available now (its Retry-After:
        when the first breaker lets a start through again)."""
        now = clock.now()
        members = [self._member(pinned)] if pinned is not None else list(self._members.values())
        if not any(m.breaker.available(now) for m in members):
            wait = min(m.breaker.reopens_in(now) for m in members)
            where = f"deployment {pinned!r} (where the run's conversation lives)" if pinned else "every deployment"
            raise ProviderError(
                transient=True,
                status=503,
                message=f"{where} is unavailable for now (circuit open after repeated failures)",
                retry_after=max(1.0, wait),
                code="deployment_unavailable",
            )
        order = weighted_order([(m.name, m.priority, m.weight) for m in members], self._rng)
        return [self._as_candidate(self._members[name], now) for name in order]

    @staticmethod
    def _as_candidate(member: _Member, now: float) -> Candidate:
        breaker = member.breaker
        if not breaker.available(now):
            return replace(member.candidate, reopens_in=breaker.reopens_in(now))
        return replace(member.candidate, probe=True) if breaker.state(now) == "half-open" else member.candidate

    async def start(self, params: dict[str, Any], *, stream: bool, deployment: str | None = None) -> StartedResponse:
        """Create the response at `deployment` (placement chose it: runs.admission; None: `default`), if its
        breaker lets the start through."""
        return await self._start_at(self._member(deployment or DEFAULT_DEPLOYMENT), params, stream)

    async def observe(self, response_id: str, *, deployment: str = DEFAULT_DEPLOYMENT) -> ProviderState:
        return await self._member(deployment).backend.observe(response_id)

    async def cancel(self, response_id: str, *, deployment: str = DEFAULT_DEPLOYMENT) -> ProviderState | None:
        return await self._member(deployment).backend.cancel(response_id)

    async def events(self, response_id: str, after: int, *, deployment: str = DEFAULT_DEPLOYMENT) -> EventStream:
        return await self._member(deployment).backend.events(response_id, after)

    async def delete(self, response_id: str, *, deployment: str = DEFAULT_DEPLOYMENT) -> None:
        await self._member(deployment).backend.delete(response_id)

    def state(self) -> dict[str, str]:
        """Each deployment's breaker as health shows it: closed, open or half-open."""
        now = clock.now()
        return {name: m.breaker.state(now) for name, m in self._members.items()}

    # -- helpers -----------------------------------------------------------------------------------------------
    def _member(self, name: str) -> _Member:
        member = self._members.get(name)
        if member is None:  # transient: the run finishes if the deployment comes back, else at its deadline
            raise ProviderError(
                transient=True,
                status=None,
                message=f"deployment {name!r} is not in PROVIDER_DEPLOYMENTS (any more)",
                code="deployment_unknown",
            )
        return member

    async def _start_at(self, member: _Member, params: dict[str, Any], stream: bool) -> StartedResponse:
        breaker = member.breaker
        if not breaker.claim(clock.now()):
            raise ProviderError(
                transient=True,
                status=503,
                message=f"deployment {member.name!r} is unavailable for now (circuit open)",
                retry_after=max(1.0, breaker.reopens_in(clock.now())),
                code="deployment_unavailable",
            )
        sent = {**params, "model": member.model} if member.model else params
        try:
            started = await member.backend.start(sent, stream=stream)
        except ProviderError as error:
            if error.transient:
                if breaker.failed(clock.now(), error.retry_after):
                    log.warning("deployment %s: circuit open (%s)", member.name, error.message)
            else:  # the request's own fault (400, insufficient quota): says nothing about the deployment's health
                breaker.released()
            raise
        except BaseException:
            breaker.released()
            raise
        breaker.succeeded()
        started.deployment = member.name
        return started
