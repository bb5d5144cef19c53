"""The executor's flows against LiteLLM proxy (a real OpenAI-compatible server, scripted model behind it), on the
real local stack, through the native API and the official `openai` SDK on the facade: background start and poll,
a stream resumed from the middle, cancel, three-turn conversations (the prompt on turn 3 is the history a client
would keep), a tool round trip, the server's failures mapped (400, 429/500 before output, a cut mid-stream, a
server error reported mid-stream), and EXECUTOR_API=responses through LiteLLM's own Responses API."""

from __future__ import annotations

import time

from .. import sse
from .conftest import CHAT_TOOLS, TOOLS, assistant, plain, scripted, user, wait_response, words
from .servers import MODEL


def deltas(events) -> str:
    return "".join(e.delta for e in events if e.type == "response.output_text.delta")


# -- start, poll, stream, cancel -------------------------------------------------------------------------------
def test_a_background_start_is_polled_by_its_token_to_the_end(conformance, litellm):
    text = words(40)
    script_id, prompt = scripted("Write about queues", text=text, chunks=20, delay_ms=30)
    started = conformance.start(prompt, background=True)
    assert started.status_code == 202, started.text
    run = started.json()
    assert run["backend"] == "executor"
    polled = run
    while polled["continuation_token"] is not None:
        time.sleep(0.3)
        polled = conformance.post("/api/runs", {"continuation_token": polled["continuation_token"]}).json()
    assert polled["status"] == "completed" and polled["output_text"] == text
    assert polled["usage"]["output_tokens"] > 0 and polled["usage"]["input_tokens"] > 0
    [call] = litellm.calls(script_id)
    assert call["model"] == MODEL and call["messages"] == [user(prompt)]


def test_the_sdk_polls_a_background_response_to_the_end(client, litellm):
    text = words(30)
    script_id, prompt = scripted(text=text, chunks=10, delay_ms=30)
    created = client.responses.create(model=MODEL, input=prompt, background=True, instructions="Be brief.")
    assert created.status in ("queued", "in_progress")
    final = wait_response(client, created.id)
    assert final.status == "completed" and final.output_text == text
    [call] = litellm.calls(script_id)
    assert call["messages"] == [{"role": "system", "content": "Be brief."}, user(prompt)]


def test_a_stream_broken_in_the_middle_resumes_with_starting_after(client):
    text = words(60)
    _, prompt = scripted(text=text, chunks=30, delay_ms=60)
    head, stream = [], client.responses.create(model=MODEL, input=prompt, stream=True, background=True)
    for event in stream:
        head.append(event)
        if sum(e.type == "response.output_text.delta" for e in head) >= 5:
            break
    stream.close()  # the client goes away mid-generation
    response_id = head[0].response.id
    tail = list(client.responses.retrieve(response_id, stream=True, starting_after=head[-1].sequence_number))
    events = head + tail
    seqs = [e.sequence_number for e in events]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "an event is missing or repeated"
    assert tail[-1].type == "response.completed" and tail[-1].response.output_text == text
    assert deltas(events) == text and 0 < len(deltas(head)) < len(text)


def test_cancel_mid_generation_stops_the_call_at_the_server(client, litellm):
    script_id, prompt = scripted(text=words(400), chunks=200, delay_ms=100)  # 20 s unless stopped
    head, stream = [], client.responses.create(model=MODEL, input=prompt, stream=True, background=True)
    for event in stream:
        head.append(event)
        if event.type == "response.output_text.delta":
            break  # the cancel comes mid-output
    stream.close()
    response_id = head[0].response.id
    cancelled = client.responses.cancel(response_id)
    assert cancelled.status == "cancelled"
    deadline = time.monotonic() + 10
    while not litellm.stream_ends(script_id) and time.monotonic() < deadline:
        time.sleep(0.1)
    [end] = litellm.stream_ends(script_id)
    assert end["event"] == "closed" and end["sent"] < end["of"], "the model call went on after the cancel"
    assert client.responses.retrieve(response_id).status == "cancelled"
    assert len(litellm.calls(script_id)) == 1


# -- conversations ----------------------------------------------------------------------------------------------
def test_a_session_of_three_turns_sends_the_history_a_client_would_keep(conformance, litellm):
    session = conformance.post("/api/sessions").json()["id"]
    history, last_id = [], None
    for turn in range(3):
        answer = words(8, prefix=f"t{turn}-")
        last_id, prompt = scripted(f"Turn {turn}", text=answer)
        run = conformance.start(prompt, session_id=session, instructions="Answer in one line.").json()
        finished = conformance.wait(run["id"])
        assert finished["status"] == "completed" and finished["output_text"] == answer
        history += [user(prompt), assistant(answer)]
    [third] = litellm.calls(last_id)
    assert third["messages"] == [{"role": "system", "content": "Answer in one line."}] + history[:-1]


def test_a_previous_response_id_chain_of_three_turns_sends_the_whole_history(client, litellm):
    history, previous, last_id = [], None, None
    for turn in range(3):
        answer = words(8, prefix=f"c{turn}-")
        last_id, prompt = scripted(f"Turn {turn}", text=answer)
        created = client.responses.create(model=MODEL, input=prompt, previous_response_id=previous, background=True)
        final = wait_response(client, created.id)
        assert final.status == "completed" and final.output_text == answer
        assert final.previous_response_id == previous
        history += [user(prompt), assistant(answer)]
        previous = final.id
    [third] = litellm.calls(last_id)
    assert third["messages"] == history[:-1]


def test_a_tool_round_trip(client, litellm):
    script_id, prompt = scripted(
        "What is the weather in Oslo?", text="", tool_calls=[{"name": "get_weather", "arguments": {"city": "Oslo"}}]
    )
    first = wait_response(client, client.responses.create(model=MODEL, input=prompt, tools=TOOLS, background=True).id)
    assert first.status == "completed"
    [call] = [item for item in first.output if item.type == "function_call"]
    assert call.name == "get_weather" and call.arguments == '{"city": "Oslo"}'
    second = wait_response(
        client,
        client.responses.create(
            model=MODEL,
            tools=TOOLS,
            previous_response_id=first.id,
            background=True,
            input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21 C"}],
        ).id,
    )
    assert second.status == "completed" and second.output_text == "Tool get_weather returned sunny, 21 C"
    asked, answered = litellm.calls(script_id)
    assert asked["params"]["tools"] == answered["params"]["tools"] == CHAT_TOOLS
    assert plain(answered["messages"]) == plain(
        [
            user(prompt),
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": call.call_id,
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": call.call_id, "content": "sunny, 21 C"},
        ]
    )


def test_text_and_a_tool_call_in_one_turn_round_trip(client, litellm):
    script_id, prompt = scripted(
        "Weather?", text="Let me look that up.", tool_calls=[{"name": "get_weather", "arguments": {"city": "Bergen"}}]
    )
    first = wait_response(client, client.responses.create(model=MODEL, input=prompt, tools=TOOLS, background=True).id)
    assert [item.type for item in first.output] == ["message", "function_call"]
    assert first.output_text == "Let me look that up."
    call = first.output[1]
    second = wait_response(
        client,
        client.responses.create(
            model=MODEL,
            tools=TOOLS,
            previous_response_id=first.id,
            background=True,
            input=[{"type": "function_call_output", "call_id": call.call_id, "output": "rain"}],
        ).id,
    )
    assert second.status == "completed" and second.output_text == "Tool get_weather returned rain"
    assert len(litellm.calls(script_id)) == 2


# -- the server's failures ----------------------------------------------------------------------------------------
def test_a_400_fails_the_run_with_the_servers_reason_and_no_retry(conformance, litellm):
    script_id, prompt = scripted(errors=[400])
    run = conformance.start(prompt).json()
    final = conformance.wait(run["id"])
    assert final["status"] == "failed"
    assert "400" in final["error"]["message"] and "scripted 400" in final["error"]["message"]
    assert len(litellm.calls(script_id)) == 1


def test_429_and_500_before_output_are_retried_then_succeed(conformance, litellm):
    text = words(20)
    script_id, prompt = scripted(text=text, errors=[429, 500])
    events = sse.read(conformance.client, "POST", "/api/runs", json={"input": prompt, "stream": True})
    final = conformance.get(f"/api/runs/{events[0].data['run_id']}").json()
    assert final["status"] == "completed" and final["output_text"] == text
    assert "output_restarted" not in {e.event for e in events}
    assert "".join(e.delta for e in events) == text
    assert len(litellm.calls(script_id)) == 3


def test_a_connection_cut_mid_stream_restarts_the_output_then_succeeds(conformance, litellm):
    text = words(40)
    script_id, prompt = scripted(text=text, chunks=20, delay_ms=20, cut_after=6)
    events = sse.read(conformance.client, "POST", "/api/runs", json={"input": prompt, "stream": True})
    restarts = [e for e in events if e.event == "output_restarted"]
    assert len(restarts) == 1 and restarts[0].data["attempt"] == 2
    before = "".join(e.delta for e in events[: events.index(restarts[0])])
    after = "".join(e.delta for e in events[events.index(restarts[0]) :])
    assert before and text.startswith(before) and after == text
    final = conformance.get(f"/api/runs/{events[0].data['run_id']}").json()
    assert final["status"] == "completed" and final["output_text"] == text
    ends = litellm.stream_ends(script_id)
    assert [(e["event"], e["sent"]) for e in ends] == [("cut", 6), ("completed", ends[1]["of"])]


def test_a_server_error_reported_inside_the_stream_starts_the_next_attempt(conformance, litellm):
    """LiteLLM reports an upstream 500 after output began as an error in the stream (`{"error": {"code": "500"}}`),
    not a cut connection. A failure on the server's side is one all the same: the next attempt starts, as after a
    cut (issue 22; the run used to fail). A client-class one stays final (tests/unit/test_model_client.py)."""
    text = words(40)
    script_id, prompt = scripted(text=text, chunks=20, cut_after=4, cut_how="error")
    events = sse.read(conformance.client, "POST", "/api/runs", json={"input": prompt, "stream": True})
    restarts = [e for e in events if e.event == "output_restarted"]
    assert len(restarts) == 1 and "scripted error after 4 chunks" in restarts[0].data["reason"]
    final = conformance.get(f"/api/runs/{events[0].data['run_id']}").json()
    assert events[-1].event == "run.completed" and final["status"] == "completed" and final["output_text"] == text
    assert len(litellm.calls(script_id)) == 2


def test_a_server_error_inside_litellms_responses_stream_starts_the_next_attempt(responses_host, litellm):
    """The same through LiteLLM's Responses API, which reports the upstream 500 as a failed response with
    `server_error`."""
    text = words(30)
    script_id, prompt = scripted(text=text, chunks=10, cut_after=3, cut_how="error")
    events = sse.read(responses_host, "POST", "/api/runs", json={"input": prompt, "stream": True})
    assert sum(e.event == "output_restarted" for e in events) == 1
    final = responses_host.get(f"/api/runs/{events[0].data['run_id']}").json()
    assert final["status"] == "completed" and final["output_text"] == text
    assert len(litellm.calls(script_id)) == 2


# -- the Responses API without background mode (LiteLLM's /v1/responses) ------------------------------------------
def test_executor_api_responses_streams_through_litellms_responses_api(responses_host, litellm):
    text = words(30)
    script_id, prompt = scripted(text=text, chunks=10, delay_ms=20)
    events = sse.read(responses_host, "POST", "/api/runs", json={"input": prompt, "stream": True})
    final = responses_host.get(f"/api/runs/{events[0].data['run_id']}").json()
    assert final["status"] == "completed" and final["output_text"] == text
    assert "".join(e.delta for e in events) == text
    [call] = litellm.calls(script_id)
    assert call["messages"] == [user(prompt)]
