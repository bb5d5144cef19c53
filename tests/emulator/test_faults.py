"""Injected faults look like the real provider: the SDK's own retries honour retry-after."""

from __future__ import annotations

import time

import openai
import pytest

from .conftest import admin, record


def test_per_response_429_retry_after_is_honoured(client, emu):
    r = client.responses.create(
        model="m",
        input="x",
        background=True,
        metadata={"emulator_http_errors": "429:2", "emulator_retry_after_ms": "300", "emulator_duration_ms": "0"},
    )
    t0 = time.monotonic()
    got = client.responses.retrieve(r.id)  # SDK default max_retries=2 absorbs both 429s
    waited = time.monotonic() - t0
    assert got.status == "completed"
    assert waited >= 0.58  # two sleeps of exactly retry-after-ms
    rec = record(emu, r.id)
    assert rec["counters"]["retrieve"] == 3 and rec["counters"]["http_errors_served"] == 2
    assert client.responses.retrieve(r.id).status == "completed"  # later requests are normal


def test_per_response_errors_surface_without_retries(client):
    r = client.responses.create(
        model="m",
        input="x",
        background=True,
        metadata={"emulator_http_errors": "500:1,503:1", "emulator_duration_ms": "0"},
    )
    no_retry = client.with_options(max_retries=0)
    with pytest.raises(openai.InternalServerError) as exc:
        no_retry.responses.retrieve(r.id)
    assert exc.value.status_code == 500 and exc.value.type == "server_error"
    with pytest.raises(openai.InternalServerError) as exc:
        no_retry.responses.retrieve(r.id)
    assert exc.value.status_code == 503 and exc.value.response.headers["retry-after-ms"]
    assert no_retry.responses.retrieve(r.id).status == "completed"


def test_create_header_fault_retried_creates_exactly_one(client, emu):
    t0 = time.monotonic()
    r = client.responses.create(
        model="m",
        input="x",
        background=True,
        metadata={"bg_run_id": "hdr-429", "emulator_duration_ms": "0"},
        extra_headers={"x-emulator-fault": "429:2"},
    )
    assert time.monotonic() - t0 >= 0.38  # 2 x the global retry_after_ms (200 ms)
    rows = admin(emu, "GET", "responses", params={"metadata.bg_run_id": "hdr-429"})["data"]
    assert [row["id"] for row in rows] == [r.id]
    with pytest.raises(openai.RateLimitError) as exc:
        client.with_options(max_retries=0).responses.create(
            model="m", input="x", extra_headers={"x-emulator-fault": "429"}
        )
    assert exc.value.code == "rate_limit_exceeded"


def test_dropped_reply_still_creates_the_response(client, emu):
    with pytest.raises(openai.APIConnectionError):
        client.with_options(max_retries=0).responses.create(
            model="m",
            input="x",
            background=True,
            metadata={"bg_run_id": "drop-1"},
            extra_headers={"x-emulator-fault": "drop"},
        )
    rows = admin(emu, "GET", "responses", params={"metadata.bg_run_id": "drop-1"})["data"]
    assert len(rows) == 1  # the lost reply's response exists server-side


def test_first_byte_delay(client):
    r = client.responses.create(
        model="m", input="x", background=True, metadata={"emulator_first_byte_ms": "400", "emulator_duration_ms": "0"}
    )
    with pytest.raises(openai.APITimeoutError):
        client.with_options(timeout=0.15, max_retries=0).responses.retrieve(r.id)
    t0 = time.monotonic()
    assert client.responses.retrieve(r.id).status == "completed"
    assert time.monotonic() - t0 >= 0.38


def test_global_faults_and_stats(emu, client):
    admin(emu, "POST", "reset")
    admin(emu, "POST", "config", json={"fault_503_rate": 1.0, "seed": 7})
    try:
        with pytest.raises(openai.InternalServerError):
            client.with_options(max_retries=0).responses.create(model="m", input="x")
        stats = admin(emu, "GET", "stats")
        assert stats["faults"]["503"] == 1 and stats["requests"]["create"] == 1
        assert admin(emu, "GET", "config")["fault_503_rate"] == 1.0
    finally:
        admin(emu, "POST", "config", json={"fault_503_rate": 0.0})
    # a half-faulty provider: the SDK's retries get through, deterministically for a given seed
    admin(emu, "POST", "config", json={"fault_429_rate": 0.3, "retry_after_ms": 10, "seed": 1})
    try:
        for _ in range(10):
            r = client.with_options(max_retries=8).responses.create(
                model="m", input="x", background=True, metadata={"emulator_duration_ms": "0"}
            )
            assert r.status == "completed"
        assert admin(emu, "GET", "stats")["faults"]["429"] > 0
    finally:
        admin(emu, "POST", "config", json={"fault_429_rate": 0.0, "retry_after_ms": 200, "seed": 0})


def test_global_stream_cuts(emu, client):
    admin(emu, "POST", "config", json={"stream_cut_rate": 1.0, "seed": 3})
    try:
        r = client.responses.create(model="m", input="x", background=True, metadata={"emulator_duration_ms": "0"})
        events, cuts = [], 0
        after = -1
        while True:
            try:
                for ev in client.responses.retrieve(r.id, stream=True, starting_after=after):
                    events.append(ev)
                    after = ev.sequence_number
                break
            except openai.APIConnectionError:
                cuts += 1
        assert cuts >= 1 and [e.sequence_number for e in events] == list(range(len(events)))
        assert events[-1].type == "response.completed"
    finally:
        admin(emu, "POST", "config", json={"stream_cut_rate": 0.0})
