"""The executor's call to a Responses API without background mode (EXECUTOR_API=responses): the run's parameters go
as they are (`parameters.responses_options` checks them), and the server's stream comes back relabelled as ours
(ResponsesRelabeller): its lifecycle events dropped (the executor sends its own), its responses carrying our id and
background flag, its wire names and only the fields it sent. A failure it reports on the server's side is raised
as transient (the executor's retry, or its next attempt); any other is the model's verdict (a failed response).

The events arrive as the server's JSON (model_client reads the stream without the SDK's models, which it would
build on first use, for seconds, on the event loop).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..provider.errors import reported_in_stream
from ..redaction import redact_error
from ..responses_vocabulary import SERVER_ERROR, is_terminal_event
from .model_request import ModelRequest, failed_event, normalised_usage
from .parameters import responses_options


def responses_params(request: ModelRequest) -> dict[str, Any]:
    """The streamed Responses API call for a request (the server keeps nothing: the log is the stored response)."""
    return {
        **responses_options(request.params),
        "model": request.model,
        "input": request.items,
        "stream": True,
        "store": False,
        **{k: request.params[k] for k in ("instructions", "tools", "metadata") if request.params.get(k)},
    }


class ResponsesRelabeller:
    """A Responses API stream (without background mode) as our events: its lifecycle events are dropped (the
    executor sends its own), its responses carry our id and background flag, its error event is a failure."""

    def __init__(self, base: Mapping[str, Any]) -> None:
        self._base = base
        self.ended = False

    def feed(self, event: Any) -> list[dict[str, Any]]:
        data = _wire(event)
        kind = data.get("type")
        data.pop("sequence_number", None)
        data.pop("obfuscation", None)
        if kind in ("response.created", "response.queued", "response.in_progress", "keepalive"):
            return []
        if kind == "error":
            _raise_if_server_side(data)
            self.ended = True
            return [failed_event(self._base, data.get("code") or SERVER_ERROR, data.get("message") or "model error")]
        if is_terminal_event(kind):
            theirs = data.get("response") or {}
            if kind == "response.failed":
                _raise_if_server_side(theirs.get("error"))
            self.ended = True
            data["response"] = {
                **self._base,
                **{
                    k: theirs.get(k)
                    for k in ("status", "output", "error", "incomplete_details", "completed_at", "service_tier")
                    if k in theirs
                },
                "usage": normalised_usage(theirs.get("usage")),
            }
            if "error" in theirs:
                data["response"]["error"] = redact_error(theirs["error"])
        return [data]


def _raise_if_server_side(error: Any) -> None:
    """A failure on the server's side, reported in the stream (LiteLLM reports an upstream 500 mid-generation as a
    failed response with `server_error`), is the same as a dropped connection: a transient ProviderError, so the
    executor retries the call before output and starts the next attempt after it. Any other is the model's verdict."""
    reported = reported_in_stream(error)
    if reported.transient:
        raise reported


def _wire(event: Any) -> dict[str, Any]:
    """An event as the server sent it: its JSON as it is (what model_client reads), or an SDK event by its wire names
    (`async`, not the SDK's `async_`) and only the fields it sent (no nulls for the ones it left out)."""
    if hasattr(event, "model_dump"):
        dumped: dict[str, Any] = event.model_dump(mode="json", by_alias=True, exclude_unset=True)
        return dumped
    return dict(event)
