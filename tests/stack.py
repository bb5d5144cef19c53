"""The whole local stack for end-to-end tests (local.stack.LocalStack: real Azurite, the emulator, the local
Functions host running function_app.py, and the webhook receiver), with time-related settings scaled down
and an httpx client on the API.

The fixtures (`azurite`, `stack`) are registered in tests/conftest.py."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from local.functions_host.process import HostProcess
from local.stack import LocalStack, new_webhook_secrets

WEBHOOK_SECRETS = new_webhook_secrets()
# Function keys are always on in the tests, as the real host always enforces them: every client sends one.
FUNCTION_KEY = secrets.token_urlsafe(24)
MASTER_KEY = secrets.token_urlsafe(24)
KEY_HEADERS = {"x-functions-key": FUNCTION_KEY}
# Callers of the Responses API facade (RESPONSES_API_KEYS): two apps and an operator.
FACADE_KEYS = {name: secrets.token_urlsafe(32) for name in ("alice", "bob", "ops")}
FACADE_MAX_WAIT_SECONDS = 6

# The service's settings in the tests: short polls, a sweeper every 2 s, a short webhook schedule.
TEST_ENV = {
    "WEBHOOK_RETRY_SCHEDULE": "0,1,1,1",
    "WEBHOOK_TIMEOUT_SECONDS": "2",
    "POLL_INITIAL_DELAY_SECONDS": "1",
    "POLL_MAX_DELAY_SECONDS": "2",
    "SWEEP_SCHEDULE": "*/2 * * * * *",
    "SWEEP_GRACE_SECONDS": "4",
    "RUN_DEADLINE_SECONDS": "300",
    "MAX_PREFER_WAIT_SECONDS": "5",
    "STREAM_KEEPALIVE_SECONDS": "2",
    "PROVIDER_TIMEOUT_SECONDS": "5",
    "RESPONSES_API_KEYS": " ".join(
        f"{name}:{key}" + (":operator" if name == "ops" else "") for name, key in FACADE_KEYS.items()
    ),
    "RESPONSES_MAX_WAIT_SECONDS": str(FACADE_MAX_WAIT_SECONDS),
    # The session host runs provider-background runs only; executor runs are run by the hosts their tests start
    # (every host shares Azurite, so an enabled executor here would take their messages).
    "AzureWebJobs.execute_run.Disabled": "true",
}
# What a host that runs executor runs adds (stack.start_host(name, **EXECUTOR_HOST)).
EXECUTOR_HOST = {"RUN_BACKEND": "executor", "AzureWebJobs.execute_run.Disabled": "false"}


@contextmanager
def two_deployments(name: str, azurite: Any) -> Iterator[tuple[LocalStack, list[dict[str, Any]]]]:
    """A stack without a host (keys on) whose emulator serves "ptu" and "payg" on two ports, and the
    PROVIDER_DEPLOYMENTS entries naming both (ptu at priority 0, payg at 1); the caller starts its host."""
    local = LocalStack(
        name,
        env=TEST_ENV,
        azurite=azurite,
        emulator_config={"deployments": {"ptu": {}, "payg": {}}},
        function_key=FUNCTION_KEY,
        master_key=MASTER_KEY,
    ).start(with_host=False)
    try:
        urls = local.emulator.deployment_urls()
        yield (
            local,
            [
                {"name": "ptu", "endpoint": urls["ptu"], "provider": "emulator", "priority": 0},
                {"name": "payg", "endpoint": urls["payg"], "provider": "emulator", "priority": 1},
            ],
        )
    finally:
        local.stop()


def wait_for_run(client: httpx.Client, run_id: str, timeout: float = 60) -> dict:
    """Poll `GET /api/runs/{id}` through `client` (any host of the stack) until the run ends."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = client.get(f"/api/runs/{run_id}").json()
        if run["continuation_token"] is None:
            return run
        time.sleep(0.3)
    raise AssertionError(f"run {run_id} did not finish in {timeout}s: {run}")


class Stack:
    """A started LocalStack plus the calls the tests make: the API through one httpx client, the receiver's
    records, the emulator's records. (`start` starts a run here, so the stack is composed, not subclassed.)"""

    def __init__(self, local: LocalStack) -> None:
        self.local = local
        self.client = httpx.Client(base_url=local.host.base_url, timeout=30, headers=local.key_headers)

    def close(self) -> None:
        self.client.close()

    @property
    def host(self) -> HostProcess:
        return self.local.host

    @property
    def emulator(self):
        return self.local.emulator

    @property
    def env(self) -> dict[str, str]:
        return self.local.env

    @property
    def function_key(self) -> str | None:
        return self.local.function_key

    @property
    def key_headers(self) -> dict[str, str]:
        return self.local.key_headers

    @property
    def connection_string(self) -> str:
        return self.local.azurite.connection_string

    def start_host(self, name: str, **overrides: str) -> HostProcess:
        return self.local.start_host(name, **overrides)

    # -- the API -----------------------------------------------------------------------------------
    def post(self, path: str, json: Any = None, **kwargs) -> httpx.Response:
        return self.client.post(path, json=json, **kwargs)

    def get(self, path: str, **kwargs) -> httpx.Response:
        return self.client.get(path, **kwargs)

    def start(self, input: Any = "hello", **fields: Any) -> httpx.Response:
        return self.post("/api/runs", {"input": input, **fields})

    def start_as(
        self, caller: str, input: Any = "hello", *, duration_ms: int = 500, chars: int = 300, **body: Any
    ) -> str:
        """A background run started through the Responses API facade with `caller`'s key (FACADE_KEYS), steered by
        the emulator's knobs; its id."""
        response = httpx.post(
            f"{self.host.base_url}/api/v1/responses",
            timeout=30,
            headers={"Authorization": f"Bearer {FACADE_KEYS[caller]}"},
            json={
                "model": "gpt-4.1-mini",
                "input": input,
                "background": True,
                **body,
                "metadata": {"emulator_duration_ms": str(duration_ms), "emulator_output_chars": str(chars)},
            },
        )
        assert response.status_code == 200, response.text
        return response.json()["id"]

    def wait(self, run_id: str, timeout: float = 60) -> dict:
        return wait_for_run(self.client, run_id, timeout)

    # -- the receiver and the emulator --------------------------------------------------------------------------------
    def hook_url(self, name: str, **query: Any) -> str:
        return self.local.hook_url(name, **query)

    def received(self, name: str) -> list[dict]:
        return self.local.received(name)

    def provider_responses(self, run_id: str) -> list[dict]:
        return self.emulator.responses(bg_run_id=run_id)

    def emulator_config(self, **config: Any) -> None:
        self.emulator.configure(**config)
