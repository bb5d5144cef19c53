"""Validation of `POST /api/runs` bodies: every bad input becomes a 4xx naming the problem.

A body either starts a run (`input` and options: a RunRequest) or continues one (`continuation_token`, with
`stream` to resume its stream)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ..errors import invalid as bad_request
from ..runs.requests import RunRequest
from .item_checks import check_function_tool, check_input_items

ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
METADATA_MAX_PAIRS = 15  # OpenAI allows 16; the service adds its own run id
METADATA_KEY_MAX = 64
METADATA_VALUE_MAX = 512
REASONING_EFFORTS = {"none", "minimal", "low", "medium", "high", "xhigh"}
_ALLOWED = {
    "input",
    "instructions",
    "model",
    "session_id",
    "background",
    "stream",
    "tools",
    "metadata",
    "max_output_tokens",
    "reasoning",
    "continuation_token",
    "webhook_url",
    "deadline_seconds",
}


@dataclass
class RunBody:
    """A parsed body: a new run (`request`), or a `continuation_token` to poll or resume."""

    request: RunRequest | None = None
    continuation_token: str | None = None
    stream: bool = False
    background: bool = True  # false: wait for the result as long as MAX_PREFER_WAIT_SECONDS allows


# The field readers below are shared with the Responses API facade's parser (responses_requests.py).
def expect_field(body: dict[str, Any], name: str, kinds: tuple[type, ...], what: str) -> Any:
    """`body[name]` if it is one of `kinds` (None when absent); otherwise a 400 saying it must be `what`."""
    value = body.get(name)
    if value is None:
        return None
    # bool is an int in Python; never accept it where a number is meant, or the reverse.
    if isinstance(value, bool) != (bool in kinds) or not isinstance(value, kinds):
        raise bad_request(f"'{name}' must be {what}.", param=name)
    return value


def read_input(value: Any) -> str | list[dict[str, Any]]:
    if isinstance(value, str):
        if not value.strip():
            raise bad_request("'input' must not be empty.", param="input")
        return value
    if isinstance(value, list) and value:
        check_input_items(value)
        return value
    raise bad_request("'input' must be a non-empty string or a non-empty list of input items.", param="input")


def _tools(value: list[Any]) -> list[dict[str, Any]]:
    for index, tool in enumerate(value):
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(tool.get("name"), str):
            raise bad_request(f"'tools[{index}]' must be a function tool with a name.", param=f"tools[{index}]")
        check_function_tool(tool, f"tools[{index}]")
    return value


def _metadata(value: dict[str, Any]) -> dict[str, str]:
    if len(value) > METADATA_MAX_PAIRS:
        raise bad_request(f"'metadata' has more than {METADATA_MAX_PAIRS} pairs.", param="metadata")
    for key, item in value.items():
        if not isinstance(item, str):
            raise bad_request(f"'metadata.{key}' must be a string.", param=f"metadata.{key}")
        if len(key) > METADATA_KEY_MAX or len(item) > METADATA_VALUE_MAX:
            raise bad_request(
                f"'metadata.{key}': keys are at most {METADATA_KEY_MAX} characters and values at "
                f"most {METADATA_VALUE_MAX}.",
                param=f"metadata.{key}",
            )
        if key.startswith("bg_"):
            raise bad_request("'metadata' keys starting with 'bg_' are reserved.", param=f"metadata.{key}")
    return value


def _reasoning(value: dict[str, Any]) -> dict[str, Any]:
    effort = value.get("effort")
    if effort is not None and not (isinstance(effort, str) and effort in REASONING_EFFORTS):
        raise bad_request(f"'reasoning.effort' must be one of {sorted(REASONING_EFFORTS)}.", param="reasoning.effort")
    return value


def parse_run_body(body: dict[str, Any]) -> RunBody:
    unknown = sorted(set(body) - _ALLOWED)
    if unknown:
        raise bad_request(f"Unknown field '{unknown[0]}'.", param=unknown[0], code="unknown_field")
    token = expect_field(body, "continuation_token", (str,), "a string")
    if token is not None:
        others = sorted(k for k in body if k not in ("continuation_token", "stream") and body[k] is not None)
        if others:
            raise bad_request(
                f"'continuation_token' continues an existing run; do not send '{others[0]}' with it.", param=others[0]
            )
        return RunBody(continuation_token=token, stream=flag_field(body, "stream", default=False))
    if body.get("input") is None:
        raise bad_request("'input' is required (or 'continuation_token' to poll a run).", param="input")
    request = RunRequest(input=read_input(body["input"]))
    read_model_options(body, request)
    request.session_id = expect_field(body, "session_id", (str,), "a string")
    if request.session_id is not None and not ID_PATTERN.match(request.session_id):
        raise bad_request("'session_id' is not a valid session id.", param="session_id")
    background = flag_field(body, "background", default=True)
    request.stream = flag_field(body, "stream", default=False)
    request.tools = _tools(expect_field(body, "tools", (list,), "a list") or [])
    read_our_additions(body, request)
    return RunBody(request=request, stream=request.stream, background=background)


def read_model_options(body: dict[str, Any], request: RunRequest) -> None:
    """`model`, `instructions`, `metadata`, `max_output_tokens`, `reasoning`: read the same way by both APIs."""
    request.model = expect_field(body, "model", (str,), "a string")
    if request.model is not None and not 0 < len(request.model) <= 128:
        raise bad_request("'model' must be 1 to 128 characters.", param="model")
    request.instructions = expect_field(body, "instructions", (str,), "a string")
    request.metadata = _metadata(expect_field(body, "metadata", (dict,), "an object of strings") or {})
    tokens = expect_field(body, "max_output_tokens", (int,), "an integer")
    if tokens is not None and not 1 <= tokens <= 1_000_000:
        raise bad_request("'max_output_tokens' must be between 1 and 1000000.", param="max_output_tokens")
    request.max_output_tokens = tokens
    reasoning = expect_field(body, "reasoning", (dict,), "an object")
    request.reasoning = _reasoning(reasoning) if reasoning is not None else None


def read_our_additions(body: dict[str, Any], request: RunRequest) -> None:
    """`deadline_seconds` and `webhook_url`: the service's own fields, the same in both APIs."""
    deadline = expect_field(body, "deadline_seconds", (int, float), "a number of seconds")
    if deadline is not None and not 1 <= deadline <= 30 * 24 * 3600:
        raise bad_request("'deadline_seconds' must be between 1 and 2592000.", param="deadline_seconds")
    request.deadline_seconds = deadline
    request.webhook_url = expect_field(body, "webhook_url", (str,), "a string")
    if request.webhook_url is not None and len(request.webhook_url) > 2048:
        raise bad_request("'webhook_url' is longer than 2048 characters.", param="webhook_url")


def flag_field(body: dict[str, Any], name: str, *, default: bool) -> bool:
    value = expect_field(body, name, (bool,), "true or false")
    return default if value is None else value
