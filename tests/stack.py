"""The whole local stack for end-to-end tests: real Azurite, the emulator, the local Functions host
running function_app.py, and a webhook receiver. Time-related settings are scaled down.

The fixtures (`emulator`, `receiver`, `stack`) are registered in tests/conftest.py."""
from __future__ import annotations

import base64
import os
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from local.azurite import REPO_ROOT
from local.emulator import EmulatorServer
from local.functions_host.process import HostProcess
from local.webhook_receiver import ReceiverThread

WEBHOOK_SECRETS = tuple("whsec_" + base64.b64encode(os.urandom(32)).decode() for _ in range(2))


def service_env(connection_string: str, emulator_url: str, **overrides: str) -> dict[str, str]:
    env = {
        "AzureWebJobsStorage": connection_string,
        "MODEL_PROVIDER": "emulator",
        "EMULATOR_BASE_URL": emulator_url,
        "RUN_TOKEN_KEY": secrets.token_urlsafe(48),
        "WEBHOOK_SIGNING_SECRETS": " ".join(WEBHOOK_SECRETS),
        "WEBHOOK_ALLOW_HTTP": "true",
        "WEBHOOK_ALLOW_PRIVATE_ADDRESSES": "true",
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
        "PYTHON_ENABLE_INIT_INDEXING": "1",  # as in Azure: the host refuses the FastAPI types without it
        # The session host runs provider-background runs only; executor runs are run by the hosts their tests
        # start (every host shares Azurite, so an enabled executor here would take their messages).
        "AzureWebJobs.execute_run.Disabled": "true",
    }
    env.update(overrides)
    return env


@dataclass
class Stack:
    host: HostProcess
    emulator: EmulatorServer
    receiver: ReceiverThread
    connection_string: str
    env: dict[str, str]
    client: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.client = httpx.Client(base_url=self.host.base_url, timeout=30)

    # -- the API -----------------------------------------------------------------------------------
    def post(self, path: str, json: Any = None, **kwargs) -> httpx.Response:
        return self.client.post(path, json=json, **kwargs)

    def get(self, path: str, **kwargs) -> httpx.Response:
        return self.client.get(path, **kwargs)

    def start(self, input: Any = "hello", **fields: Any) -> httpx.Response:
        return self.post("/api/runs", {"input": input, **fields})

    def wait(self, run_id: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = self.get(f"/api/runs/{run_id}").json()
            if run["continuation_token"] is None:
                return run
            time.sleep(0.3)
        raise AssertionError(f"run {run_id} did not finish in {timeout}s: {run}")

    # -- the emulator --------------------------------------------------------------------------------
    def provider_responses(self, run_id: str) -> list[dict]:
        listing = httpx.get(f"{self.emulator.base_url}/_emulator/responses",
                            params={"metadata.bg_run_id": run_id}).json()
        return listing["data"]

    def emulator_config(self, **config: Any) -> None:
        httpx.post(f"{self.emulator.base_url}/_emulator/config", json=config).raise_for_status()

    # -- the receiver ----------------------------------------------------------------------------------
    def hook_url(self, name: str, **query: Any) -> str:
        qs = "&".join(f"{k}={v}" for k, v in query.items())
        return f"{self.receiver.url}/{name}" + (f"?{qs}" if qs else "")

    def received(self, name: str) -> list[dict]:
        return [r for r in httpx.get(f"{self.receiver.url}/_received").json() if r["path"] == f"/{name}"]


EXECUTOR_HOST = {"RUN_BACKEND": "executor", "AzureWebJobs.execute_run.Disabled": "false"}


def start_host(connection_string: str, emulator: EmulatorServer, name: str, **overrides: str) -> HostProcess:
    env = service_env(connection_string, emulator.base_url, **overrides)
    log = REPO_ROOT / ".azurite" / f"{name}-{os.getpid()}.log"
    return HostProcess(REPO_ROOT, env=env, log_path=log, grace_seconds=5).start(timeout=60)


