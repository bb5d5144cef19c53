"""The executor's model call, without a network: Responses input as Chat messages, Chat chunks as Responses
stream events (text, refusals, tool calls, finish reasons, usage)."""

from __future__ import annotations

import pytest

from shared.executor.chat_translation import ChatTranslator, chat_messages, chat_params
from shared.executor.model_request import ModelRequest, continuation_items, normalised_usage, response_skeleton
from shared.executor.responses_passthrough import ResponsesRelabeller, responses_params
from shared.provider import ProviderError, RequestRefused

from .fakes import _chunk

BASE = response_skeleton("exec_1", {"model": "m", "metadata": {"k": "v"}}, 1_800_000_000.0)


def test_responses_input_becomes_chat_messages():
    items = [
        {"type": "message", "role": "developer", "content": "be brief"},
        {
            "role": "user",
            "content": [
                {"type": "input_text", "text": "look: "},
                {"type": "input_image", "image_url": "https://x/cat.png"},
            ],
        },
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "a cat"}]},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        {"type": "function_call", "call_id": "c2", "name": "g", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "one"},
        {"type": "function_call_output", "call_id": "c2", "output": {"n": 2}},
    ]
    messages = chat_messages("system rules", items)
    assert [m["role"] for m in messages] == ["system", "system", "user", "assistant", "tool", "tool"]
    assert messages[2]["content"][1] == {"type": "image_url", "image_url": {"url": "https://x/cat.png"}}
    # One turn's text and its calls are one assistant message, as Chat Completions reports such a turn (a strict
    # chat template refuses two assistant messages in a row).
    assert messages[3]["content"] == "a cat" and [c["id"] for c in messages[3]["tool_calls"]] == ["c1", "c2"]
    assert messages[5] == {"role": "tool", "tool_call_id": "c2", "content": '{"n": 2}'}


def test_calls_without_text_are_an_assistant_message_without_content():
    messages = chat_messages(
        None,
        [{"role": "user", "content": "go"}, {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"}],
    )
    assert messages[1] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
    }


@pytest.mark.parametrize(
    "params,items,refused",
    [
        ({"model": "m"}, [{"type": "web_search_call"}], "web_search_call"),
        ({"model": "m", "tools": [{"type": "file_search"}]}, [], "file_search"),
    ],
)
def test_what_chat_completions_cannot_take_is_refused(params, items, refused):
    with pytest.raises(ProviderError) as error:
        chat_params(ModelRequest(params, items))
    assert not error.value.transient and error.value.status == 400 and refused in error.value.message


def test_chat_params_carry_tools_limits_and_reasoning():
    params = chat_params(
        ModelRequest(
            {
                "model": "m",
                "max_output_tokens": 50,
                "reasoning": {"effort": "low"},
                "tools": [{"type": "function", "name": "f", "parameters": {}, "strict": True}],
            },
            [{"role": "user", "content": "hi"}],
        )
    )
    assert params["tools"] == [{"type": "function", "function": {"name": "f", "parameters": {}, "strict": True}}]
    assert params["max_tokens"] == 50 and params["reasoning_effort"] == "low"
    assert params["stream"] and params["stream_options"] == {"include_usage": True}


def test_text_chunks_become_one_message_item_and_a_completed_response():
    translator = ChatTranslator(BASE)
    events = translator.feed(_chunk("Hel")) + translator.feed(_chunk("lo"))
    translator.feed(_chunk(finish="stop"))
    events += translator.finish()
    assert [e["type"] for e in events] == [
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    final = events[-1]["response"]
    assert final["id"] == "exec_1" and final["status"] == "completed" and final["metadata"] == {"k": "v"}
    assert final["output"][0]["content"][0]["text"] == "Hello" and final["output"][0]["status"] == "completed"
    assert events[0]["item"]["content"] == []  # the added item is a snapshot, not the growing one


def test_a_length_finish_is_an_incomplete_response():
    translator = ChatTranslator(BASE)
    translator.feed(_chunk("cut sh"))
    translator.feed(_chunk(finish="length"))
    final = translator.finish()[-1]
    assert final["type"] == "response.incomplete"
    assert final["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert final["response"]["output"][0]["status"] == "incomplete"


def test_tool_calls_after_text_close_the_message_and_keep_their_order():
    translator = ChatTranslator(BASE)
    events = translator.feed(_chunk("Let me check."))
    events += translator.feed(_chunk(call={"index": 0, "id": "call_a", "name": "f", "arguments": '{"x":'}))
    events += translator.feed(_chunk(call={"index": 1, "id": "call_b", "name": "g", "arguments": "{}"}))
    events += translator.feed(_chunk(call={"index": 0, "arguments": "1}"}))
    translator.feed(_chunk(finish="tool_calls"))
    events += translator.finish()
    kinds = [e["type"] for e in events]
    assert kinds.index("response.output_item.done") < kinds.index("response.function_call_arguments.delta")
    output = events[-1]["response"]["output"]
    assert [(i["type"], i.get("call_id"), i.get("arguments")) for i in output] == [
        ("message", None, None),
        ("function_call", "call_a", '{"x":1}'),
        ("function_call", "call_b", "{}"),
    ]
    deltas = [e for e in events if e["type"] == "response.function_call_arguments.delta"]
    assert [d["output_index"] for d in deltas] == [1, 2, 1]


def test_usage_is_mapped_to_the_responses_shape():
    from types import SimpleNamespace

    translator = ChatTranslator(BASE)
    translator.feed(_chunk("x"))
    translator.feed(_chunk(finish="stop"))
    translator.feed(
        SimpleNamespace(
            choices=[],
            usage={
                "prompt_tokens": 7,
                "completion_tokens": 3,
                "total_tokens": 10,
                "completion_tokens_details": {"reasoning_tokens": 2},
            },
        )
    )
    usage = translator.finish()[-1]["response"]["usage"]
    assert usage == {
        "input_tokens": 7,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": 3,
        "output_tokens_details": {"reasoning_tokens": 2},
        "total_tokens": 10,
    }


def test_a_finished_output_continues_as_input_items():
    output = [
        {
            "type": "message",
            "id": "m",
            "status": "completed",
            "role": "assistant",
            "content": [
                {"type": "output_text", "text": "a", "annotations": []},
                {"type": "output_text", "text": "b", "annotations": []},
            ],
        },
        {"type": "function_call", "id": "fc", "call_id": "c", "name": "f", "arguments": "{}", "status": "completed"},
        {"type": "reasoning", "id": "r"},
    ]
    assert continuation_items(output) == [
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "ab"}]},
        {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
    ]


# -- the caller's parameters: sent, echoed, or refused by name (issue 21, item 3) ----------------------------------
FUNCTION_TOOL = {"type": "function", "name": "f", "parameters": {"type": "object", "properties": {}}}
EVERY_PARAMETER = {
    "model": "m",
    "input": "hi",
    "tools": [FUNCTION_TOOL],
    "metadata": {"k": "v"},
    "store": True,
    "temperature": 0.2,
    "top_p": 0.9,
    "tool_choice": "none",
    "parallel_tool_calls": False,
    "text": {"format": {"type": "json_object"}, "verbosity": "low"},
    "max_output_tokens": 50,
    "reasoning": {"effort": "low", "summary": None},
    "service_tier": "flex",
    "user": "u1",
    "safety_identifier": "s1",
    "prompt_cache_key": "k1",
    "prompt_cache_retention": "24h",
    "prompt_cache_options": {"mode": "implicit"},
    "moderation": {"mode": "score"},
    "top_logprobs": 3,
    "truncation": "disabled",
    "include": ["message.output_text.logprobs", "reasoning.encrypted_content"],
    "stream_options": {"include_obfuscation": False},
}


def test_every_responses_parameter_chat_completions_has_reaches_the_call():
    # Found by issue 21: a facade create with temperature, top_p, tool_choice "none", parallel_tool_calls false and
    # text.format json_object reached the model server with only the token cap.
    chat = chat_params(ModelRequest.of(EVERY_PARAMETER))
    assert {k: v for k, v in chat.items() if k not in ("model", "messages", "tools", "stream", "stream_options")} == {
        "temperature": 0.2,
        "top_p": 0.9,
        "tool_choice": "none",
        "parallel_tool_calls": False,
        "response_format": {"type": "json_object"},
        "verbosity": "low",
        "max_tokens": 50,
        "reasoning_effort": "low",
        "service_tier": "flex",
        "user": "u1",
        "safety_identifier": "s1",
        "prompt_cache_key": "k1",
        "prompt_cache_retention": "24h",
        "prompt_cache_options": {"mode": "implicit"},
        "moderation": {"mode": "score"},
        "logprobs": True,
        "top_logprobs": 3,
    }
    assert chat["stream_options"] == {"include_usage": True} and "metadata" not in chat


@pytest.mark.parametrize(
    "asked,sent",
    [
        ({"tool_choice": "required"}, {"tool_choice": "required"}),
        (
            {"tool_choice": {"type": "function", "name": "f"}},
            {"tool_choice": {"type": "function", "function": {"name": "f"}}},
        ),
        (
            {
                "tool_choice": {
                    "type": "allowed_tools",
                    "mode": "required",
                    "tools": [{"type": "function", "name": "f"}],
                }
            },
            {
                "tool_choice": {
                    "type": "allowed_tools",
                    "allowed_tools": {"mode": "required", "tools": [{"type": "function", "function": {"name": "f"}}]},
                }
            },
        ),
        (
            {
                "text": {
                    "format": {
                        "type": "json_schema",
                        "name": "answer",
                        "strict": True,
                        "description": "d",
                        "schema": {"type": "object", "properties": {"a": {"type": "string"}}},
                    }
                }
            },
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {
                        "name": "answer",
                        "strict": True,
                        "description": "d",
                        "schema": {"type": "object", "properties": {"a": {"type": "string"}}},
                    },
                }
            },
        ),
        ({"text": {"format": {"type": "text"}}}, {}),
        ({"top_logprobs": 5}, {}),  # without the include the Responses API returns no logprobs: nothing to ask for
        ({"include": ["message.output_text.logprobs"]}, {"logprobs": True}),
        ({"truncation": "auto"}, {}),  # applied to a session's earlier turns (tests/unit/test_executor.py)
    ],
)
def test_each_parameter_is_translated_to_chat_completions(asked, sent):
    chat = chat_params(ModelRequest.of({"model": "m", "input": "hi", "tools": [FUNCTION_TOOL], **asked}))
    assert {
        k: v for k, v in chat.items() if k not in ("model", "messages", "tools", "stream", "stream_options")
    } == sent


def test_without_tools_tool_choice_none_or_auto_and_parallel_tool_calls_send_nothing():
    for choice in ("none", "auto"):
        chat = chat_params(
            ModelRequest.of({"model": "m", "input": "hi", "tool_choice": choice, "parallel_tool_calls": False})
        )
        assert "tool_choice" not in chat and "parallel_tool_calls" not in chat and "tools" not in chat


@pytest.mark.parametrize(
    "asked,param,code",
    [
        ({"prompt": {"id": "pmpt_1"}}, "prompt", "unsupported_parameter"),
        ({"context_management": [{"type": "compaction"}]}, "context_management", "unsupported_parameter"),
        ({"max_tool_calls": 3}, "max_tool_calls", "unsupported_parameter"),
        ({"image": {"size": "auto"}}, "image", "unsupported_parameter"),
        ({"access_programs": {"cyber": "standard"}}, "access_programs", "unsupported_parameter"),
        ({"frobnicate": 1}, "frobnicate", "unsupported_parameter"),
        ({"reasoning": {"effort": "low", "summary": "auto"}}, "reasoning.summary", "unsupported_parameter"),
        ({"reasoning": {"generate_summary": "concise"}}, "reasoning.generate_summary", "unsupported_parameter"),
        ({"text": {"format": {"type": "grammar"}}}, "text.format.type", "unsupported_value"),
        ({"text": {"format": {"type": "json_schema", "schema": {}}}}, "text.format.name", "invalid_value"),
        ({"tool_choice": {"type": "web_search_preview"}}, "tool_choice", "unsupported_value"),
        ({"tool_choice": {"type": "function", "name": "g"}}, "tool_choice.name", "invalid_value"),
        ({"tool_choice": "sometimes"}, "tool_choice", "invalid_value"),
        ({"truncation": "middle"}, "truncation", "invalid_value"),
        ({"include": ["file_search_call.everything"]}, "include[0]", "invalid_value"),
        ({"stream_options": {"include_obfuscation": True}}, "stream_options.include_obfuscation", "unsupported_value"),
        ({"temperature": "hot"}, "temperature", "invalid_value"),
        ({"parallel_tool_calls": "yes"}, "parallel_tool_calls", "invalid_value"),
        ({"top_logprobs": 21}, "top_logprobs", "invalid_value"),
        ({"tools": [FUNCTION_TOOL, {"type": "web_search"}]}, "tools[1]", "unsupported_value"),
        ({"tools": [{**FUNCTION_TOOL, "defer_loading": True}]}, "tools[0].defer_loading", "unsupported_parameter"),
    ],
)
def test_what_chat_completions_has_no_equivalent_for_is_refused_by_name(asked, param, code):
    with pytest.raises(RequestRefused) as refused:
        chat_params(ModelRequest.of({"model": "m", "input": "hi", "tools": [FUNCTION_TOOL], **asked}))
    assert (refused.value.param, refused.value.code, refused.value.status) == (param, code, 400)
    assert f"'{param}'" in refused.value.message


@pytest.mark.parametrize(
    "asked",
    [
        {"input": [{"role": "user", "content": 7}]},
        {"input": [{"role": ["x"], "content": "hi"}]},
        {"input": [{"role": "user", "content": [{"type": "input_text", "text": 5}]}]},
        {"input": [{"role": "user", "content": ["hi"]}]},
        {"input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": {"x": 1}}]},
        {"include": [{"x": 1}]},
        {"truncation": ["auto"]},
        {"tool_choice": ["auto"]},
        {"text": "json"},
        {"reasoning": {"effort": 3}},
        {"stream_options": "x"},
    ],
)
def test_a_shape_the_call_cannot_be_made_of_is_refused_not_a_crash(asked):
    with pytest.raises(RequestRefused) as refused:
        chat_params(ModelRequest.of({"model": "m", "input": "hi", "tools": [FUNCTION_TOOL], **asked}))
    assert refused.value.status == 400 and refused.value.param


def test_tool_choice_required_without_tools_is_refused():
    with pytest.raises(RequestRefused) as refused:
        chat_params(ModelRequest.of({"model": "m", "input": "hi", "tool_choice": "required"}))
    assert refused.value.param == "tool_choice"


def test_a_responses_api_takes_the_parameters_as_they_are():
    asked = {**EVERY_PARAMETER, "prompt": {"id": "pmpt_1"}, "max_tool_calls": 2}
    sent = responses_params(ModelRequest.of(asked))
    for name in (
        "temperature",
        "tool_choice",
        "text",
        "include",
        "parallel_tool_calls",
        "truncation",
        "prompt",
        "max_tool_calls",
        "reasoning",
        "max_output_tokens",
        "top_logprobs",
    ):
        assert sent[name] == asked[name], name
    assert sent["store"] is False and sent["stream"] is True and "stream_options" not in sent
    with pytest.raises(RequestRefused):
        responses_params(
            ModelRequest.of({"model": "m", "input": "hi", "stream_options": {"include_obfuscation": True}})
        )


def test_the_response_echoes_what_the_call_was_asked_and_invents_nothing():
    # Found by issue 21: the stored Response showed tool_choice "auto" and format text for a call asked for "none"
    # and json_object.
    asked = response_skeleton("exec_1", EVERY_PARAMETER, 1.0)
    assert (asked["temperature"], asked["top_p"], asked["tool_choice"], asked["parallel_tool_calls"]) == (
        0.2,
        0.9,
        "none",
        False,
    )
    assert asked["text"] == {"format": {"type": "json_object"}, "verbosity": "low"}
    assert (asked["top_logprobs"], asked["service_tier"], asked["user"], asked["max_output_tokens"]) == (
        3,
        "flex",
        "u1",
        50,
    )
    assert asked["tools"] == [{**FUNCTION_TOOL, "strict": None}]  # not stated: the model server's default applies
    plain = response_skeleton("exec_1", {"model": "m"}, 1.0)
    assert (plain["temperature"], plain["top_p"], plain["tool_choice"], plain["parallel_tool_calls"]) == (
        None,
        None,
        "auto",
        True,
    )  # the server's own sampling defaults are not ours to state
    assert plain["text"] == {"format": {"type": "text"}} and "service_tier" not in plain and "user" not in plain


def test_token_logprobs_come_back_in_the_output_text():
    translator = ChatTranslator(BASE)
    top = [{"token": "Hel", "logprob": -0.1, "bytes": [72, 101, 108]}, {"token": "Hi", "logprob": -2.0, "bytes": None}]
    events = translator.feed(
        _chunk("Hel", logprobs=[{"token": "Hel", "logprob": -0.1, "bytes": [72, 101, 108], "top_logprobs": top}])
    )
    events += translator.feed(
        _chunk("lo", logprobs=[{"token": "lo", "logprob": -0.3, "bytes": None, "top_logprobs": []}])
    )
    translator.feed(_chunk(finish="stop"))
    events += translator.finish()
    deltas = [e for e in events if e["type"] == "response.output_text.delta"]
    assert deltas[0]["logprobs"] == [
        {
            "token": "Hel",
            "logprob": -0.1,
            "top_logprobs": [{"token": "Hel", "logprob": -0.1}, {"token": "Hi", "logprob": -2.0}],
        }
    ]
    part = events[-1]["response"]["output"][0]["content"][0]
    assert part["logprobs"][1] == {"token": "lo", "logprob": -0.3, "bytes": [108, 111], "top_logprobs": []}
    assert part["logprobs"][0]["top_logprobs"][1]["bytes"] == [72, 105]  # bytes the server left out: the token's
    done = next(e for e in events if e["type"] == "response.output_text.done")
    assert [t["token"] for t in done["logprobs"]] == ["Hel", "lo"]
    added = next(e for e in events if e["type"] == "response.content_part.added")
    assert added["part"]["logprobs"] == []  # a snapshot: the events are written to the log later, in batches


def test_the_service_tier_the_server_used_is_the_responses():
    translator = ChatTranslator(BASE)
    translator.feed(_chunk("x", service_tier="flex"))
    translator.feed(_chunk(finish="stop"))
    assert translator.finish()[-1]["response"]["service_tier"] == "flex"


@pytest.mark.parametrize(
    "usage,expected",
    [
        ({"prompt_tokens": 7, "completion_tokens": 3, "prompt_tokens_details": {"cached_tokens": 4}}, (7, 4, 3, 0, 10)),
        ({"input_tokens": 5, "output_tokens": 2, "total_tokens": 7}, (5, 0, 2, 0, 7)),  # details left out
        (
            {
                "input_tokens": 5,
                "output_tokens": 2,
                "input_tokens_details": None,
                "output_tokens_details": {"reasoning_tokens": 1},
            },
            (5, 0, 2, 1, 7),
        ),
    ],
)
def test_usage_of_either_api_is_normalised_to_the_responses_shape(usage, expected):
    got = normalised_usage(usage)
    assert (
        got["input_tokens"],
        got["input_tokens_details"]["cached_tokens"],
        got["output_tokens"],
        got["output_tokens_details"]["reasoning_tokens"],
        got["total_tokens"],
    ) == expected
    assert got["input_tokens_details"]["cache_write_tokens"] == 0


def test_a_responses_stream_is_stored_by_its_wire_names_and_only_what_the_server_sent():
    # Found by issue 21: EXECUTOR_API=responses stored the SDK's field names ("async_": null) and nulls for every
    # field the server never sent.
    from openai._models import construct_type
    from openai.types.responses import ResponseStreamEvent

    relabeller = ResponsesRelabeller(BASE)
    call = {
        "type": "function_call",
        "id": "fc_1",
        "call_id": "call_1",
        "name": "f",
        "arguments": "{}",
        "status": "completed",
    }
    wire = [
        {"type": "response.output_item.done", "sequence_number": 5, "output_index": 0, "item": call},
        {
            "type": "response.completed",
            "sequence_number": 6,
            "response": {
                "id": "resp_theirs",
                "object": "response",
                "created_at": 1,
                "status": "completed",
                "model": "m",
                "output": [call],
                "usage": {"input_tokens": 5, "output_tokens": 2, "total_tokens": 7},
            },
        },
    ]
    stored = [e for event in wire for e in relabeller.feed(construct_type(type_=ResponseStreamEvent, value=event))]
    assert stored[0] == {"type": "response.output_item.done", "output_index": 0, "item": call}
    final = stored[1]["response"]
    assert final["id"] == "exec_1" and final["output"] == [call]
    assert final["usage"]["input_tokens_details"] == {"cached_tokens": 0, "cache_write_tokens": 0}
    assert relabeller.ended
