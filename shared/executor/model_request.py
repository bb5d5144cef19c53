"""One call of the executor's model, in the Responses API's terms whatever API it goes to: what it asks (the run's
parameters and the whole conversation as Responses items) and the Response it builds (the skeleton a run starts
with, a status, a failure, usage in the Responses shape). The translations to and from a model API
(chat_translation, responses_passthrough) and the call itself (model_client) are built on these.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..redaction import redact
from ..responses_vocabulary import RunStatus
from .parameters import echoed


@dataclass
class ModelRequest:
    """What one model call asks: the run's parameters (Responses API names) and the whole conversation as
    Responses items (a session's earlier turns already expanded)."""

    params: Mapping[str, Any]
    items: list[dict[str, Any]]

    @classmethod
    def of(cls, params: Mapping[str, Any]) -> ModelRequest:
        """The request for parameters alone (no earlier turns)."""
        return cls(params, input_items(params.get("input")))

    @property
    def model(self) -> str:
        return str(self.params.get("model") or "")

    @property
    def metadata(self) -> dict[str, str]:
        return dict(self.params.get("metadata") or {})


def response_skeleton(response_id: str, params: Mapping[str, Any], created_at: float) -> dict[str, Any]:
    """A Responses API Response for a run's parameters (status queued, no output yet), saying what the model call
    is asked (parameters.echoed)."""
    return {
        "id": response_id,
        "object": "response",
        "created_at": int(created_at),
        "status": RunStatus.QUEUED.value,
        "background": True,
        "model": params.get("model"),
        "output": [],
        "error": None,
        "incomplete_details": None,
        "usage": None,
        "metadata": dict(params.get("metadata") or {}),
        "instructions": params.get("instructions"),
        "previous_response_id": params.get("previous_response_id"),
        "store": True,
        **echoed(params),
    }


def with_status(base: Mapping[str, Any], status: str, **fields: Any) -> dict[str, Any]:
    return {**base, "status": status, **fields}


def input_items(value: Any) -> list[dict[str, Any]]:
    """A Responses `input` (a string or a list of items) as a list of items."""
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": value}]
    return [dict(item) for item in value or []]


def continuation_items(output: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """A finished response's output as input items for the next turn (messages and function calls)."""
    items: list[dict[str, Any]] = []
    for item in output or []:
        if item.get("type") == "message":
            texts = [p.get("text", "") for p in item.get("content") or [] if p.get("type") == "output_text"]
            items.append(
                {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "".join(texts)}]}
            )
        elif item.get("type") == "function_call":
            items.append(
                {
                    "type": "function_call",
                    "call_id": item.get("call_id"),
                    "name": item.get("name"),
                    "arguments": item.get("arguments") or "",
                }
            )
    return items


def failed_event(base: Mapping[str, Any], code: str, message: str) -> dict[str, Any]:
    error = {"code": str(code), "message": redact(message)}
    return {"type": "response.failed", "response": with_status(base, RunStatus.FAILED.value, output=[], error=error)}


def normalised_usage(usage: Any) -> dict[str, Any] | None:
    """Token usage in the Responses API's shape (input/output/total tokens, cached and reasoning tokens), from a
    Chat Completions usage (prompt_tokens, ...) or a Responses one, whichever details the server left out."""
    if usage is None:
        return None
    data = (
        usage.model_dump(mode="json", by_alias=True, exclude_unset=True)
        if hasattr(usage, "model_dump")
        else dict(usage)
    )
    if "input_tokens" in data or "output_tokens" in data:
        inputs, outputs = data.get("input_tokens") or 0, data.get("output_tokens") or 0
        input_details, output_details = data.get("input_tokens_details"), data.get("output_tokens_details")
    else:
        inputs, outputs = data.get("prompt_tokens") or 0, data.get("completion_tokens") or 0
        input_details, output_details = data.get("prompt_tokens_details"), data.get("completion_tokens_details")
    input_details, output_details = input_details or {}, output_details or {}
    return {
        "input_tokens": inputs,
        "input_tokens_details": {
            "cached_tokens": input_details.get("cached_tokens") or 0,
            "cache_write_tokens": input_details.get("cache_write_tokens") or 0,
        },
        "output_tokens": outputs,
        "output_tokens_details": {"reasoning_tokens": output_details.get("reasoning_tokens") or 0},
        "total_tokens": data.get("total_tokens") or inputs + outputs,
    }
