"""A pool of two deployments end to end (issue 24): the emulator serves "ptu" and "payg" on two ports, each with its
own store, quotas, outage switch and webhook secret; the host's PROVIDER_DEPLOYMENTS names both (ptu first). New
starts go to ptu and spill to payg when ptu is full or unreachable; a run stays where it started (polled there
through an outage until it returns); a session's next turn waits for its deployment rather than spill; a provider
webhook from payg, signed with payg's own secret, ends its run.

The tests share one host and run in file order: the last one fills ptu, whose breaker then keeps starts away."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from local.emulator.control import EmulatorControl
from local.stack import wait_until_healthy
from shared.runs.relay import FINAL_EVENT_ID
from tests import sse
from tests.stack import MASTER_KEY, two_deployments

ENDED = ["response.completed", "response.failed", "response.cancelled", "response.incomplete"]


@pytest.fixture(scope="module")
def pool(own_azurite):
    """(emulator, host client): an emulator serving ptu and payg, and a host with both as its pool."""
    with two_deployments("pool", own_azurite) as (local, deployments):
        urls = {d["name"]: d["endpoint"] for d in deployments}
        endpoints = {name: register_endpoint(url) for name, url in urls.items()}
        host = local.start_host(
            "pool-host",
            PROVIDER_DEPLOYMENTS=json.dumps(deployments),
            PROVIDER_WEBHOOK_SECRETS=" ".join(e["signing_secret"] for e in endpoints.values()),
            SAFETY_POLL_INITIAL_SECONDS="4",
            SAFETY_POLL_MAX_SECONDS="6",
        )
        wait_until_healthy(host.base_url, 60)
        for name, endpoint in endpoints.items():
            httpx.post(
                f"{urls[name]}/webhook_endpoints/{endpoint['id']}", json={"url": host.url("api/provider/webhooks")}
            ).raise_for_status()
        client = httpx.Client(base_url=host.base_url, timeout=30, headers=local.key_headers)
        yield local.emulator, client
        client.close()


def register_endpoint(base_url: str) -> dict:
    reply = httpx.post(
        f"{base_url}/webhook_endpoints", json={"url": "http://127.0.0.1:9/not-yet", "event_types": ENDED}
    )
    reply.raise_for_status()
    return reply.json()


def start(client: httpx.Client, **fields) -> dict:
    body = {"input": "x", "metadata": {"emulator_duration_ms": "1500"}, **fields}
    answer = client.post("/api/runs", json=body)
    assert answer.status_code in (200, 202), answer.text
    return answer.json()


def wait(client: httpx.Client, run_id: str, timeout: float = 90) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = client.get(f"/api/runs/{run_id}").json()
        if run["status"] not in ("queued", "in_progress"):
            return run
        time.sleep(0.3)
    raise AssertionError(f"run {run_id} still {run['status']} after {timeout} s")


def made(emulator: EmulatorControl, deployment: str, run_id: str) -> int:
    """How many provider responses `deployment` holds for the run."""
    return len(emulator.responses(deployment, bg_run_id=run_id))


def test_a_run_pinned_to_ptu_finishes_there_after_its_outage_while_new_starts_go_to_payg(pool):
    emulator, client = pool
    run = start(client, metadata={"emulator_duration_ms": "3000"})
    assert run["deployment"] == "ptu"
    emulator.take_down("ptu", "refuse")
    try:
        moved = start(client)  # ptu refuses connections: the request never left, so it goes to payg
        assert moved["deployment"] == "payg"
        time.sleep(4)  # ptu's run is polled (and fails to be) through the outage
        assert client.get(f"/api/runs/{run['id']}").json()["status"] in ("queued", "in_progress")
    finally:
        emulator.bring_up("ptu")
    final = wait(client, run["id"])
    assert final["status"] == "completed" and final["deployment"] == "ptu"
    assert made(emulator, "ptu", run["id"]) == 1 and made(emulator, "payg", run["id"]) == 0
    assert wait(client, moved["id"])["status"] == "completed"
    assert made(emulator, "payg", moved["id"]) == 1 and made(emulator, "ptu", moved["id"]) == 0


def test_a_session_turn_waits_for_its_deployment_rather_than_spill(pool):
    emulator, client = pool
    session = client.post("/api/sessions").json()
    first = wait(client, start(client, session_id=session["id"])["id"])
    assert first["status"] == "completed" and first["deployment"] == "ptu"
    emulator.take_down("ptu", "503")
    try:
        turn = start(client, session_id=session["id"])
        assert turn["status"] == "queued" and turn["deployment"] == "ptu", turn
        time.sleep(3)
        waiting = client.get(f"/api/runs/{turn['id']}").json()
        assert waiting["status"] == "queued" and waiting["admission"]["state"] == "waiting_for_capacity"
        assert made(emulator, "payg", turn["id"]) == 0
    finally:
        emulator.bring_up("ptu")
    final = wait(client, turn["id"], timeout=120)  # the breaker's half-open probe is at most TRIP_SECONDS away
    assert final["status"] == "completed" and final["deployment"] == "ptu"
    (record,) = emulator.responses("ptu", bg_run_id=turn["id"])
    assert record["previous_response_id"] == first["provider_response_id"]


def test_a_stream_stays_exact_through_its_deployments_outage(pool):
    """The relay waits for a deployment that is only unreachable for now (longer than the follower's ~11 s of
    tries) rather than end the stream with the stored run, which would leave a gap in the deltas."""
    emulator, client = pool
    run = start(client, metadata={"emulator_duration_ms": "8000", "emulator_output_chars": "300"})
    assert run["deployment"] == "ptu"
    outage: list[float] = []

    def down_after_a_few_events(lines):
        seen = 0
        for line in lines:
            yield line
            seen += line.startswith("id: ")
            if seen == 3 and not outage:
                emulator.take_down("ptu", "refuse", for_s=16)  # open connections are cut too
                outage.append(time.monotonic())

    try:
        with client.stream("GET", f"/api/runs/{run['id']}/stream", timeout=60) as response:
            events = list(sse.parse(down_after_a_few_events(response.iter_lines())))
    finally:
        emulator.bring_up("ptu")
    assert outage and time.monotonic() - outage[0] > 16, "the stream ended before ptu was back"
    final = wait(client, run["id"])
    ids = [e.id for e in events if e.id is not None]
    assert ids == sorted(set(ids)), "event ids repeat or go backwards"
    assert events[-1].event == "run.completed" and events[-1].id < FINAL_EVENT_ID  # the provider's own final
    deltas = "".join(e.delta for e in events)
    assert deltas == final["output_text"] and len(deltas) == 300


def test_a_full_ptu_spills_to_payg_and_payg_webhook_ends_the_run(pool):
    emulator, client = pool
    emulator.set_quota("ptu", model="pool-spill", rpm=1, quota_window_s=120)
    try:
        runs = [start(client, model="pool-spill", metadata={"emulator_duration_ms": "2500"}) for _ in range(3)]
        assert [r["deployment"] for r in runs] == ["ptu", "payg", "payg"]
        for r in runs:
            assert wait(client, r["id"])["status"] == "completed"
        spilled = runs[1]
        assert made(emulator, "payg", spilled["id"]) == 1 and made(emulator, "ptu", spilled["id"]) == 0
        deliveries = httpx.get(
            f"{emulator.deployment_url('payg')}/_emulator/webhook_deliveries",
            params={"response_id": client.get(f"/api/runs/{spilled['id']}").json()["provider_response_id"]},
        ).json()["data"]
        # payg signed it with its own secret; the host verified it (a 400 otherwise) and found the run
        assert deliveries and all(a["status"] == 200 for d in deliveries for a in d["attempts"]), deliveries
        details = client.get("/api/health/details", headers={"x-functions-key": MASTER_KEY}).json()["checks"]
        assert [d["name"] for d in details["deployments"]] == ["ptu", "payg"]
        assert details["circuit_breakers"]["ptu"] == "open"  # ptu's 429 said when to come back: not before
    finally:
        emulator.configure("ptu", model_limits={})
