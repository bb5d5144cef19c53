"""Admission end to end (issue 23): the emulator enforces a request quota per model at runtime, the service on the
local host against Azurite. A start the provider has no room for is accepted (202 / the facade's `queued`
Response) and started later, exactly once at the provider; cancel, deadline, wait bound, session, Idempotency-Key
and a host crash treat a queued run like any other; what no waiting fixes still fails at once.

Each test uses a model name of its own with its own quota, so the session's other runs are not limited."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from azure.data.tables import TableClient, UpdateMode

from local.azurite import start_for_tests
from tests import sse
from tests.stack import FACADE_KEYS

QUICK = {"emulator_duration_ms": "300", "emulator_output_chars": "40"}
QUOTA_DEFAULTS = {"model_limits": {}, "quota_window_s": 60.0, "insufficient_quota": False}


@pytest.fixture
def quota(stack):
    """`quota(model, rpm, window_s)`: that model may make `rpm` creates per `window_s` (rolling) from now on."""

    def limit(model: str, rpm: int, window_s: float) -> str:
        stack.emulator.set_quota(model=model, rpm=rpm, quota_window_s=window_s)
        return model

    yield limit
    stack.emulator.configure(**QUOTA_DEFAULTS)


def full(stack, quota, model: str, window_s: float) -> str:
    """`model` with its one create per window already used: the next create waits up to `window_s`."""
    quota(model, 1, window_s)
    with openai.OpenAI(base_url=stack.emulator.base_url, api_key="k", max_retries=0) as sdk:
        sdk.responses.create(model=model, input="fill", background=True, metadata={"emulator_duration_ms": "0"})
    return model


def start(stack, model: str, headers: dict | None = None, **fields) -> httpx.Response:
    return stack.post("/api/runs", {"input": "hi", "model": model, "metadata": QUICK, **fields}, headers=headers)


def test_a_burst_over_the_quota_is_accepted_and_each_run_completes_with_one_provider_response(stack, quota):
    model = quota("adm-burst", 4, 8.0)  # a burst of 4, then one create every 2 s
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda i: start(stack, model, input=f"burst {i}"), range(12)))
    assert [a.status_code for a in answers] == [202] * 12, [a.text for a in answers if a.status_code != 202]
    queued = [a.json() for a in answers if "admission" in a.json()]
    assert len(queued) >= 6 and all(q["status"] == "queued" and q["provider_response_id"] is None for q in queued)
    assert all(int(a.headers["Retry-After"]) >= 1 for a in answers)
    finals = [stack.wait(a.json()["id"], timeout=150) for a in answers]
    assert [f["status"] for f in finals] == ["completed"] * 12
    for final in finals:
        assert len(stack.provider_responses(final["id"])) == 1
    waited = stack.get(f"/api/runs/{queued[0]['id']}", params={"include": "timeline"}).json()
    assert waited["admission"]["state"] == "granted" and waited["admission"]["attempts"] >= 2
    kinds = [e["type"] for e in waited["timeline"]["entries"]]
    assert kinds.index("capacity_queued") < kinds.index("capacity_granted")


def test_the_facade_answers_a_queued_response_that_completes_later(stack, quota):
    model = full(stack, quota, "adm-facade", 5.0)
    with openai.OpenAI(base_url=f"{stack.host.base_url}/api/v1", api_key=FACADE_KEYS["alice"], max_retries=0) as sdk:
        response = sdk.responses.create(model=model, input="hi", background=True, metadata=QUICK)
        assert response.status == "queued"
        deadline = time.monotonic() + 60
        while response.status in ("queued", "in_progress") and time.monotonic() < deadline:
            time.sleep(0.5)
            response = sdk.responses.retrieve(response.id)
    assert response.status == "completed" and response.output_text
    assert len(stack.provider_responses(response.id)) == 1


def test_cancel_while_queued_never_reaches_the_provider(stack, quota):
    model = full(stack, quota, "adm-cancel", 6.0)
    hook = f"adm-cancel-{time.time_ns()}"
    run = start(stack, model, webhook_url=stack.hook_url(hook)).json()
    assert run["admission"]["state"] == "waiting_for_capacity"
    cancelled = stack.post(f"/api/runs/{run['id']}/cancel").json()
    assert cancelled["status"] == "cancelled"
    time.sleep(8)  # past the try it had scheduled
    assert stack.provider_responses(run["id"]) == []
    assert stack.get(f"/api/runs/{run['id']}").json()["status"] == "cancelled"
    assert [json.loads(delivery["body"])["type"] for delivery in stack.received(hook)] == ["run.cancelled"]


def test_the_deadline_counts_from_acceptance_while_queued(stack, quota):
    model = full(stack, quota, "adm-deadline", 60.0)
    run = start(stack, model, deadline_seconds=3).json()
    final = stack.wait(run["id"], timeout=30)
    assert final["status"] == "expired" and final["error"]["code"] == "deadline_exceeded"
    assert final["completed_at"] - final["created_at"] < 3 + 10
    assert stack.provider_responses(run["id"]) == []


def test_insufficient_quota_fails_at_once(stack, quota):
    stack.emulator.configure(insufficient_quota=True)
    answer = start(stack, "adm-billing")
    assert answer.status_code == 502 and answer.json()["error"]["code"] == "provider_error"
    assert "quota" in answer.json()["error"]["message"]
    assert stack.provider_responses("whatever") == []


def test_an_unclear_answer_to_a_later_try_ends_the_run_and_is_never_repeated(stack, quota):
    model = full(stack, quota, "adm-unclear", 4.0)
    run = start(stack, model).json()
    assert run["status"] == "queued"
    stack.emulator_config(fault_500_rate=1.0, fault_endpoints="create")  # did it create the response? unknown
    try:
        final = stack.wait(run["id"], timeout=60)
        refused = stack.emulator.stats()["faults"]["500"]
        time.sleep(3)
        assert stack.emulator.stats()["faults"]["500"] == refused  # no try after the end
    finally:
        stack.emulator_config(fault_500_rate=0.0, fault_endpoints="create,retrieve,stream,cancel,delete,input_items")
    assert final["status"] == "failed" and final["error"]["code"] == "start_interrupted"
    assert "not repeated" in final["error"]["message"] and final["admission"]["attempts"] == 2
    assert stack.provider_responses(run["id"]) == []


def test_a_retried_start_of_a_queued_run_returns_the_same_run(stack, quota):
    model = full(stack, quota, "adm-idem", 5.0)
    headers = {"Idempotency-Key": f"adm-{time.time_ns()}"}
    first = start(stack, model, headers=headers).json()
    again = start(stack, model, headers=headers)
    assert again.status_code == 202 and again.json()["id"] == first["id"] and again.json()["status"] == "queued"
    assert stack.wait(first["id"], timeout=60)["status"] == "completed"
    assert len(stack.provider_responses(first["id"])) == 1


def test_a_queued_run_holds_its_session(stack, quota):
    model = full(stack, quota, "adm-session", 5.0)
    session = stack.post("/api/sessions").json()
    first = start(stack, model, session_id=session["id"]).json()
    assert first["status"] == "queued"
    busy = start(stack, model, session_id=session["id"])
    assert busy.status_code == 409 and busy.json()["error"]["code"] == "session_busy"
    assert stack.wait(first["id"], timeout=60)["status"] == "completed"
    follow = start(stack, "gpt-4.1-mini", session_id=session["id"]).json()
    assert stack.wait(follow["id"], timeout=60)["status"] == "completed"
    (created,) = stack.provider_responses(follow["id"])
    assert created["previous_response_id"] == stack.get(f"/api/runs/{first['id']}").json()["provider_response_id"]


def test_a_run_queued_when_its_host_is_killed_still_starts(stack, quota):
    model = full(stack, quota, "adm-crash", 6.0)
    run = start(stack, model).json()
    assert run["status"] == "queued"
    stack.host.kill()
    time.sleep(1)
    stack.host.start(timeout=60)
    final = stack.wait(run["id"], timeout=90)
    assert final["status"] == "completed" and len(stack.provider_responses(run["id"])) == 1


def test_a_queued_run_whose_message_is_lost_is_started_by_the_sweeper(stack, quota):
    model = full(stack, quota, "adm-lost", 3.0)
    run = start(stack, model).json()
    assert run["status"] == "queued"
    # Make its pending try stale, exactly as if the message had been lost: only the sweeper can go on.
    TableClient.from_connection_string(stack.connection_string, "runs").update_entity(
        {"PartitionKey": run["id"], "RowKey": "run", "poll_nonce": "lost"}, mode=UpdateMode.MERGE
    )
    final = stack.wait(run["id"], timeout=60)
    assert final["status"] == "completed" and len(stack.provider_responses(run["id"])) == 1
    kinds = [
        e["type"]
        for e in stack.get(f"/api/runs/{run['id']}", params={"include": "timeline"}).json()["timeline"]["entries"]
    ]
    assert "repaired" in kinds and kinds.index("repaired") < kinds.index("capacity_granted")


@pytest.fixture(scope="module")
def bounded_host(stack):
    """A host allowing 3 s of waiting, on storage of its own (hosts sharing a queue take each other's messages)."""
    azurite = start_for_tests(f"admission-{time.time_ns()}")
    host = stack.start_host(
        "admission-bounded", AzureWebJobsStorage=azurite.connection_string, ADMISSION_MAX_WAIT_SECONDS="3"
    )
    yield httpx.Client(base_url=host.base_url, timeout=30, headers=stack.key_headers)
    host.stop()
    azurite.stop()


def test_the_wait_is_bounded(stack, quota, bounded_host):
    model = full(stack, quota, "adm-bound", 60.0)
    run = bounded_host.post("/api/runs", json={"input": "hi", "model": model, "metadata": QUICK}).json()
    assert run["status"] == "queued"
    deadline = time.monotonic() + 40
    while (final := bounded_host.get(f"/api/runs/{run['id']}").json())[
        "continuation_token"
    ] and time.monotonic() < deadline:
        time.sleep(0.5)
    assert final["status"] == "failed" and final["error"]["code"] == "capacity_wait_exceeded"
    assert 3 <= final["completed_at"] - final["created_at"] < 3 + 15
    assert stack.provider_responses(run["id"]) == []


def test_a_streaming_start_shows_the_wait_then_the_providers_events(stack, quota):
    model = full(stack, quota, "adm-stream", 5.0)
    events = sse.read(
        stack.client, "POST", "/api/runs", json={"input": "hi", "model": model, "stream": True, "metadata": QUICK}
    )
    assert events[0].event == "run.status" and events[0].data["status"] == "queued" and events[0].id is None
    provider = [e for e in events if e.id is not None]
    assert provider[0].event == "run.created" and provider[0].id == 0  # the provider's stream, from its start
    assert events[-1].event == "run.completed"
    run_id = events[-1].data["run_id"]
    assert "".join(e.delta for e in events) == stack.get(f"/api/runs/{run_id}").json()["output_text"]
    assert len(stack.provider_responses(run_id)) == 1


def test_a_facade_stream_waits_then_streams_the_response(stack, quota):
    model = full(stack, quota, "adm-facade-stream", 5.0)
    with openai.OpenAI(base_url=f"{stack.host.base_url}/api/v1", api_key=FACADE_KEYS["alice"], max_retries=0) as sdk:
        events = list(sdk.responses.create(model=model, input="hi", stream=True, metadata=QUICK))
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    final = events[-1].response
    assert final.id.startswith("run_") and final.output_text
    assert len(stack.provider_responses(final.id)) == 1
    assert stack.get(f"/api/runs/{final.id}").json()["admission"]["state"] == "granted"


def test_a_facade_foreground_create_is_not_refused_while_the_provider_is_full(stack, quota):
    # It waits up to RESPONSES_MAX_WAIT_SECONDS as any foreground create does (the wait for capacity included),
    # then answers the response as it stands; on a loaded machine that may still be before it completed.
    model = full(stack, quota, "adm-facade-wait", 1.0)
    with openai.OpenAI(base_url=f"{stack.host.base_url}/api/v1", api_key=FACADE_KEYS["alice"], max_retries=0) as sdk:
        response = sdk.responses.create(model=model, input="hi", metadata=QUICK)
        deadline = time.monotonic() + 60
        while response.status in ("queued", "in_progress") and time.monotonic() < deadline:
            time.sleep(0.5)
            response = sdk.responses.retrieve(response.id)
    assert response.status == "completed" and response.output_text
    assert stack.get(f"/api/runs/{response.id}").json()["admission"]["attempts"] >= 2
    assert len(stack.provider_responses(response.id)) == 1
