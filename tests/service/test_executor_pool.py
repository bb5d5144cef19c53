"""The executor over a pool of two model servers end to end (issue 24): the emulator serves "ptu" and "payg" on two
ports; an executor host's PROVIDER_DEPLOYMENTS names both (ptu first). Each attempt's model call goes to ptu; while
ptu is down it spills to payg (an executor run keeps its own history, so nothing pins it), and when ptu is back
calls return there. GET's `deployment` says which server served the run's last attempt."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from local.stack import wait_until_healthy
from tests.stack import EXECUTOR_HOST, MASTER_KEY, two_deployments


@pytest.fixture(scope="module")
def servers(own_azurite):
    """(emulator, host client): an emulator serving ptu and payg, and an executor host with both as its pool."""
    with two_deployments("executor-pool", own_azurite) as (local, deployments):
        host = local.start_host("executor-pool-host", **EXECUTOR_HOST, PROVIDER_DEPLOYMENTS=json.dumps(deployments))
        wait_until_healthy(host.base_url, 60)
        client = httpx.Client(base_url=host.base_url, timeout=30, headers=local.key_headers)
        yield local.emulator, client
        client.close()


def run_to_end(client: httpx.Client, tag: str, timeout: float = 60) -> dict:
    body = {"input": "x", "metadata": {"emulator_duration_ms": "500", "emulator_tag": tag}}
    answer = client.post("/api/runs", json=body)
    assert answer.status_code in (200, 202), answer.text
    run_id = answer.json()["id"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = client.get(f"/api/runs/{run_id}").json()
        if run["status"] not in ("queued", "in_progress"):
            return run
        time.sleep(0.3)
    raise AssertionError(f"run {run_id} still {run['status']} after {timeout} s")


def calls(emulator, deployment: str, tag: str) -> int:
    """The chat calls `deployment` answered for the run tagged `tag`."""
    url = f"{emulator.deployment_url(deployment)}/_emulator/chat_completions"
    return len(httpx.get(url, params={"knob.tag": tag}, timeout=30).json()["data"])


@pytest.mark.parametrize("outage", ["refuse", "503"])
def test_an_executor_run_spills_to_the_second_server_while_the_first_is_down_and_returns_after(servers, outage):
    emulator, client = servers
    before = f"before-{outage}-{time.time_ns()}"
    run = run_to_end(client, before)
    assert run["status"] == "completed" and run["backend"] == "executor" and run["deployment"] == "ptu"
    assert (calls(emulator, "ptu", before), calls(emulator, "payg", before)) == (1, 0)
    emulator.take_down("ptu", outage)
    try:
        during = f"during-{outage}-{time.time_ns()}"
        run = run_to_end(client, during)
        assert run["status"] == "completed" and run["deployment"] == "payg", run
        assert calls(emulator, "payg", during) == 1
    finally:
        emulator.bring_up("ptu")
    assert calls(emulator, "ptu", during) == 0  # refused before it was a call (503) or never reached (refuse)
    after = f"after-{outage}-{time.time_ns()}"
    run = run_to_end(client, after)  # one failure does not trip ptu's breaker: it is first again at once
    assert run["status"] == "completed" and run["deployment"] == "ptu", run
    assert (calls(emulator, "ptu", after), calls(emulator, "payg", after)) == (1, 0)
    details = client.get("/api/health/details", headers={"x-functions-key": MASTER_KEY}).json()["checks"]
    assert set(details["circuit_breakers"]) >= {"ptu", "payg"}
