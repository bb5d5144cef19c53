"""The executor's model call: one streaming call through the one AsyncOpenAI client, to Chat Completions or to a
Responses API without background mode (EXECUTOR_API), its output as the Responses API's own stream events
(chat_translation, responses_passthrough), ending with one terminal event, without sequence numbers: the executor
numbers them in its log.

Failures: an HTTP error or a connection that breaks raises ProviderError (transient or not, as classified); a
failure the model reports inside the stream is judged as the same failure answered as an HTTP status would be
(provider.errors.reported_in_stream): a server-side one is transient (the executor retries it before output, and
starts the next attempt after), any other is the model's verdict and ends the call with a response.failed event.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from typing import Any, Protocol

import openai
from openai import AsyncOpenAI, AsyncStream

from ..provider import ProviderError, classify
from ..provider.errors import reported_in_stream
from ..responses_vocabulary import SERVER_ERROR
from .chat_translation import ChatTranslator, chat_params
from .model_request import ModelRequest, failed_event
from .responses_passthrough import ResponsesRelabeller, responses_params

EMULATOR_KNOB_HEADER = "x-emulator-knobs"  # the local emulator reads per-call knobs here (dev only)


class Model(Protocol):
    """What the executor needs of its model call (ModelClient; a scripted fake in the unit tests)."""

    @property
    def api(self) -> str: ...  # chat_completions | responses: the API new runs are started with

    def check(self, params: Mapping[str, Any]) -> None: ...  # raises RequestRefused for what the API cannot take

    def stream(
        self, request: ModelRequest, base: Mapping[str, Any], *, api: str | None = None
    ) -> AsyncGenerator[dict[str, Any], None]: ...


class ModelClient:
    """The streaming model call of the executor, through the one AsyncOpenAI client."""

    def __init__(
        self,
        client: AsyncOpenAI,
        *,
        api: str,
        idle_timeout: float,
        connect_timeout: float,
        emulator_knobs: bool = False,
    ) -> None:
        self._client = client
        self._api = api  # chat_completions | responses
        self._timeout = openai.Timeout(idle_timeout, connect=connect_timeout)
        self._emulator_knobs = emulator_knobs

    def check(self, params: Mapping[str, Any]) -> None:
        """Refuse at the start what this API cannot take: raises RequestRefused (a 400 naming the parameter)."""
        request = ModelRequest.of(params)
        if self._api == "chat_completions":
            chat_params(request)
        else:
            responses_params(request)

    @property
    def api(self) -> str:
        return self._api

    async def stream(
        self, request: ModelRequest, base: Mapping[str, Any], *, api: str | None = None
    ) -> AsyncGenerator[dict[str, Any], None]:
        """The call's events, ending with its terminal event, through `api` (default: this instance's). Raises
        ProviderError when the call is refused or its connection breaks (transient: a cut)."""
        api = api or self._api
        source = self._chat(request, base) if api == "chat_completions" else self._responses(request, base)
        async for event in source:
            yield event

    def _headers(self, request: ModelRequest) -> dict[str, str]:
        if not self._emulator_knobs:
            return {}
        knobs = {k: v for k, v in (request.metadata or {}).items() if k.startswith("emulator_")}
        return {EMULATOR_KNOB_HEADER: json.dumps(knobs)} if knobs else {}

    async def _chat(self, request: ModelRequest, base: Mapping[str, Any]) -> AsyncIterator[dict[str, Any]]:
        params = chat_params(request)
        translator = ChatTranslator(base)
        stream = await self._open(self._client.chat.completions.create, params, request)
        try:
            async for chunk in _guarded(stream):
                for event in translator.feed(chunk):
                    yield event
        except _ModelReportedFailure as failure:
            yield failed_event(base, SERVER_ERROR, str(failure))
            return
        finally:
            await stream.close()
        if not translator.ended:
            raise ProviderError(transient=True, status=None, message="the model stream ended without a finish reason")
        for event in translator.finish():
            yield event

    async def _responses(self, request: ModelRequest, base: Mapping[str, Any]) -> AsyncIterator[dict[str, Any]]:
        relabeller = ResponsesRelabeller(base)
        stream = await self._open_raw("/responses", responses_params(request), request)
        try:
            async for event in _guarded(stream):
                for ours in relabeller.feed(event):
                    yield ours
                if relabeller.ended:
                    return
        except _ModelReportedFailure as failure:
            yield failed_event(base, SERVER_ERROR, str(failure))
            return
        finally:
            await stream.close()
        raise ProviderError(transient=True, status=None, message="the model stream ended without a terminal event")

    async def _open(self, create: Any, params: dict[str, Any], request: ModelRequest) -> Any:
        try:
            return await create(**params, timeout=self._timeout, extra_headers=self._headers(request) or None)
        except Exception as error:  # noqa: BLE001 - classified
            raise classify(error) from None

    async def _open_raw(self, path: str, params: dict[str, Any], request: ModelRequest) -> AsyncStream[object]:
        """The call's stream of events as the server's JSON, not the SDK's models: the SDK builds a model class the
        first time it is used (pydantic, deferred), and the Responses API's are large enough to hold the event
        loop for seconds on a busy worker, longer than an attempt's heartbeat may stop (EXECUTOR_STALE_SECONDS).
        The SDK still does the rest: the SSE decoding, `[DONE]`, its errors (APIError for an in-stream error)."""
        try:
            return await self._client.post(
                path,
                cast_to=object,
                body=params,
                stream=True,
                stream_cls=AsyncStream[object],
                options={"timeout": self._timeout, "headers": self._headers(request)},
            )
        except Exception as error:  # noqa: BLE001 - classified
            raise classify(error) from None


class _ModelReportedFailure(Exception):
    """An error inside the stream that is the model's own verdict (not a server-side failure)."""


async def _guarded(stream: Any) -> AsyncIterator[Any]:
    """The SDK stream with its failures classified: a broken connection or an unparseable event is a cut, and so
    is a server-side error reported in the stream (transient ProviderError); any other in-stream error is the
    model's verdict (_ModelReportedFailure)."""
    try:
        async for item in stream:
            yield item
    except (openai.APIConnectionError, openai.APITimeoutError) as error:
        raise ProviderError(
            transient=True, status=None, message=f"the model stream was cut ({type(error).__name__})"
        ) from None
    except openai.APIStatusError as error:
        raise classify(error) from None
    except openai.APIError as error:  # an `{"error": {...}}` payload in the stream
        reported = reported_in_stream(error.body, error.message)
        if reported.transient:
            raise reported from None
        raise _ModelReportedFailure(error.message) from None
    except ValueError as error:  # an event cut in half
        raise ProviderError(
            transient=True, status=None, message=f"the model stream broke ({type(error).__name__})"
        ) from None
