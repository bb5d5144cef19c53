"""The parameters of the executor's model call: each Responses API parameter a run was started with, as the model
API the executor calls takes it, or refused at the start, by name. Nothing is dropped.

A run's parameters carry the Responses API's names (the facade takes what the caller set, the native API a subset).
With EXECUTOR_API=responses (a Responses API without background mode) they go as they are. With Chat Completions
(the default) each one Chat Completions has is translated, and every other one is refused with OpenAI's 400. The
Response of the run says what was sent (`echoed`), and nothing the call did not do.

Chat Completions, parameter by parameter (a parameter left out, or null, sends nothing):
- the same name and value: temperature, top_p, service_tier, user, safety_identifier, prompt_cache_key,
  prompt_cache_retention, prompt_cache_options, moderation;
- max_output_tokens -> max_tokens, the one name every OpenAI-compatible server reads (vLLM, LiteLLM, llama.cpp,
  transformers serve, Ollama). Ollama reads no max_completion_tokens and ignores fields it does not know, so that
  name would lose the cap silently there; a server that takes only max_completion_tokens (OpenAI's reasoning
  models, which have a background mode and need no executor) refuses max_tokens loudly instead;
- reasoning.effort -> reasoning_effort;
- text.format: text -> nothing (the default); json_object -> response_format {"type": "json_object"};
  json_schema (name, schema, strict, description) -> response_format {"type": "json_schema", "json_schema":
  {name, schema, strict, description}}; text.verbosity -> verbosity;
- tool_choice: none, auto, required -> the same; {"type": "function", "name"} -> {"type": "function", "function":
  {"name"}}; {"type": "allowed_tools", "mode", "tools"} -> {"type": "allowed_tools", "allowed_tools": {"mode",
  "tools": [{"type": "function", "function": {"name"}}]}}. Without tools, none and auto send nothing (Chat
  Completions takes tool_choice only with tools, and there is nothing to call) and the others are refused;
- parallel_tool_calls -> the same, with tools (without them there is nothing to call in parallel);
- include "message.output_text.logprobs" -> logprobs: true, and top_logprobs -> top_logprobs; the tokens' log
  probabilities come back in the output text's `logprobs`. Without that include the Responses API returns none,
  so top_logprobs alone sends nothing;
- accepted, with nothing to send: truncation (the executor applies it to a session's earlier turns:
  shared.executor.attempts), the other include values (they add detail to items the executor never produces:
  reasoning, web search, file search, code interpreter, computer calls, or to input images we keep as sent),
  stream_options without include_obfuscation, and store (true: the service keeps every run).
Refused, 400 `unsupported_parameter`: access_programs, context_management, image, max_tool_calls, prompt,
reasoning.summary, reasoning.generate_summary and any parameter not named above; 400 `unsupported_value`: a
tool_choice of another tool type, a text.format of another type, stream_options.include_obfuscation true (the
executor's streams carry no obfuscation), on both APIs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ..provider import RequestRefused

# What the executor reads itself (the conversation, its bookkeeping): never a model parameter here.
OWN = frozenset({"model", "input", "instructions", "tools", "metadata", "store", "previous_response_id"})
# Sent to Chat Completions under the same name, with the JSON types checked here.
_NUMBER, _TEXT, _OBJECT = (int, float), (str,), (dict,)
SAME_NAME: dict[str, tuple[type, ...]] = {
    "temperature": _NUMBER,
    "top_p": _NUMBER,
    "service_tier": _TEXT,
    "user": _TEXT,
    "safety_identifier": _TEXT,
    "prompt_cache_key": _TEXT,
    "prompt_cache_retention": _TEXT,
    "prompt_cache_options": _OBJECT,
    "moderation": _OBJECT,
}
LOGPROBS_INCLUDE = "message.output_text.logprobs"
INCLUDE_VALUES = frozenset(
    {
        LOGPROBS_INCLUDE,
        "reasoning.encrypted_content",
        "web_search_call.results",
        "web_search_call.action.sources",
        "file_search_call.results",
        "code_interpreter_call.outputs",
        "computer_call_output.output.image_url",
        "message.input_image.image_url",
    }
)
TRUNCATION_VALUES = frozenset({"auto", "disabled"})
TOOL_CHOICE_MODES = frozenset({"none", "auto", "required"})
MAX_TOP_LOGPROBS = 20


def _unsupported(param: str, why: str) -> RequestRefused:
    return RequestRefused(f"Unsupported parameter: '{param}' {why}", param=param)


def _unsupported_value(param: str, value: Any, why: str) -> RequestRefused:
    return RequestRefused(
        f"Unsupported value: '{param}' does not support {value!r} here: {why}", param=param, code="unsupported_value"
    )


def _invalid(param: str, message: str) -> RequestRefused:
    return RequestRefused(f"Invalid '{param}': {message}", param=param, code="invalid_value")


def _expect(param: str, value: Any, kinds: tuple[type, ...]) -> Any:
    if isinstance(value, bool) != (bool in kinds) or not isinstance(value, kinds):
        names = {
            int: "a number",
            float: "a number",
            str: "a string",
            dict: "an object",
            bool: "a boolean",
            list: "an array",
        }
        raise _invalid(param, f"must be {' or '.join(sorted({names[k] for k in kinds}))}.")
    return value


# -- Chat Completions -----------------------------------------------------------------------------------------------
def chat_options(params: Mapping[str, Any]) -> dict[str, Any]:
    """The Chat Completions parameters (all but model, messages, tools and stream) for a run's parameters; raises
    RequestRefused for the first one Chat Completions cannot take."""
    out: dict[str, Any] = {}
    for name, value in params.items():
        if value is None or name in OWN:
            continue
        if name in SAME_NAME:
            out[name] = _expect(name, value, SAME_NAME[name])
        elif name in _TRANSLATED:
            out.update(_TRANSLATED[name](value, params))
        else:
            raise _unsupported(
                name,
                _NO_EQUIVALENT.get(
                    name,
                    "has no Chat Completions equivalent, so the executor "
                    "(EXECUTOR_API=chat_completions) cannot honour it.",
                ),
            )
    return out


_NO_EQUIVALENT = {
    "prompt": "(a prompt template stored at OpenAI) is not available on a Chat Completions server.",
    "context_management": "(server-side compaction) is not available on a Chat Completions server.",
    "max_tool_calls": "limits built-in tool calls, which Chat Completions does not have.",
    "image": "(image generation options) is not available on a Chat Completions server.",
    "access_programs": "is an OpenAI access setting a Chat Completions server does not have.",
}


def _max_tokens(value: Any, params: Mapping[str, Any]) -> dict[str, Any]:
    return {"max_tokens": _expect("max_output_tokens", value, (int,))}


def _reasoning(value: Any, params: Mapping[str, Any]) -> dict[str, Any]:
    _expect("reasoning", value, _OBJECT)
    for key, item in value.items():
        if key != "effort" and item is not None:
            raise _unsupported(
                f"reasoning.{key}", "has no Chat Completions equivalent (only reasoning.effort, as reasoning_effort)."
            )
    effort = value.get("effort")
    return {"reasoning_effort": _expect("reasoning.effort", effort, _TEXT)} if effort is not None else {}


def _text(value: Any, params: Mapping[str, Any]) -> dict[str, Any]:
    _expect("text", value, _OBJECT)
    out: dict[str, Any] = {}
    for key, item in value.items():
        if item is None:
            continue
        if key == "format":
            out.update(_response_format(_expect("text.format", item, _OBJECT)))
        elif key == "verbosity":
            out["verbosity"] = _expect("text.verbosity", item, _TEXT)
        else:
            raise _unsupported(f"text.{key}", "has no Chat Completions equivalent.")
    return out


def _response_format(fmt: dict[str, Any]) -> dict[str, Any]:
    kind = fmt.get("type")
    if kind == "text":
        return {}
    if kind == "json_object":
        return {"response_format": {"type": "json_object"}}
    if kind == "json_schema":
        if not isinstance(fmt.get("name"), str) or not fmt["name"]:
            raise _invalid("text.format.name", "a json_schema format needs a 'name'.")
        _expect("text.format.schema", fmt.get("schema"), _OBJECT)
        schema = {k: fmt[k] for k in ("name", "schema", "strict", "description") if fmt.get(k) is not None}
        return {"response_format": {"type": "json_schema", "json_schema": schema}}
    raise _unsupported_value("text.format.type", kind, "Chat Completions takes text, json_object and json_schema.")


def _function_names(params: Mapping[str, Any]) -> set[str]:
    names = (
        tool.get("name")
        for tool in params.get("tools") or []
        if isinstance(tool, dict) and tool.get("type") == "function"
    )
    return {name for name in names if isinstance(name, str)}


def _tool_choice(value: Any, params: Mapping[str, Any]) -> dict[str, Any]:
    functions = _function_names(params)
    if isinstance(value, str):
        if value not in TOOL_CHOICE_MODES:
            raise _invalid("tool_choice", f"must be one of {sorted(TOOL_CHOICE_MODES)} or an object.")
        if not functions:
            if value == "required":
                raise _invalid("tool_choice", "'required' needs 'tools'.")
            return {}  # nothing to call: what none and auto mean anyway
        return {"tool_choice": value}
    _expect("tool_choice", value, _OBJECT)
    kind = value.get("type")
    if kind == "function":
        name = _named_function(value.get("name"), functions, "tool_choice.name")
        return {"tool_choice": {"type": "function", "function": {"name": name}}}
    if kind == "allowed_tools":
        mode = value.get("mode")
        if mode not in ("auto", "required"):
            raise _invalid("tool_choice.mode", "must be 'auto' or 'required'.")
        tools = value.get("tools")
        if not isinstance(tools, list) or not tools:
            raise _invalid("tool_choice.tools", "must be a non-empty array of tools.")
        names = []
        for index, tool in enumerate(tools):
            if not isinstance(tool, dict) or tool.get("type") != "function":
                raise _unsupported_value(
                    f"tool_choice.tools[{index}]", tool, "only function tools can be called through Chat Completions."
                )
            names.append(_named_function(tool.get("name"), functions, f"tool_choice.tools[{index}].name"))
        return {
            "tool_choice": {
                "type": "allowed_tools",
                "allowed_tools": {
                    "mode": mode,
                    "tools": [{"type": "function", "function": {"name": name}} for name in names],
                },
            }
        }
    raise _unsupported_value("tool_choice", kind, "Chat Completions can be told to call a function tool only.")


def _named_function(name: Any, functions: set[str], param: str) -> str:
    if not isinstance(name, str) or name not in functions:
        raise _invalid(param, f"{name!r} is not one of the function tools in 'tools'.")
    return name


def _parallel_tool_calls(value: Any, params: Mapping[str, Any]) -> dict[str, Any]:
    _expect("parallel_tool_calls", value, (bool,))
    return {"parallel_tool_calls": value} if _function_names(params) else {}


def _include(value: Any, params: Mapping[str, Any]) -> dict[str, Any]:
    _expect("include", value, (list,))
    for index, item in enumerate(value):
        if not isinstance(item, str) or item not in INCLUDE_VALUES:
            raise _invalid(f"include[{index}]", f"{item!r} is not one of {sorted(INCLUDE_VALUES)}.")
    if LOGPROBS_INCLUDE not in value:
        return {}
    top = params.get("top_logprobs")
    return {"logprobs": True, **({"top_logprobs": top} if top is not None else {})}


def _top_logprobs(value: Any, params: Mapping[str, Any]) -> dict[str, Any]:
    if not 0 <= _expect("top_logprobs", value, (int,)) <= MAX_TOP_LOGPROBS:
        raise _invalid("top_logprobs", f"must be between 0 and {MAX_TOP_LOGPROBS}.")
    return {}  # sent with the include that asks for log probabilities (_include)


def _truncation(value: Any, params: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(value, str) or value not in TRUNCATION_VALUES:
        raise _invalid("truncation", f"must be one of {sorted(TRUNCATION_VALUES)}.")
    return {}  # applied to a session's earlier turns by the executor (shared.executor.attempts)


def _stream_options(value: Any, params: Mapping[str, Any]) -> dict[str, Any]:
    check_stream_options(value)
    return {}


def check_stream_options(value: Any) -> None:
    """stream_options is about the stream the caller reads: the executor's carries no obfuscation."""
    for key, item in _expect("stream_options", value, _OBJECT).items():
        if key != "include_obfuscation":
            raise _unsupported(f"stream_options.{key}", "is not a stream option of the Responses API.")
        if item:
            raise _unsupported_value(
                "stream_options.include_obfuscation", item, "the executor's streams carry no obfuscation."
            )


_TRANSLATED: dict[str, Callable[[Any, Mapping[str, Any]], dict[str, Any]]] = {
    "max_output_tokens": _max_tokens,
    "reasoning": _reasoning,
    "text": _text,
    "tool_choice": _tool_choice,
    "parallel_tool_calls": _parallel_tool_calls,
    "include": _include,
    "top_logprobs": _top_logprobs,
    "truncation": _truncation,
    "stream_options": _stream_options,
}


# -- a Responses API without background mode ------------------------------------------------------------------------
def responses_options(params: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters a Responses API takes as they are (all but the conversation, which the executor expands,
    and stream_options, which concern the caller's stream)."""
    if params.get("stream_options") is not None:
        check_stream_options(params["stream_options"])
    return {
        name: value
        for name, value in params.items()
        if value is not None and name not in OWN and name != "stream_options"
    }


# -- what the Response says -----------------------------------------------------------------------------------------
_ECHOED_WHEN_SET = (
    "user",
    "safety_identifier",
    "prompt_cache_key",
    "prompt_cache_retention",
    "prompt_cache_options",
    "service_tier",
)


def echoed(params: Mapping[str, Any]) -> dict[str, Any]:
    """The Response's fields for what the call was asked, with the defaults the model API applies to a parameter left
    out (tool_choice auto, parallel tool calls, plain text, no truncation). What the model server decides itself is
    null when left out: sampling, and a function tool's `strict` (the Responses API's default is true, Chat
    Completions' false; the service sends what the caller set, so the server's own default applies)."""
    text = {key: value for key, value in (params.get("text") or {}).items() if value is not None}
    return {
        "tools": [_echoed_tool(tool) for tool in params.get("tools") or []],
        "temperature": params.get("temperature"),
        "top_p": params.get("top_p"),
        "top_logprobs": params.get("top_logprobs"),
        "max_output_tokens": params.get("max_output_tokens"),
        "reasoning": params.get("reasoning"),
        "tool_choice": params["tool_choice"] if params.get("tool_choice") is not None else "auto",
        "parallel_tool_calls": params.get("parallel_tool_calls") is not False,
        "text": {"format": {"type": "text"}, **text},
        "truncation": params.get("truncation") or "disabled",
        **{name: params[name] for name in _ECHOED_WHEN_SET if params.get(name) is not None},
    }


def _echoed_tool(tool: Mapping[str, Any]) -> dict[str, Any]:
    if tool.get("type") != "function":
        return dict(tool)
    return {**tool, "parameters": tool.get("parameters"), "strict": tool.get("strict")}
