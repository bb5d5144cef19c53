"""Faults are survived: provider storms, duplicated and lost poll messages, interrupted starts,
a crashed host, and outputs larger than Table Storage can hold."""

from __future__ import annotations

import json
import time

from azure.data.tables import TableClient, UpdateMode
from azure.storage.queue import QueueClient, TextBase64EncodePolicy
from openai import OpenAI

ALL_ENDPOINTS = "create,retrieve,stream,cancel,delete,input_items"


def runs_table(stack) -> TableClient:
    return TableClient.from_connection_string(stack.connection_string, "runs")


def retrieve_calls(stack, run_id: str) -> int:
    return stack.provider_responses(run_id)[0]["counters"].get("retrieve", 0)


def test_a_provider_429_and_500_storm_still_completes_every_run(stack):
    stack.emulator_config(fault_500_rate=0.3, fault_endpoints="retrieve")
    try:
        storm = [
            stack.start(f"storm {i}", metadata={"emulator_duration_ms": "1500", "emulator_http_errors": "429:3"}).json()
            for i in range(6)
        ]
        finals = [stack.wait(run["id"], timeout=90) for run in storm]
    finally:
        stack.emulator_config(fault_500_rate=0.0, fault_endpoints=ALL_ENDPOINTS)
    assert [f["status"] for f in finals] == ["completed"] * 6
    for run in finals:
        assert len(stack.provider_responses(run["id"])) == 1


def test_a_duplicated_poll_message_does_not_fork_the_chain(stack):
    control = stack.start("control", metadata={"emulator_duration_ms": "8000"}).json()
    run = stack.start("duplicated", metadata={"emulator_duration_ms": "8000"}).json()
    entity = runs_table(stack).get_entity(run["id"], "run")
    queue = QueueClient.from_connection_string(
        stack.connection_string, "runs-poll", message_encode_policy=TextBase64EncodePolicy()
    )
    message = json.dumps({"run_id": run["id"], "seq": entity["poll_seq"], "nonce": entity["poll_nonce"]})
    for _ in range(3):
        queue.send_message(message)
    assert stack.wait(run["id"])["status"] == "completed"
    assert stack.wait(control["id"])["status"] == "completed"
    settled = retrieve_calls(stack, run["id"])
    # Each duplicate can cost at most one extra look; a fork would double the polling from then on.
    assert settled <= retrieve_calls(stack, control["id"]) + 4
    time.sleep(3)
    assert retrieve_calls(stack, run["id"]) == settled  # nobody polls a finished run


def test_a_lost_poll_message_is_repaired_by_the_sweeper(stack):
    run = stack.start("lost", metadata={"emulator_duration_ms": "3000"}).json()
    # Make the in-flight message stale, exactly as if it had been lost: nothing will poll this run.
    runs_table(stack).update_entity(
        {"PartitionKey": run["id"], "RowKey": "run", "poll_nonce": "lost"}, mode=UpdateMode.MERGE
    )
    final = stack.wait(run["id"], timeout=40)
    assert final["status"] == "completed"


def test_an_interrupted_start_ends_failed(stack):
    # What a start leaves when its host dies after recording the run and before the provider accepted it:
    # the open-work index entry (written first) and the run without a provider response.
    long_ago = time.time() - 600
    run_id = f"run_{int(long_ago):08x}" + "ab" * 8
    TableClient.from_connection_string(stack.connection_string, "runindex").create_entity(
        {"PartitionKey": "open", "RowKey": run_id}
    )
    runs_table(stack).create_entity(
        {
            "PartitionKey": run_id,
            "RowKey": "run",
            "status": "queued",
            "created_at": long_ago,
            "model": "m",
            "session_id": "",
            "metadata": "{}",
            "response_id": "",
            "stream": False,
            "poll_seq": 0,
            "poll_nonce": "",
            "poll_count": 0,
            "next_poll_at": long_ago,
            "deadline_at": long_ago + 3600,
            "webhook_url": "",
            "webhook": "",
            "request": "{}",
            "request_blob": "",
        }
    )
    final = stack.wait(run_id, timeout=30)
    assert final["status"] == "failed" and final["error"]["code"] == "start_interrupted"


def test_a_5_mb_output_round_trips_byte_for_byte(stack):
    run = stack.start("big", metadata={"emulator_duration_ms": "1000", "emulator_output_chars": "5000000"}).json()
    final = stack.wait(run["id"], timeout=60)
    assert len(final["output_text"]) == 5_000_000
    expected = (
        OpenAI(base_url=stack.emulator.base_url, api_key="t")
        .responses.retrieve(final["provider_response_id"])
        .output_text
    )
    assert final["output_text"] == expected


def test_runs_survive_a_host_killed_mid_flight(stack):
    runs = [stack.start(f"crash {i}", metadata={"emulator_duration_ms": "3000"}).json() for i in range(5)]
    time.sleep(1.2)  # the first polls are being handled
    stack.host.kill()
    time.sleep(1)
    stack.host.start(timeout=60)
    finals = [stack.wait(run["id"], timeout=60) for run in runs]
    assert [f["status"] for f in finals] == ["completed"] * 5
    for run in runs:
        assert len(stack.provider_responses(run["id"])) == 1


def test_an_idempotency_key_left_by_a_crashed_start_is_taken_over_after_the_start_grace(stack):
    import hashlib

    from shared.api.run_requests import parse_run_body

    body = {"input": "after a crash", "metadata": {"emulator_duration_ms": "0"}}
    keys = TableClient.from_connection_string(stack.connection_string, "idempotency")

    def crashed_claim(key: str, age: float) -> None:
        # What a start leaves when its host dies after claiming the key and before recording the run.
        keys.create_entity(
            {
                "PartitionKey": hashlib.sha256(key.encode()).hexdigest(),
                "RowKey": "key",
                "run_id": "run_" + "cd" * 12,
                "claimed_at": time.time() - age,
                "body_hash": hashlib.sha256(parse_run_body(body).request.fingerprint().encode()).hexdigest(),
            }
        )

    fresh, stale = f"fresh-{time.time_ns()}", f"stale-{time.time_ns()}"
    crashed_claim(fresh, age=1)
    busy = stack.post("/api/runs", body, headers={"Idempotency-Key": fresh})
    assert busy.status_code == 409 and busy.json()["error"]["code"] == "idempotency_key_busy"
    crashed_claim(stale, age=600)
    started = stack.post("/api/runs", body, headers={"Idempotency-Key": stale})
    assert started.status_code == 200 and started.json()["status"] == "completed"
    again = stack.post("/api/runs", body, headers={"Idempotency-Key": stale})
    assert again.json()["id"] == started.json()["id"]
    assert len(stack.provider_responses(started.json()["id"])) == 1
