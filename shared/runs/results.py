"""What a run produced: our status and result for a provider response, and the results we make ourselves
(a failure, a cancel, an expiry).

A result is `{output, output_text, error, incomplete_details, usage, required_action}`, and `response` when a
provider response ended the run: that response as the provider sent it, without its output (kept once, in
`output`), so the run can be shown again as the provider's Response. `output_text` is the output's message
text joined; it is derived, so it is stored once (inside `output`) and rebuilt on load.
"""

from __future__ import annotations

from typing import Any

from ..redaction import redact_error


def output_text(output: list[Any]) -> str:
    return "".join(
        part.get("text", "")
        for item in output
        if isinstance(item, dict) and item.get("type") == "message"
        for part in item.get("content") or []
        if isinstance(part, dict) and part.get("type") == "output_text"
    )


def response_snapshot(response: Any) -> dict[str, Any]:
    """The provider's Response as it sent it (fields it did not send stay out), without its output."""
    data: dict[str, Any]
    if hasattr(response, "model_dump"):
        data = response.model_dump(mode="json", by_alias=True, exclude_unset=True)
    else:
        data = dict(response)
    data.pop("output", None)
    return data


def result_from_response(response: Any) -> tuple[str, dict[str, Any]]:
    """Our status and result for a terminal provider response (an SDK model or a plain dict).

    A completed response whose output asks for function calls becomes `requires_action`: the caller
    answers with `function_call_output` items in a new run of the same session."""
    data = response.model_dump(mode="json", exclude_none=False) if hasattr(response, "model_dump") else dict(response)
    output = data.get("output") or []
    calls = [
        {"call_id": item.get("call_id"), "name": item.get("name"), "arguments": item.get("arguments")}
        for item in output
        if isinstance(item, dict) and item.get("type") == "function_call"
    ]
    status = data.get("status") or "failed"
    if status == "completed" and calls:
        status = "requires_action"
    snapshot = response_snapshot(response)
    if "error" in snapshot:  # the provider's words, kept and shown: without anything key-like
        snapshot["error"] = redact_error(snapshot["error"])
    return status, {
        "output": output,
        "output_text": output_text(output),
        "error": redact_error(data.get("error")),
        "incomplete_details": data.get("incomplete_details"),
        "usage": data.get("usage"),
        "required_action": {"type": "function_calls", "calls": calls} if status == "requires_action" else None,
        "response": snapshot,
    }


def failure_result(code: str, message: str) -> dict[str, Any]:
    return {
        "output": [],
        "output_text": "",
        "error": {"code": code, "message": message},
        "incomplete_details": None,
        "usage": None,
        "required_action": None,
    }


def cancelled_result() -> dict[str, Any]:
    return {**failure_result("cancelled", "Cancelled by the caller."), "error": None}


def stored_result(result: dict[str, Any]) -> dict[str, Any]:
    """The result as stored: without the derived output_text."""
    return {key: value for key, value in result.items() if key != "output_text"}


def loaded_result(stored: dict[str, Any] | None) -> dict[str, Any] | None:
    if stored is None:
        return None
    return {**stored, "output_text": output_text(stored.get("output") or [])}
