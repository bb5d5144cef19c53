"""The executor's decisions on fakes: start, the event log, attempts and restarts, retries before output, cuts
after, cancel, deadline, functionTimeout, tool calls and sessions, the watchdog, following the log."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from shared.executor.attempts import Executor, Timings
from shared.executor.backend import executor_response_id
from shared.provider import ProviderError
from shared.runs.requests import RunRequest
from shared.runs.results import failure_result

from .fakes import world

FAST = Timings(
    flush_seconds=0.01,
    flush_events=64,
    check_seconds=0.02,
    retry_base_seconds=0.01,
    storage_retry_base_seconds=0.001,
    storage_retry_max_seconds=0.01,
)


def executor_world(monkeypatch, **env):
    w = world(monkeypatch, RUN_BACKEND="executor", EXECUTOR_STALE_SECONDS="30", **env)
    w.services.executor.timings = FAST
    return w


async def start(w, **fields):
    return (await w.services.starter.start(RunRequest(input=fields.pop("input", "hi"), **fields))).run


async def logged(w, run_id, after=-1) -> list[dict]:
    events, _ = await w.services.executor._log.read(run_id, after)
    return events


def text_after_last_restart(events) -> str:
    start = max((i for i, e in enumerate(events) if e["type"] == "response.output_restarted"), default=-1)
    return "".join(e.get("delta", "") for e in events[start + 1 :] if e["type"] == "response.output_text.delta")


async def until(condition, timeout=5.0):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


# -- the happy path ----------------------------------------------------------------------------------------------
async def test_a_started_run_is_queued_for_the_executor_and_says_so(monkeypatch):
    w = executor_world(monkeypatch)
    run = await start(w)
    assert run.backend == "executor" and run.response_id == executor_response_id(run.id)
    assert w.execute_queue.sent[0].message == {"run_id": run.id} and not w.backend.calls
    assert [e["type"] for e in await logged(w, run.id)] == ["response.created", "response.queued"]
    assert (await w.run(run.id)).status == "queued"
    assert w.services.views.render(await w.run(run.id))["backend"] == "executor"


async def test_the_executor_writes_responses_events_and_ends_the_run_itself(monkeypatch):
    w = executor_world(monkeypatch)
    run = await start(w, webhook_url="http://127.0.0.1:9/hook")
    assert await w.execute() == ["completed"]
    ended = await w.run(run.id)
    assert ended.status == "completed" and ended.result["output_text"] == "Hello world"
    assert ended.response_id == executor_response_id(run.id)
    events = await logged(w, run.id)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert [e["type"] for e in events] == [
        "response.created",
        "response.queued",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert events[-1]["response"]["id"] == run.response_id and events[-1]["response"]["status"] == "completed"
    assert len(w.webhook_queue.take()) == 1
    assert await w.drain_polls() == ["already-terminal"]  # the poll chain, the safety net, finds it done


async def test_the_poll_chain_ends_a_run_whose_executor_died_after_its_last_event(monkeypatch):
    w = executor_world(monkeypatch)
    run = await start(w)
    original = w.services.executor._ending.end

    async def crash(*args, **kwargs):
        raise RuntimeError("host died")

    w.services.executor._ending.end = crash
    with pytest.raises(RuntimeError):
        await w.execute()
    w.services.executor._ending.end = original
    assert (await w.run(run.id)).is_active
    assert "completed" in await w.drain_polls()
    assert (await w.run(run.id)).result["output_text"] == "Hello world"


async def test_events_are_written_in_batches_not_one_by_one(monkeypatch):
    w = executor_world(monkeypatch)
    w.services.executor.timings = Timings(flush_seconds=0.1, flush_events=64, check_seconds=1.0)

    async def storage_latency():
        await asyncio.sleep(0.004)

    w.tables["runevents"].before["submit_transaction"] = storage_latency
    run = await start(w)
    w.model.scripts = [[step for n in range(150) for step in (f"t{n} ", 0.001)]]
    assert await w.execute() == ["completed"]
    rows = [key for key in w.tables["runevents"].rows if key[0] == run.id and key[1] != "head"]
    events = await logged(w, run.id)
    assert len(events) == 2 + 1 + 2 + 150 + 4  # created, queued, in_progress, item+part, deltas, closing, completed
    assert len(rows) <= 12, f"{len(rows)} rows for {len(events)} events: not batched"


# -- attempts --------------------------------------------------------------------------------------------------------
async def test_a_second_message_while_an_attempt_is_alive_is_a_duplicate(monkeypatch):
    w = executor_world(monkeypatch)
    run = await start(w)
    gate = asyncio.Event()
    w.model.scripts = [["Hel", gate, "lo"]]
    message = w.execute_queue.take()[0]
    first = asyncio.create_task(w.services.executor.handle(message, message_id="m1", dequeue_count=1))
    await until(lambda: w.model.open == 1)
    assert await w.services.executor.handle(message, message_id="m2", dequeue_count=1) == "duplicate"
    gate.set()
    assert await first == "completed"
    assert len(w.model.requests) == 1 and (await w.run(run.id)).result["output_text"] == "Hello"


async def die_mid_call(w, message, message_id, dequeue_count):
    """Run one invocation until the model streams, then kill it (as a host SIGKILL would: no cleanup)."""
    task = asyncio.create_task(w.services.executor.handle(message, message_id=message_id, dequeue_count=dequeue_count))
    await until(lambda: w.model.open == 1)
    await asyncio.sleep(0.05)  # long enough for a batch to reach the log
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_the_executor_makes_the_first_webhook_attempt_of_the_run_it_ends(monkeypatch):
    # Runs the executor ended skipped the inline attempt the README promises ("the step that ends it makes the first
    # webhook attempt itself"): their webhook waited for the queue.
    w = executor_world(monkeypatch)
    run = await start(w, webhook_url="http://127.0.0.1:9/hook")
    assert await w.execute() == ["completed"]
    ended = await w.run(run.id)
    assert [(url, hook) for url, hook, _ in w.sender.sent] == [("http://127.0.0.1:9/hook", ended.webhook.id)]
    (safety_net,) = w.webhook_queue.sent  # waits past the inline attempt, and then finds it done
    assert safety_net.delay == w.settings.webhook_timeout + 5
    assert (await w.run(run.id)).webhook.state == "delivered"


async def test_a_message_redelivered_after_its_host_died_starts_the_next_attempt_with_a_restart_event(monkeypatch):
    w = executor_world(monkeypatch)
    run = await start(w, webhook_url="http://127.0.0.1:9/hook")
    w.model.scripts = [["first ", "attempt", asyncio.Event()], ["second attempt"]]
    message = w.execute_queue.take()[0]
    await die_mid_call(w, message, "m1", 1)
    before = await logged(w, run.id)
    assert any(e["type"] == "response.output_text.delta" for e in before)  # followers saw partial output
    assert await w.services.executor.handle(message, message_id="m1", dequeue_count=2) == "completed"
    events = await logged(w, run.id)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))  # never backwards, no gap
    restart = next(e for e in events if e["type"] == "response.output_restarted")
    assert restart["attempt"] == 2 and restart["sequence_number"] > before[-1]["sequence_number"]
    ended = await w.run(run.id)
    assert ended.result["output_text"] == "second attempt" == text_after_last_restart(events)
    assert len(w.webhook_queue.take()) == 1


async def test_after_the_attempt_limit_the_run_fails_saying_why(monkeypatch):
    w = executor_world(monkeypatch, EXECUTOR_MAX_ATTEMPTS="2")
    run = await start(w)
    w.model.scripts = [["x", asyncio.Event()]]
    message = w.execute_queue.take()[0]
    await die_mid_call(w, message, "m1", 1)
    await die_mid_call(w, message, "m1", 2)
    assert await w.services.executor.handle(message, message_id="m1", dequeue_count=3) == "failed"
    ended = await w.run(run.id)
    assert ended.status == "failed" and ended.result["error"]["code"] == "model_call_interrupted"
    assert "EXECUTOR_MAX_ATTEMPTS is 2" in ended.result["error"]["message"]
    assert (await logged(w, run.id))[-1]["type"] == "response.failed"


async def test_the_poll_chain_requeues_a_silent_attempt_and_the_next_one_takes_over(monkeypatch):
    w = executor_world(monkeypatch)
    run = await start(w)
    w.model.scripts = [["lost", asyncio.Event()], ["found"]]
    message = w.execute_queue.take()[0]
    await die_mid_call(w, message, "m1", 1)  # its message stays invisible for 10 minutes on Azure
    assert await w.drain_polls(limit=1) == ["pending"] and not w.execute_queue.sent  # not silent long enough
    w.clock.advance(31)
    assert await w.drain_polls(limit=1) == ["pending"]
    assert len(w.execute_queue.sent) == 1  # the watchdog queued it again
    assert await w.drain_polls(limit=1) == ["pending"] and len(w.execute_queue.sent) == 1  # once per stale period
    assert await w.execute(message_id="m-watchdog") == ["completed"]
    assert (await w.run(run.id)).result["output_text"] == "found"


async def test_a_run_waiting_in_the_queue_for_its_first_attempt_is_not_queued_again(monkeypatch):
    # Found by the chaos run: with a backlog of execute messages, the watchdog took a run whose first message was
    # only waiting as a silent attempt and queued it again (5,297 extra messages for 1,000 runs), growing the
    # backlog it reacted to. A run no attempt has claimed is queued again only much later (a lost message).
    w = executor_world(monkeypatch)
    run = await start(w)
    assert len(w.execute_queue.sent) == 1  # waiting in the queue, not picked up yet
    w.clock.advance(31)
    assert await w.drain_polls(limit=1) == ["pending"]
    assert len(w.execute_queue.sent) == 1
    w.clock.advance(300)
    assert await w.drain_polls(limit=1) == ["pending"]
    assert len(w.execute_queue.sent) == 2  # that long: its message was lost; queue it again
    assert [s.message for s in w.execute_queue.sent] == [{"run_id": run.id}] * 2
    assert w.execute_queue.sent[1].at == w.clock.now  # queued again by this step, not earlier


async def test_a_run_waiting_for_its_first_attempt_is_looked_at_rarely_then_on_the_backoff_once_it_runs(monkeypatch):
    # Issue 22: hundreds of runs waiting behind an execute-queue backlog each polled every <= 2 s, and that poll
    # traffic kept the steps that matter late. Nothing but the deadline ends such a run before its attempt does.
    from shared.runs.polling import EXECUTOR_WAITING_LOOK_SECONDS

    w = executor_world(monkeypatch)
    run = await start(w)
    assert await w.drain_polls(limit=1) == ["pending"]
    assert w.poll_queue.sent[-1].delay == EXECUTOR_WAITING_LOOK_SECONDS
    assert w.services.views.retry_after(await w.run(run.id)) == 1  # its own attempt ends it, at any moment
    held = asyncio.create_task(w.services.waiter.wait(await w.run(run.id), 30, lambda: w.run(run.id)))
    go = asyncio.Event()
    w.model.scripts = [["slow", go]]
    attempt = asyncio.create_task(w.execute())
    await until(lambda: w.model.open == 1)
    woken = await asyncio.wait_for(held, 2)  # a held read learns it began from the attempt, not from the chain
    assert woken.status == "in_progress"
    assert await w.drain_polls(limit=1) == ["pending"]
    assert w.poll_queue.sent[-1].delay <= w.settings.poll_max_delay * 1.2  # running: back on the backoff
    go.set()
    assert await asyncio.wait_for(attempt, 2) == ["completed"]


async def test_a_waiting_runs_rare_look_still_comes_just_after_its_deadline(monkeypatch):
    w = executor_world(monkeypatch)
    run = await start(w, deadline_seconds=20)
    assert await w.drain_polls(limit=1) == ["pending"]
    (look,) = w.poll_queue.sent
    assert look.delay == pytest.approx(run.deadline_at - look.at + 0.5)
    w.clock.now = run.deadline_at + 0.5
    assert await w.drain_polls() == ["expired"]


# -- retries and cuts ------------------------------------------------------------------------------------------------
async def test_provider_429_and_500_before_output_are_retried_without_a_restart(monkeypatch):
    w = executor_world(monkeypatch)
    run = await start(w)
    w.model.scripts = [
        [ProviderError(transient=True, status=429, message="slow down", retry_after=0.01)],
        [ProviderError(transient=True, status=500, message="oops")],
        ["fine"],
    ]
    assert await w.execute() == ["completed"]
    events = await logged(w, run.id)
    assert not any(e["type"] == "response.output_restarted" for e in events)
    assert len(w.model.requests) == 3 and (await w.run(run.id)).result["output_text"] == "fine"


async def test_a_refusal_fails_the_run_with_the_providers_message(monkeypatch):
    w = executor_world(monkeypatch)
    run = await start(w)
    w.model.scripts = [[ProviderError(transient=False, status=401, message="bad key")]]
    assert await w.execute() == ["failed"]
    error = (await w.run(run.id)).result["error"]
    assert error["code"] == "provider_error" and "401" in error["message"] and "bad key" in error["message"]


async def test_a_provider_that_keeps_failing_fails_the_run_after_its_tries(monkeypatch):
    w = executor_world(monkeypatch)
    run = await start(w)
    w.model.scripts = [[ProviderError(transient=True, status=503, message="down")]]
    assert await w.execute() == ["failed"]
    assert (await w.run(run.id)).result["error"]["code"] == "provider_unavailable"


async def test_a_cut_after_output_starts_the_next_attempt_in_the_same_invocation(monkeypatch):
    w = executor_world(monkeypatch)
    run = await start(w)
    w.model.scripts = [["partial ", ProviderError(transient=True, status=None, message="cut")], ["whole answer"]]
    assert await w.execute() == ["completed"]
    events = await logged(w, run.id)
    kinds = [e["type"] for e in events]
    assert kinds.count("response.output_restarted") == 1 and kinds.count("response.in_progress") == 2
    assert (
        "".join(e.get("delta", "") for e in events if e["type"] == "response.output_text.delta")
        == "partial whole answer"
    )
    assert (await w.run(run.id)).result["output_text"] == "whole answer" == text_after_last_restart(events)
    assert (await w.services.executor._log.head(run.id)).attempt == 2


async def test_a_failure_inside_the_stream_fails_the_run_without_retrying(monkeypatch):
    w = executor_world(monkeypatch)
    run = await start(w)
    w.model.scripts = [["half", ("fail", "the model broke")]]
    assert await w.execute() == ["failed"]
    assert len(w.model.requests) == 1
    assert (await w.run(run.id)).result["error"]["message"] == "the model broke"


# -- stopping --------------------------------------------------------------------------------------------------------
async def test_a_cancel_stops_the_model_call_and_closes_the_log(monkeypatch):
    w = executor_world(monkeypatch)
    run = await start(w, webhook_url="http://127.0.0.1:9/hook")
    w.model.scripts = [["thinking...", asyncio.Event()]]
    task = asyncio.create_task(w.execute())
    await until(lambda: w.model.open == 1)
    cancelled = await w.services.canceller.cancel(run.id)
    assert cancelled.status == "cancelled"
    assert await asyncio.wait_for(task, 2) == ["stopped"]
    assert w.model.open == 0 and w.model.closed == 1  # the HTTP stream was closed
    head = await w.services.executor._log.head(run.id)
    assert head.status == "cancelled"
    assert len(w.webhook_queue.take()) == 1


async def test_a_run_ended_elsewhere_stops_within_a_check(monkeypatch):
    w = executor_world(monkeypatch)
    run = await start(w)
    w.model.scripts = [[asyncio.Event()]]  # silent: no batch will notice, the run check must
    task = asyncio.create_task(w.execute())
    await until(lambda: w.model.open == 1)
    fresh = await w.services.executor._store.get(run.id)
    await w.services.executor._ending._lifecycle.finish(fresh, "failed", failure_result("x", "ended by the sweeper"))
    assert await asyncio.wait_for(task, 2) == ["stopped"]
    assert w.model.open == 0 and (await w.services.executor._log.head(run.id)).status == "cancelled"


async def test_the_deadline_stops_the_call_and_expires_the_run(monkeypatch):
    w = executor_world(monkeypatch)
    run = await start(w, deadline_seconds=60)
    w.model.scripts = [["slow", asyncio.Event()]]
    task = asyncio.create_task(w.execute())
    await until(lambda: w.model.open == 1)
    w.clock.advance(61)
    assert await asyncio.wait_for(task, 2) == ["expired"]
    ended = await w.run(run.id)
    assert ended.status == "expired" and "deadline of 60 s" in ended.result["error"]["message"]
    assert w.model.open == 0


async def test_a_run_still_waiting_for_its_attempt_at_its_deadline_is_expired_by_the_sweeper(monkeypatch):
    # Issue 22: under a backlog the poll queue ran late too, so such runs ended long past their deadline.
    w = executor_world(monkeypatch)
    run = await start(w, deadline_seconds=60)
    w.poll_queue.take()  # the chain's message is late
    w.clock.advance(61)
    assert (await w.services.sweeper.sweep())["expired"] == 1
    ended = await w.run(run.id)
    assert ended.status == "expired" and "deadline of 60 s" in ended.result["error"]["message"]
    assert (await w.services.executor._log.head(run.id)).status == "cancelled"  # the log is closed, as a cancel does
    assert await w.execute() == ["already-terminal"] and not w.model.requests  # its attempt never calls the model


async def test_a_call_that_would_outlive_function_timeout_fails_naming_the_limit(monkeypatch):
    w = executor_world(monkeypatch)
    executor = w.services.executor
    w.services.executor = Executor(
        executor._store,
        executor._log,
        executor._ending,
        w.model,
        dataclasses.replace(executor._settings, function_timeout_seconds=0.5),
        FAST,
    )
    run = await start(w)
    w.model.scripts = [["never ends", asyncio.Event()]]
    assert await asyncio.wait_for(w.execute(), 5) == ["failed"]
    error = (await w.run(run.id)).result["error"]
    assert error["code"] == "function_timeout" and "functionTimeout" in error["message"]
    assert w.model.open == 0


# -- tools and sessions ---------------------------------------------------------------------------------------------
async def test_tool_calls_become_function_call_items_and_requires_action(monkeypatch):
    w = executor_world(monkeypatch)
    session = await w.services.starter.open_session()
    tools = [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}]
    run = await start(w, session_id=session.id, tools=tools, input="weather in Paris?")
    w.model.scripts = [
        [
            {"id": "call_1", "name": "get_weather", "arguments": '{"city":'},
            {"arguments": '"Paris"}'},
            ("finish", "tool_calls"),
        ],
        ["It is sunny."],
    ]
    assert await w.execute() == ["completed"]
    ended = await w.run(run.id)
    assert ended.status == "requires_action"
    assert ended.result["required_action"]["calls"] == [
        {"call_id": "call_1", "name": "get_weather", "arguments": '{"city":"Paris"}'}
    ]
    follow = await start(
        w,
        session_id=session.id,
        tools=tools,
        input=[{"type": "function_call_output", "call_id": "call_1", "output": "sunny"}],
    )
    assert follow.request["previous_response_id"] == run.response_id
    assert await w.execute() == ["completed"]
    items = w.model.requests[-1].items
    assert [i.get("type") for i in items] == ["message", "function_call", "function_call_output"]
    assert items[1]["call_id"] == "call_1" and (await w.run(follow.id)).result["output_text"] == "It is sunny."


@pytest.mark.parametrize(
    "fields,param,code",
    [
        ({"tools": [{"type": "web_search"}]}, "tools[0]", "unsupported_value"),
        ({"options": {"prompt": {"id": "pmpt_1"}}}, "prompt", "unsupported_parameter"),
        ({"reasoning": {"effort": "low", "summary": "auto"}}, "reasoning.summary", "unsupported_parameter"),
        (
            {"input": [{"type": "message", "role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
            "input",
            "unsupported_value",
        ),
    ],
)
async def test_what_the_model_api_cannot_take_is_refused_by_name_before_anything_is_written(
    monkeypatch, fields, param, code
):
    from shared.errors import InvalidRequest

    w = executor_world(monkeypatch)
    session = await w.services.starter.open_session()
    before = {name: dict(table.rows) for name, table in w.tables.items()}
    with pytest.raises(InvalidRequest) as refused:
        await w.services.starter.start(
            RunRequest(**{"input": "hi", **fields}, session_id=session.id), idempotency_key="k1"
        )
    assert (refused.value.code, refused.value.param) == (code, param)
    assert {name: dict(table.rows) for name, table in w.tables.items()} == before  # no run, index, key, log
    assert not w.execute_queue.sent and not w.poll_queue.sent and not w.model.requests


async def test_the_callers_parameters_reach_the_model_and_the_response_says_so(monkeypatch):
    from shared.executor.chat_translation import chat_params

    w = executor_world(monkeypatch)
    asked = {
        "temperature": 0.2,
        "top_p": 0.5,
        "tool_choice": "none",
        "parallel_tool_calls": False,
        "text": {"format": {"type": "json_object"}},
    }
    tools = [{"type": "function", "name": "f", "parameters": {"type": "object"}}]
    run = await start(w, tools=tools, options=asked)
    assert await w.execute() == ["completed"]
    sent = chat_params(w.model.requests[-1])
    assert (
        sent["temperature"],
        sent["top_p"],
        sent["tool_choice"],
        sent["parallel_tool_calls"],
        sent["response_format"],
    ) == (0.2, 0.5, "none", False, {"type": "json_object"})
    for response in ((await w.run(run.id)).result["response"], (await logged(w, run.id))[-1]["response"]):
        assert {k: response[k] for k in asked} == asked


async def test_a_run_whose_attempt_began_reads_in_progress_without_a_write_per_batch(monkeypatch):
    # Found by issue 21: a run read `queued` for seconds while its tokens already streamed (only the poll chain's
    # next step moved it on).
    w = executor_world(monkeypatch)
    run = await start(w)
    gate = asyncio.Event()
    w.model.scripts = [[step for n in range(20) for step in (f"t{n} ", 0.01)] + [gate]]
    run_writes = []

    async def count_run_writes():
        run_writes.append(1)

    w.tables["runs"].before["update_entity"] = count_run_writes
    task = asyncio.create_task(w.execute())
    await until(lambda: w.model.open == 1)
    await asyncio.sleep(0.3)  # several batches reach the log meanwhile
    assert len([row for key, row in w.tables["runevents"].rows.items() if key[0] == run.id]) > 4
    assert (await w.run(run.id)).status == "in_progress"
    assert len(run_writes) == 1  # one write when the attempt began, none per batch
    gate.set()
    assert await task == ["completed"]


async def test_the_poll_chain_never_moves_a_run_back_from_in_progress_to_queued(monkeypatch):
    w = executor_world(monkeypatch)
    run = await start(w)
    store = w.services.executor._store
    seen_by_a_poll_step = await store.get(run.id)  # observed the log before the attempt claimed it: queued
    began = await store.get(run.id)
    began.status = "in_progress"  # the attempt began meanwhile
    await store.save_chain(began)
    assert await w.services.poll_step._scheduler.schedule(seen_by_a_poll_step, 1.0, status="queued")
    assert (await w.run(run.id)).status == "in_progress"


# -- a session's earlier turns: a bounded load (issue 21, item 9) ------------------------------------------------
async def session_with_turns(w, inputs: list[str], output: str):
    """A session whose turns (one per input) ended, each answering `output`."""
    session = await w.services.starter.open_session()
    w.model.scripts = [[output]]
    for text in inputs:
        await start(w, session_id=session.id, input=text)
        assert await w.execute() == ["completed"]
    return session


async def test_a_session_beyond_the_history_ceiling_fails_its_turn_naming_the_limit(monkeypatch):
    from shared.executor import attempts as executing

    monkeypatch.setattr(executing, "MAX_HISTORY_BYTES", 2500)
    w = executor_world(monkeypatch)
    session = await session_with_turns(w, ["one", "two", "three"], "x" * 1000)  # ~1.1 KB of JSON a turn
    calls = len(w.model.requests)
    run = await start(w, session_id=session.id, input="four")
    assert await w.execute() == ["failed"]
    error = (await w.run(run.id)).result["error"]
    assert error["code"] == "history_too_large" and "truncation" in error["message"]
    assert len(w.model.requests) == calls  # no model call with a partial history


async def test_truncation_auto_leaves_the_oldest_turns_out_whole(monkeypatch):
    from shared.executor import attempts as executing

    monkeypatch.setattr(executing, "MAX_HISTORY_BYTES", 2500)
    w = executor_world(monkeypatch)
    session = await session_with_turns(w, ["one", "two", "three"], "x" * 1000)
    await start(w, session_id=session.id, input="four", options={"truncation": "auto"})
    assert await w.execute() == ["completed"]
    items = w.model.requests[-1].items
    users = [i["content"] for i in items if i.get("role") == "user"]
    assert users == ["two", "three", "four"]  # the two newest fit; "one" is left out with its answer
    assert [i.get("role") for i in items] == ["user", "assistant", "user", "assistant", "user"]


async def test_truncation_never_begins_with_the_results_of_calls_left_out(monkeypatch):
    from shared.executor import attempts as executing

    monkeypatch.setattr(executing, "MAX_HISTORY_BYTES", 1500)
    w = executor_world(monkeypatch)
    session = await w.services.starter.open_session()
    tools = [{"type": "function", "name": "f", "parameters": {"type": "object"}}]
    w.model.scripts = [
        [{"id": "call_1", "name": "f", "arguments": "{}"}, ("finish", "tool_calls")],
        ["y" * 1000],
        ["done"],
    ]
    await start(w, session_id=session.id, tools=tools, input="call f " + "z" * 900)  # each turn fits alone
    await w.execute()
    await start(
        w,
        session_id=session.id,
        tools=tools,
        input=[{"type": "function_call_output", "call_id": "call_1", "output": "42"}],
    )
    await w.execute()
    await start(w, session_id=session.id, tools=tools, input="and now?", options={"truncation": "auto"})
    assert await w.execute() == ["completed"]
    items = w.model.requests[-1].items
    assert [i.get("type") for i in items] == ["message", "message"]  # the answer to 42, then this turn
    assert items[0]["role"] == "assistant" and items[1]["content"] == "and now?"


async def test_no_more_than_the_ceiling_of_earlier_turns_is_read(monkeypatch):
    # Today's loop read up to 500 earlier turns with their results, then silently dropped the rest.
    from shared.executor import attempts as executing

    monkeypatch.setattr(executing, "MAX_HISTORY_TURNS", 2)
    w = executor_world(monkeypatch)
    session = await session_with_turns(w, ["one", "two", "three"], "short")
    reads = []
    original = Executor._turn

    async def counted(self, response_id):
        reads.append(response_id)
        return await original(self, response_id)

    monkeypatch.setattr(Executor, "_turn", counted)
    run = await start(w, session_id=session.id, input="four")
    assert await w.execute() == ["failed"]
    assert len(reads) == 2 and "more than 2 earlier turns" in (await w.run(run.id)).result["error"]["message"]


# -- following the log ----------------------------------------------------------------------------------------------
async def test_a_follower_gets_exactly_the_events_after_its_position(monkeypatch):
    w = executor_world(monkeypatch)
    run = await start(w)
    w.model.scripts = [[f"w{n} " for n in range(30)]]
    await w.execute()
    everything = await logged(w, run.id)
    for after in (-1, 0, 4, 17, len(everything) - 2):
        follower = await w.services.relays.backend.events(run.response_id, after)
        got = [e.sequence_number async for e in follower]
        assert got == [e["sequence_number"] for e in everything if e["sequence_number"] > after]


async def test_a_follower_sees_events_as_they_are_written_and_ends_at_a_cancel(monkeypatch):
    w = executor_world(monkeypatch)
    run = await start(w)
    gate = asyncio.Event()
    w.model.scripts = [["one ", gate, "two"]]
    task = asyncio.create_task(w.execute())
    follower = await w.services.relays.backend.events(run.response_id, -1)
    seen = []

    async def follow():
        async for event in follower:
            seen.append(event.type)

    reading = asyncio.create_task(follow())
    await until(lambda: "response.output_text.delta" in seen)
    await w.services.canceller.cancel(run.id)
    await asyncio.wait_for(reading, 5)  # the closed log ends the follower without a terminal event
    assert seen[-1] != "response.completed"
    await task


async def test_large_events_go_to_blobs_and_come_back_whole(monkeypatch):
    w = executor_world(monkeypatch)
    run = await start(w)
    w.model.scripts = [["é" * 20_000, "ü" * 20_000]]
    await w.execute()
    assert any("/events/" in name for name in w.blobs.blobs)
    events = await logged(w, run.id)
    assert events[-1]["response"]["output"][0]["content"][0]["text"] == "é" * 20_000 + "ü" * 20_000
    assert (await w.run(run.id)).result["output_text"] == "é" * 20_000 + "ü" * 20_000


async def test_retention_purges_the_log_with_the_run(monkeypatch):
    w = executor_world(monkeypatch, RETENTION_DAYS="1")
    run = await start(w)
    await w.execute()
    w.webhook_queue.take()
    w.clock.advance(3 * 86400)
    await w.services.purger.purge()
    assert not [k for k in w.tables["runevents"].rows if k[0] == run.id]


async def test_runs_started_before_a_backend_switch_finish_where_they_began(monkeypatch):
    w = world(monkeypatch)  # background by default
    run = await start(w)
    assert run.backend == "background" and run.response_id.startswith("resp_")
    w.backend.responses[run.response_id].complete("from the provider")
    router = w.services.relays.backend
    router._starting = router._executor  # RUN_BACKEND switched to executor meanwhile
    assert "completed" in await w.drain_polls()
    assert (await w.run(run.id)).result["output_text"] == "from the provider"


async def test_a_batch_too_big_for_one_transaction_is_written_in_several(monkeypatch):
    from shared.executor import event_log

    monkeypatch.setattr(event_log, "MAX_ROWS_PER_APPEND", 2)
    monkeypatch.setattr(event_log, "ROW_BUDGET_BYTES", 400)
    w = executor_world(monkeypatch)
    run = await start(w)
    w.model.scripts = [[f"chunk {n} " * 4 for n in range(20)]]
    assert await w.execute() == ["completed"]
    events = await logged(w, run.id)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    head = await w.services.executor._log.head(run.id)
    assert head.last_seq == events[-1]["sequence_number"] and head.status == "completed"
    assert (await w.run(run.id)).result["output_text"] == "".join(f"chunk {n} " * 4 for n in range(20))


async def a_call_held_between_a_and_b(w):
    """A run whose model call has streamed "a" and waits for `gate` before "b"; the executor's task."""
    run = await start(w)
    gate = asyncio.Event()
    w.model.scripts = [["a", gate, "b"]]
    task = asyncio.create_task(w.execute())
    await until(lambda: w.model.open == 1)
    return run, gate, task


async def test_a_storage_hiccup_while_looking_at_the_run_does_not_stop_the_call(monkeypatch):
    from azure.core.exceptions import ServiceRequestError

    w = executor_world(monkeypatch)
    run, gate, task = await a_call_held_between_a_and_b(w)
    w.tables["runs"].fail_next = [ServiceRequestError("blip")]
    await asyncio.sleep(0.1)  # a few checks, one of which fails
    gate.set()
    assert await task == ["completed"] and (await w.run(run.id)).result["output_text"] == "ab"


async def test_a_whole_answer_is_kept_through_a_storage_outage_longer_than_a_few_tries(monkeypatch):
    # Found by the executor chaos run: Azurite went down for ~7 s just as a model call ended; the attempt gave
    # its last batch up after 4 tries (~8 s), the invocation failed, and the paid-for answer was lost (the run
    # then ran out of attempts). Storage that comes back within the patience window keeps the answer.
    from azure.core.exceptions import ServiceRequestError

    w = executor_world(monkeypatch)
    run, gate, task = await a_call_held_between_a_and_b(w)
    await asyncio.sleep(0.05)  # the first batch is written
    w.tables["runevents"].fail_next = [ServiceRequestError("storage down")] * 12
    gate.set()  # the call ends while storage is down
    assert await task == ["completed"]
    ended = await w.run(run.id)
    assert ended.status == "completed" and ended.result["output_text"] == "ab"
    assert not w.tables["runevents"].fail_next  # every failure was met, and the writer kept going
