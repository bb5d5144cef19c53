"""The executor's model servers (PROVIDER_DEPLOYMENTS with RUN_BACKEND executor): which one an attempt calls.

An executor run keeps its own history (our event log and runs, not a response at the server), so it is never
pinned: each call goes to the highest-priority server with room, in a weighted order within a priority
(provider.pool.weighted_order), skipping those whose circuit breaker is open (provider.pool.CircuitBreaker, the
same breaker the background deployments have). A call that fails before its first event with a 429 or 503, or
that cannot connect at all, moves on to the next server at once: nothing was produced, and the conversation is
ours to send again. Any other failure goes back to the executor's retry (attempts.Executor._call), which tries
again, from the best server, after its backoff. `served_by` learns which server answered, so the run records it.

With one server (PROVIDER_DEPLOYMENTS unset: `default`, the single-provider settings) its breaker never opens:
the executor behaves as before the pool (its own backoff, honouring Retry-After).
"""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .. import clock
from ..provider import ProviderError
from ..provider.errors import may_go_elsewhere
from ..provider.pool import CircuitBreaker, NeverOpen, weighted_order
from .model_client import Model
from .model_request import ModelRequest

log = logging.getLogger("bgruns.model_pool")


@dataclass
class ModelServer:
    """One server of the pool: its model call (a ModelClient on its own client), and how placement treats it."""

    name: str
    model: Model
    deployment: str | None = None  # sent as `model` instead of the caller's; None: the caller's
    priority: int = 0
    weight: int = 1
    breaker: CircuitBreaker = field(default_factory=CircuitBreaker)


class ModelPool:
    """The servers as one Model: each call placed, spilling before output."""

    def __init__(
        self, servers: Sequence[ModelServer], *, rng: random.Random | None = None, implicit: bool = False
    ) -> None:
        """`implicit`: the one server of the single-provider settings, which runs do not record (`served_by` is
        not told: a write per attempt that would say nothing)."""
        if not servers:
            raise ValueError("a model pool needs at least one server")
        self._servers = {server.name: server for server in servers}
        self._rng = rng or random.Random()
        self._implicit = implicit

    @classmethod
    def single(cls, model: Model, name: str) -> ModelPool:
        """One server whose breaker never opens (the implicit `default`: nowhere to spill to)."""
        return cls([ModelServer(name, model, breaker=NeverOpen())], implicit=True)

    @property
    def api(self) -> str:
        return self._first.model.api

    def check(self, params: Mapping[str, Any]) -> None:
        self._first.model.check(params)  # every server is called through the same API (EXECUTOR_API)

    def state(self) -> dict[str, str]:
        """Each server's breaker as health shows it: closed, open or half-open."""
        now = clock.now()
        return {name: server.breaker.state(now) for name, server in self._servers.items()}

    def order(self) -> list[ModelServer]:
        """The servers a call may go to now, best first. Raises the 503 the executor backs off from (its
        Retry-After: when the first breaker lets a call through again) when every breaker is open."""
        now = clock.now()
        ready = [s for s in self._servers.values() if s.breaker.available(now)]
        if not ready:
            wait = min(s.breaker.reopens_in(now) for s in self._servers.values())
            raise ProviderError(
                transient=True,
                status=503,
                message="every model server is unavailable for now (circuit open after repeated failures)",
                retry_after=max(1.0, wait),
                code="deployment_unavailable",
            )
        names = weighted_order([(s.name, s.priority, s.weight) for s in ready], self._rng)
        return [self._servers[name] for name in names]

    async def stream(
        self,
        request: ModelRequest,
        base: Mapping[str, Any],
        *,
        api: str | None = None,
        served_by: Callable[[str], None] | None = None,
    ) -> AsyncGenerator[dict[str, Any], None]:
        """The call's events from the first server that answers; `served_by(name)` is told which, at its first
        event (unless implicit). Raises the last refusal when every server refused before output."""
        refusal: ProviderError | None = None
        for server in self.order():
            if not server.breaker.claim(clock.now()):
                continue  # half-open with its probe under way
            sent = ModelRequest({**request.params, "model": server.deployment}, request.items)
            events = server.model.stream(sent if server.deployment else request, base, api=api)
            try:
                first = await _first(events)
            except ProviderError as error:
                await events.aclose()
                _judge(server, error)
                if not may_go_elsewhere(error):
                    raise
                log.info("model server %s refused before output (%s): trying the next", server.name, error.message)
                refusal = error
                continue
            except BaseException:
                await events.aclose()
                server.breaker.released()
                raise
            server.breaker.succeeded()
            if served_by is not None and not self._implicit:
                served_by(server.name)
            try:
                yield first
                async for event in events:
                    yield event
            finally:
                await events.aclose()
            return
        raise refusal or ProviderError(
            transient=True,
            status=503,
            message="every model server is busy probing after an outage",
            retry_after=1.0,
            code="deployment_unavailable",
        )

    @property
    def _first(self) -> ModelServer:
        return next(iter(self._servers.values()))


async def _first(events: AsyncGenerator[dict[str, Any], None]) -> dict[str, Any]:
    try:
        return await anext(events)
    except StopAsyncIteration:
        raise ProviderError(
            transient=True, status=None, message="the model stream ended before its first event"
        ) from None


def _judge(server: ModelServer, error: ProviderError) -> None:
    """A failure before output: a transient one counts against the server; the request's own fault does not."""
    if not error.transient:
        server.breaker.released()
    elif server.breaker.failed(clock.now(), error.retry_after):
        log.warning("model server %s: circuit open (%s)", server.name, error.message)
