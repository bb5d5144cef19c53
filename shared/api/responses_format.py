"""Runs as the Responses API shows them: the Response object, and the event stream.

The Response is the provider's own, as it last reported it (its create reply while the run goes on, its final
response once it ended; both kept with the run), with our run id as its id, the caller's metadata (without the
service's `bg_run_id`), `previous_response_id` as the run id it continued, and the status, output, usage and
error of the stored run. Nothing here calls the provider.

Statuses: `requires_action` is `completed` with `function_call` output items (as OpenAI reports a response
that asks for tools); `expired` (the run's deadline passed; it was cancelled at the provider) is `failed` with
error code `server_error` and a message that starts with `deadline_exceeded:`. Error codes outside OpenAI's
`ResponseErrorCode` (our own failures: `start_interrupted`, `provider_error`, ...) are `server_error` with our
code in front of the message, in the stream's responses as on GET.

Streams are the provider's events, every occurrence of the provider's response id replaced by ours and each
response object fixed as above; sequence numbers are the provider's, so `starting_after=N` resumes exactly. A
run that ends without a provider terminal event (cancelled, expired, or served from the stored run because
the provider cannot stream it) ends its stream with one event of ours, numbered FINAL_EVENT_ID (2147483647):
`response.completed` (completed, requires_action), `response.failed` (failed, expired) or
`response.incomplete` (incomplete, cancelled: a cancelled response is an incomplete one, with status
`cancelled`), carrying the stored Response. A resume after the final event, and the maximum stream duration
(STREAM_MAX_SECONDS), end the stream with an SSE comment only (no event): resume with `starting_after`.
"""

from __future__ import annotations

from typing import Any

from ..responses_vocabulary import OPENAI_ERROR_CODES, SERVER_ERROR
from ..runs.model import Run
from ..runs.relay import sse

STATUS = {
    "queued": "queued",
    "in_progress": "in_progress",
    "completed": "completed",
    "requires_action": "completed",
    "failed": "failed",
    "expired": "failed",
    "incomplete": "incomplete",
    "cancelled": "cancelled",
}
FINAL_EVENT_TYPE = {
    "completed": "response.completed",
    "failed": "response.failed",
    "incomplete": "response.incomplete",
    "cancelled": "response.incomplete",
}
SERVICE_METADATA_PREFIX = "bg_"


class ResponseRenderer:
    def render(self, run: Run) -> dict[str, Any]:
        result = run.result or {}
        base = result.get("response") or run.response or {}
        status = STATUS[run.status]
        body = {**self._defaults(run), **base}
        body.update(
            {
                "id": run.id,
                "object": "response",
                "status": status,
                "background": True,
                "metadata": dict(run.metadata),
                "previous_response_id": run.previous_run_id,
                "output": list(result.get("output") or []) if run.is_terminal else [],
                "error": _error(result.get("error")) if status == "failed" else None,
                "incomplete_details": result.get("incomplete_details") if status == "incomplete" else None,
                "usage": result.get("usage") if run.is_terminal else None,
                "completed_at": (base.get("completed_at") or int(run.completed_at or run.created_at))
                if status == "completed"
                else None,
            }
        )
        return body

    def fix(self, run: Run, response: dict[str, Any]) -> dict[str, Any]:
        """A response object from the provider's stream, as this run: our id, the caller's metadata, our chain, and
        its error in OpenAI's codes, as GET renders it."""
        fixed = {
            **_replace(response, run.response_id, run.id),
            "metadata": dict(run.metadata),
            "previous_response_id": run.previous_run_id,
        }
        if fixed.get("error"):
            fixed["error"] = _error(fixed["error"])
        return fixed

    @staticmethod
    def _defaults(run: Run) -> dict[str, Any]:
        """What OpenAI sends when the provider's own reply is not kept (a run still starting, an older run)."""
        request = run.request or {}
        return {
            "created_at": int(run.created_at),
            "model": run.model,
            "instructions": request.get("instructions"),
            "tools": request.get("tools") or [],
            "tool_choice": request.get("tool_choice", "auto"),
            "parallel_tool_calls": request.get("parallel_tool_calls", True),
            "temperature": request.get("temperature", 1.0),
            "top_p": request.get("top_p", 1.0),
            "max_output_tokens": request.get("max_output_tokens"),
            "reasoning": request.get("reasoning"),
            "store": True,
            "text": request.get("text") or {"format": {"type": "text"}},
            "truncation": request.get("truncation", "disabled"),
            "user": request.get("user"),
        }


class ResponsesEventFormat:
    """The Responses API's stream (shared.runs.relay.EventFormat): the provider's events as this run's."""

    def __init__(self, renderer: ResponseRenderer) -> None:
        self._renderer = renderer

    def preamble(self) -> bytes:
        return b""

    def event(self, run: Run, event: Any) -> bytes:
        data = _replace(_dump(event), run.response_id, run.id)
        if isinstance(data.get("response"), dict):
            data["response"] = self._renderer.fix(run, data["response"])
        return sse(data["type"], data)

    def status(self, run: Run, status: str, position: int) -> bytes | None:
        return None  # the stored-run fallback's heartbeats: keep-alive comments say enough

    def final(self, run: Run, position: int, event: Any | None) -> bytes:
        if event is not None:  # the provider's own terminal event (the run was ended from it)
            return self.event(run, event)
        response = self._renderer.render(run)
        kind = FINAL_EVENT_TYPE[response["status"]]
        return sse(kind, {"type": kind, "response": response, "sequence_number": position})

    def end(self, run: Run, position: int) -> bytes:
        return b": the response has ended and every event was already sent\n\n"

    def reconnect(self, run: Run, position: int) -> bytes:
        return f": maximum stream duration reached; resume with starting_after={position}\n\n".encode()


def _dump(event: Any) -> dict[str, Any]:
    """The event as the provider sent it (fields it did not send stay out)."""
    if hasattr(event, "model_dump"):
        dumped: dict[str, Any] = event.model_dump(mode="json", by_alias=True, exclude_unset=True)
        return dumped
    return dict(event)


def _replace(value: Any, old: str | None, new: str) -> Any:
    """`value` with every string equal to `old` (the provider's response id) replaced by `new`."""
    if old is None:
        return value
    if isinstance(value, str):
        return new if value == old else value
    if isinstance(value, dict):
        return {key: _replace(item, old, new) for key, item in value.items()}
    if isinstance(value, list):
        return [_replace(item, old, new) for item in value]
    return value


def _error(error: dict[str, Any] | None) -> dict[str, Any]:
    error = error or {}
    code, message = error.get("code") or SERVER_ERROR, error.get("message") or "The response failed."
    if code in OPENAI_ERROR_CODES:
        return {"code": code, "message": message}
    return {"code": SERVER_ERROR, "message": f"{code}: {message}"}
