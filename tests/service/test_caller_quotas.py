"""Per-caller quotas end to end: two hosts of the app on storage of their own (two instances sharing the quota
state), the emulator, the native API over HTTP and the facade through the official `openai` SDK.

The hosts' quotas: every caller 2 active runs at a time and no start rate (the defaults set here); bob 3 starts a
minute and no cap; carol 1 active run; ops unlimited. The native API's function-key callers are one caller."""

from __future__ import annotations

import concurrent.futures
import secrets
import time
import uuid

import httpx
import openai
import pytest
from azure.data.tables import TableServiceClient

from local.azurite import start_for_tests

from ..stack import FACADE_KEYS, MASTER_KEY

KEYS = {**FACADE_KEYS, **{name: secrets.token_urlsafe(32) for name in ("carol", "dave")}}
QUOTA_ENV = {
    "RESPONSES_API_KEYS": " ".join(
        f"{name}:{key}" + (":operator" if name == "ops" else "") for name, key in KEYS.items()
    ),
    "CALLER_MAX_ACTIVE_RUNS": "2",
    "CALLER_STARTS_PER_MINUTE": "0",
    "CALLER_QUOTAS": "bob:0:3 carol:1:0 ops:0:0",
}
LONG = {"emulator_duration_ms": "60000"}
RATE_HEADERS = ("x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests")


class Host:
    def __init__(self, process, function_key_headers: dict[str, str]) -> None:
        self.process = process
        self.api = httpx.Client(base_url=process.base_url, timeout=30, headers=function_key_headers)
        self.facade_url = f"{process.base_url}/api/v1"

    def start(self, **body) -> httpx.Response:
        return self.api.post("/api/runs", json={"input": "hello", **body})

    def create(self, caller: str, **body) -> httpx.Response:
        """A facade create with `caller`'s key, over plain HTTP (headers and body as sent)."""
        return httpx.post(
            f"{self.facade_url}/responses",
            timeout=30,
            headers={"Authorization": f"Bearer {KEYS[caller]}"},
            json={"model": "gpt-4.1-mini", "input": "hello", "background": True, **body},
        )

    def cancel(self, run_id: str) -> None:
        self.api.post(f"/api/runs/{run_id}/cancel").raise_for_status()

    def wait(self, run_id: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = self.api.get(f"/api/runs/{run_id}").json()
            if run["continuation_token"] is None:
                return run
            time.sleep(0.3)
        raise AssertionError(f"run {run_id} did not end in {timeout}s")

    def sdk(self, caller: str, **options) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.facade_url, api_key=KEYS[caller], **options)


@pytest.fixture(scope="module")
def storage():
    azurite = start_for_tests(f"quotas-{time.time_ns()}")  # of its own: these hosts share it, and only it
    yield azurite.connection_string
    azurite.stop()


@pytest.fixture(scope="module")
def hosts(stack, storage):
    started = [stack.start_host(f"quotas-{n}", AzureWebJobsStorage=storage, **QUOTA_ENV) for n in (1, 2)]
    yield [Host(process, stack.key_headers) for process in started]
    for process in started:
        process.stop()


@pytest.fixture
def host(hosts) -> Host:
    return hosts[0]


def assert_rate_limited(answer: httpx.Response, *, limit: int) -> None:
    assert answer.status_code == 429, answer.text
    assert int(answer.headers["retry-after"]) >= 1 and int(answer.headers["retry-after-ms"]) >= 1
    assert [answer.headers[name] for name in RATE_HEADERS[:2]] == [str(limit), "0"]
    assert answer.headers["x-ratelimit-reset-requests"].endswith("s")


def eventually_started(host: Host, within: float = 10) -> httpx.Response:
    deadline = time.monotonic() + within
    while (answer := host.start(metadata=LONG)).status_code == 429 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert answer.status_code == 202, answer.text
    return answer


def rows(storage: str) -> set[tuple[str, str, str]]:
    """Every entity of every table, by (table, PartitionKey, RowKey)."""
    service = TableServiceClient.from_connection_string(storage)
    return {
        (table.name, row["PartitionKey"], row["RowKey"])
        for table in service.list_tables()
        for row in service.get_table_client(table.name).list_entities(select=["PartitionKey", "RowKey"])
    }


def test_the_native_callers_third_active_run_is_refused_and_leaves_no_trace(stack, host, storage):
    running = [host.start(metadata=LONG).json()["id"] for _ in range(2)]
    case, key, hook = uuid.uuid4().hex, f"key-{uuid.uuid4().hex}", f"quota-{uuid.uuid4().hex}"
    before = rows(storage)
    refused = host.api.post(
        "/api/runs",
        headers={"Idempotency-Key": key},
        json={"input": "one too many", "metadata": {**LONG, "case": case}, "webhook_url": stack.hook_url(hook)},
    )
    assert_rate_limited(refused, limit=2)
    assert refused.json() == {
        "error": {"code": "rate_limit_exceeded", "param": None, "message": refused.json()["error"]["message"]}
    }
    assert "2 at a time" in refused.json()["error"]["message"]
    assert rows(storage) - before == set()  # no run, no idempotency record, no index row, no slot
    assert stack.emulator.responses(case=case) == []  # nothing reached the provider

    host.cancel(running[0])  # a cancelled run gives its slot back
    again = host.api.post(
        "/api/runs",
        headers={"Idempotency-Key": key},
        json={"input": "a different body", "metadata": {"emulator_duration_ms": "1500"}},
    )
    assert again.status_code == 202, again.text  # the key was not kept: a new body under it is a new run
    assert host.start(metadata=LONG).status_code == 429
    assert host.wait(again.json()["id"])["status"] == "completed"  # a completed run gives its slot back
    replacement = eventually_started(host)  # (its follow-ups give it back just after the end is saved)
    time.sleep(3)
    assert stack.received(hook) == []  # the refused start's webhook was never sent
    for run_id in (running[1], replacement.json()["id"]):
        host.cancel(run_id)


def test_the_sdk_sees_a_rate_limit_error_and_its_default_retries_succeed_once_a_slot_frees(host):
    running = [host.create("alice", metadata=LONG).json()["id"] for _ in range(2)]
    with host.sdk("alice", max_retries=0) as client, pytest.raises(openai.RateLimitError) as refused:
        client.responses.create(model="gpt-4.1-mini", input="third", background=True)
    assert refused.value.status_code == 429 and refused.value.code == "rate_limit_exceeded"
    assert refused.value.type == "requests"  # OpenAI's type for a requests limit
    assert refused.value.response.headers["x-ratelimit-limit-requests"] == "2"

    statuses: list[int] = []

    def seen(response: httpx.Response) -> None:
        statuses.append(response.status_code)
        if response.status_code == 429:  # refused: a slot frees before the SDK's retry (Retry-After: 2 s)
            host.cancel(running[0])

    with host.sdk("alice", http_client=httpx.Client(event_hooks={"response": [seen]})) as client:  # two retries
        started = client.responses.create(model="gpt-4.1-mini", input="third", background=True, metadata=LONG)
    assert statuses == [429, 200], statuses  # refused while both slots were held, then taken on its own retry
    for run_id in (running[1], started.id):
        host.cancel(run_id)


def test_the_start_rate_refuses_the_fourth_start_of_the_minute(host):
    started = [host.create("bob", metadata={"emulator_duration_ms": "0"}) for _ in range(3)]
    assert [answer.status_code for answer in started] == [200] * 3  # bob's active runs are not capped
    refused = host.create("bob", metadata={"emulator_duration_ms": "0"})
    assert_rate_limited(refused, limit=3)
    body = refused.json()["error"]
    assert (body["type"], body["code"], body["param"]) == ("requests", "rate_limit_exceeded", None)
    assert 1 <= int(refused.headers["retry-after"]) <= 21  # one start every 20 s refills the bucket


def test_callers_are_isolated_from_each_other(host):
    alice = [host.create("alice", metadata=LONG).json()["id"] for _ in range(2)]
    assert host.create("alice", metadata=LONG).status_code == 429
    streamed = host.create("alice", metadata=LONG, stream=True)  # refused before any stream opens
    assert streamed.status_code == 429 and streamed.json()["error"]["code"] == "rate_limit_exceeded"
    dave = host.create("dave", metadata=LONG)  # alice at her cap does not hold dave back
    assert dave.status_code == 200, dave.text
    native = host.start(metadata=LONG)  # nor the native API's callers
    assert native.status_code == 202, native.text
    ops = [host.create("ops", metadata=LONG) for _ in range(3)]
    assert [answer.status_code for answer in ops] == [200] * 3  # ops: unlimited
    for run_id in [*alice, dave.json()["id"], native.json()["id"], *(answer.json()["id"] for answer in ops)]:
        host.cancel(run_id)


def test_concurrent_starts_on_two_instances_cannot_both_take_the_last_slot(hosts):
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda n: hosts[n % 2].create("carol", metadata=LONG), range(8)))
    statuses = sorted(answer.status_code for answer in answers)
    assert statuses == [200] + [429] * 7, [answer.text for answer in answers]
    [taken] = [answer.json()["id"] for answer in answers if answer.status_code == 200]
    hosts[1].cancel(taken)
    assert hosts[0].create("carol", metadata=LONG).status_code == 200  # the slot came back, on the other host


def test_a_start_under_a_quota_costs_two_storage_requests_more(host):
    """Measured on the host (its /api/metrics): dave (capped) against ops (no quota), the same create."""

    def create_requests() -> int:
        metrics = host.api.get("/api/metrics", headers={"x-functions-key": MASTER_KEY}).json()
        return sum(metrics["storage_requests_by_function"].get("create_response", {}).values())

    per_start = {}
    for caller in ("ops", "dave"):
        before = create_requests()
        ids = [host.create(caller, metadata=LONG).json()["id"] for _ in range(2)]
        per_start[caller] = (create_requests() - before) / 2
        for run_id in ids:
            host.cancel(run_id)
    print(f"storage requests per facade start: {per_start}")
    assert per_start["dave"] - per_start["ops"] == 2


def test_health_details_show_the_quotas(host):
    checks = host.api.get("/api/health/details", headers={"x-functions-key": MASTER_KEY}).json()["checks"]
    assert checks["caller_quotas"] == {
        "max_active_runs": 2,
        "starts_per_minute": 0,
        "overrides": {
            "bob": {"max_active_runs": 0, "starts_per_minute": 3},
            "carol": {"max_active_runs": 1, "starts_per_minute": 0},
            "ops": {"max_active_runs": 0, "starts_per_minute": 0},
        },
    }
