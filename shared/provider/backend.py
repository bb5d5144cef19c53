"""The seam between a run and whatever produces its response.

`RunBackend` is the one interface through which the service starts a response, learns its state, cancels it,
streams its events and deletes it. `ResponsesBackend` is today's: the provider's Responses API in background mode
(OpenAI, Azure OpenAI, the emulator). Other ways of learning a run's state (provider webhooks, watching a
stream) and other ways of running (an executor for models without a background mode) plug in beside it.
Every method raises ProviderError for a failure the caller must handle (classified: transient or not).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import openai
from openai import AsyncOpenAI

from ..responses_vocabulary import ACTIVE_STATUSES
from ..settings import DEFAULT_DEPLOYMENT
from .errors import ProviderError, classify, rate_limit_headers


@dataclass(frozen=True)
class ProviderState:
    """The provider's view of one response: its status and the whole response (an SDK model)."""

    response_id: str
    status: str
    response: Any  # an SDK Response model, or the same as plain JSON

    @property
    def is_active(self) -> bool:
        return self.status in ACTIVE_STATUSES


class EventStream(Protocol):
    """A response's events in order (each with `type` and `sequence_number`); close it when done."""

    def __aiter__(self) -> AsyncIterator[Any]: ...
    async def close(self) -> None: ...


@dataclass
class StartedResponse:
    state: ProviderState
    events: EventStream | None = None  # for streaming starts: the create call's own event stream
    rate_limits: dict[str, str] = field(default_factory=dict)  # the answer's x-ratelimit-* headers (runs.pacing)
    deployment: str | None = None  # where it was created (provider.pool); None: a backend without deployments


@dataclass(frozen=True)
class Candidate:
    """A deployment a start may go to, as the pacing sees it: the row it paces by and that row's budgets (0: the
    service's PACING_* budgets). `name` None: a backend without deployments (the executor); the pacing keys by
    model then, as does the implicit `default` deployment."""

    name: str | None
    pacing_key: str | None = None  # None: the create's model
    requests_per_minute: int = 0
    tokens_per_minute: int = 0
    reopens_in: float = 0.0  # seconds until its circuit breaker lets a start through (0: now; provider.pool)
    probe: bool = False  # its breaker is half-open: the next start tests it (unpaced: it costs no slot if refused)


ANYWHERE = Candidate(None)


class RunBackend(Protocol):
    """`deployment` names where a response lives (a run's `deployment`, provider.pool); a start without one is
    placed, and its StartedResponse says where. Backends without deployments (the executor) ignore it."""

    kind: str  # "background" or "executor": what runs started through it say ran them

    def check(self, params: dict[str, Any]) -> None: ...  # before anything is written: raises RequestRefused
    def candidates(self, pinned: str | None = None) -> list[Candidate]: ...  # where a start may go, best first
    async def start(
        self, params: dict[str, Any], *, stream: bool, deployment: str | None = None
    ) -> StartedResponse: ...
    async def observe(self, response_id: str, *, deployment: str = DEFAULT_DEPLOYMENT) -> ProviderState: ...
    async def cancel(self, response_id: str, *, deployment: str = DEFAULT_DEPLOYMENT) -> ProviderState | None: ...
    async def events(self, response_id: str, after: int, *, deployment: str = DEFAULT_DEPLOYMENT) -> EventStream: ...
    async def delete(self, response_id: str, *, deployment: str = DEFAULT_DEPLOYMENT) -> None: ...


class _PrefixedStream:
    """The create call's event stream with its already-read first event put back in front."""

    def __init__(self, first: Any, stream: Any) -> None:
        self._first, self._stream = first, stream

    async def __aiter__(self) -> AsyncIterator[Any]:
        yield self._first
        async for event in self._stream:
            yield event

    async def close(self) -> None:
        await self._stream.close()


class ResponsesBackend:
    """Background responses of the provider's Responses API at one endpoint: a deployment of the pool
    (provider.pool.DeploymentPool is the RunBackend)."""

    kind = "background"

    def __init__(self, client: AsyncOpenAI) -> None:
        self._client = client

    def check(self, params: dict[str, Any]) -> None:
        """Nothing to refuse here: the provider judges the parameters it is passed."""

    async def start(self, params: dict[str, Any], *, stream: bool) -> StartedResponse:
        """Create the response with background=true (never retried: a retry could start a second one)."""
        try:
            if not stream:  # plain JSON, as in observe(): the SDK's model parsing is the costly part
                raw = await self._client.responses.with_raw_response.create(**params, background=True)
                data = json.loads(raw.http_response.content)
                limits = rate_limit_headers(raw.http_response.headers)
                return StartedResponse(ProviderState(data["id"], data["status"], data), rate_limits=limits)
            reply = await self._client.responses.create(**params, background=True, stream=True)
        except Exception as error:  # noqa: BLE001 - classified
            raise classify(error) from None
        try:  # the reply is an event stream; its first event carries the response
            first = await reply.__anext__()
        except Exception as error:  # noqa: BLE001 - a stream that ends or breaks before its first event
            await reply.close()
            raise _early_stream_failure(error) from None
        limits = rate_limit_headers(getattr(getattr(reply, "response", None), "headers", None))
        return StartedResponse(_state(first.response), _PrefixedStream(first, reply), limits)

    async def observe(self, response_id: str) -> ProviderState:
        """The response as plain JSON: on the poll chain's hot path, parsing it into the SDK's models would cost
        more CPU than everything else the step does (result_from_response reads either form)."""
        try:
            raw = await self._client.responses.with_raw_response.retrieve(response_id)
            data = json.loads(raw.http_response.content)
        except Exception as error:  # noqa: BLE001 - classified
            raise classify(error) from None
        return ProviderState(data["id"], data["status"], data)

    async def cancel(self, response_id: str) -> ProviderState | None:
        """The provider's view after the cancel; None when it no longer knows the response (404)."""
        try:
            return _state(await self._client.responses.cancel(response_id))
        except Exception as error:  # noqa: BLE001 - classified
            failure = classify(error)
            if failure.status == 404:
                return None
            raise failure from None

    async def events(self, response_id: str, after: int) -> EventStream:
        try:
            if after >= 0:
                return await self._client.responses.retrieve(response_id, stream=True, starting_after=after)
            return await self._client.responses.retrieve(response_id, stream=True)
        except Exception as error:  # noqa: BLE001 - classified
            raise classify(error) from None

    async def delete(self, response_id: str) -> None:
        """Delete the stored response; one the provider no longer knows (404) is gone already."""
        try:
            await self._client.responses.delete(response_id)
        except Exception as error:  # noqa: BLE001 - classified
            failure = classify(error)
            if failure.status != 404:
                raise failure from None


def _early_stream_failure(error: Exception) -> ProviderError:
    if isinstance(error, openai.OpenAIError):
        return classify(error)
    return ProviderError(
        transient=True, status=None, message=f"the create stream ended before its first event ({type(error).__name__})"
    )


def _state(response: Any) -> ProviderState:
    return ProviderState(response.id, response.status, response)
