"""The executor's model call, without a network: Responses input as Chat messages, Chat chunks as Responses
stream events (text, refusals, tool calls, finish reasons, usage)."""
from __future__ import annotations

import pytest

from shared.provider import ProviderError
from shared.provider.direct import (ChatTranslator, DirectRequest, chat_messages, chat_params, continuation_items,
                                    response_skeleton)

from .fakes import _chunk

BASE = response_skeleton("exec_1", {"model": "m", "metadata": {"k": "v"}}, 1_800_000_000.0)


def test_responses_input_becomes_chat_messages():
    items = [{"type": "message", "role": "developer", "content": "be brief"},
             {"role": "user", "content": [{"type": "input_text", "text": "look: "},
                                          {"type": "input_image", "image_url": "https://x/cat.png"}]},
             {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "a cat"}]},
             {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
             {"type": "function_call", "call_id": "c2", "name": "g", "arguments": "{}"},
             {"type": "function_call_output", "call_id": "c1", "output": "one"},
             {"type": "function_call_output", "call_id": "c2", "output": {"n": 2}}]
    messages = chat_messages("system rules", items)
    assert [m["role"] for m in messages] == ["system", "system", "user", "assistant", "assistant", "tool", "tool"]
    assert messages[2]["content"][1] == {"type": "image_url", "image_url": {"url": "https://x/cat.png"}}
    assert messages[3]["content"] == "a cat"
    assert [c["id"] for c in messages[4]["tool_calls"]] == ["c1", "c2"]  # consecutive calls: one message
    assert messages[6] == {"role": "tool", "tool_call_id": "c2", "content": '{"n": 2}'}


@pytest.mark.parametrize("params,refused", [
    ({"model": "m", "items": [{"type": "web_search_call"}]}, "web_search_call"),
    ({"model": "m", "items": [], "tools": [{"type": "file_search"}]}, "file_search"),
])
def test_what_chat_completions_cannot_take_is_refused(params, refused):
    with pytest.raises(ProviderError) as error:
        chat_params(DirectRequest(**params))
    assert not error.value.transient and error.value.status == 400 and refused in error.value.message


def test_chat_params_carry_tools_limits_and_reasoning():
    params = chat_params(DirectRequest(model="m", items=[{"role": "user", "content": "hi"}], max_output_tokens=50,
                                       reasoning={"effort": "low"},
                                       tools=[{"type": "function", "name": "f", "parameters": {}, "strict": True}]))
    assert params["tools"] == [{"type": "function", "function": {"name": "f", "parameters": {}, "strict": True}}]
    assert params["max_tokens"] == 50 and params["reasoning_effort"] == "low"
    assert params["stream"] and params["stream_options"] == {"include_usage": True}


def test_text_chunks_become_one_message_item_and_a_completed_response():
    translator = ChatTranslator(BASE)
    events = translator.feed(_chunk("Hel")) + translator.feed(_chunk("lo"))
    translator.feed(_chunk(finish="stop"))
    events += translator.finish()
    assert [e["type"] for e in events] == [
        "response.output_item.added", "response.content_part.added", "response.output_text.delta",
        "response.output_text.delta", "response.output_text.done", "response.content_part.done",
        "response.output_item.done", "response.completed"]
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
        ("message", None, None), ("function_call", "call_a", '{"x":1}'), ("function_call", "call_b", "{}")]
    deltas = [e for e in events if e["type"] == "response.function_call_arguments.delta"]
    assert [d["output_index"] for d in deltas] == [1, 2, 1]


def test_usage_is_mapped_to_the_responses_shape():
    from types import SimpleNamespace

    translator = ChatTranslator(BASE)
    translator.feed(_chunk("x"))
    translator.feed(_chunk(finish="stop"))
    translator.feed(SimpleNamespace(choices=[], usage={"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10,
                                                       "completion_tokens_details": {"reasoning_tokens": 2}}))
    usage = translator.finish()[-1]["response"]["usage"]
    assert usage == {"input_tokens": 7, "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0}, "output_tokens": 3,
                     "output_tokens_details": {"reasoning_tokens": 2}, "total_tokens": 10}


def test_a_finished_output_continues_as_input_items():
    output = [{"type": "message", "id": "m", "status": "completed", "role": "assistant",
               "content": [{"type": "output_text", "text": "a", "annotations": []},
                           {"type": "output_text", "text": "b", "annotations": []}]},
              {"type": "function_call", "id": "fc", "call_id": "c", "name": "f", "arguments": "{}", "status": "completed"},
              {"type": "reasoning", "id": "r"}]
    assert continuation_items(output) == [
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "ab"}]},
        {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"}]
