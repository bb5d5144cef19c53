"""`make run`'s stack, started once (local/make_run.py; its configuration alone is in tests/unit/test_make_run.py):
the host gets the settings the developer exported over make run's generated ones, and the emulator's pushes end
runs. Free ports and an Azurite of its own (tests/conftest.py `own_azurite` says why), so it runs beside a real
`make run`."""

from __future__ import annotations

import os
import secrets
import time

import httpx

from local.make_run import dev_secrets, make_run_stack, plan
from local.stack import Ports

PROVIDER_CHOICES = (
    "MODEL_PROVIDER",
    "OPENAI_API_KEY",
    "AZURE_OPENAI_ENDPOINT",
    "OPENAI_COMPATIBLE_BASE_URL",
    "RUN_BACKEND",
    "COMPLETION_STRATEGY",
    "PROVIDER_WEBHOOK_SECRETS",
    "RESPONSES_API_KEYS",
)


def test_the_host_takes_the_key_you_export_and_the_emulators_push_ends_the_run(own_azurite, monkeypatch, tmp_path):
    azurite = own_azurite
    for name in PROVIDER_CHOICES:  # the emulator, whatever the machine running the tests has exported
        monkeypatch.delenv(name, raising=False)
    mine = secrets.token_urlsafe(32)
    monkeypatch.setenv("RESPONSES_API_KEYS", f"me:{mine}:operator")
    dev = dev_secrets(tmp_path / "secrets.env")
    ports = Ports.free()
    run = plan(os.environ, dev, ports)
    stack = make_run_stack(run, ports=ports, log_dir=tmp_path, name=f"make-run-{os.getpid()}", azurite=azurite)
    stack.start()
    try:
        with httpx.Client(base_url=f"{stack.host.base_url}/api/v1", timeout=30) as api:
            generated = dev["RESPONSES_API_KEYS"].split(":")[1]
            assert api.get("/responses/resp_x", headers={"Authorization": f"Bearer {generated}"}).status_code == 401
            mine_header = {"Authorization": f"Bearer {mine}"}
            created = api.post(
                "/responses", headers=mine_header, json={"model": "gpt-4.1-mini", "input": "Hello", "background": True}
            )
            assert created.status_code == 200, created.text
            started, response = time.monotonic(), created.json()
            while response["status"] in ("queued", "in_progress") and time.monotonic() - started < 25:
                time.sleep(0.25)
                response = api.get(f"/responses/{response['id']}", headers=mine_header).json()
        # Ended by the provider webhook: the first safety-net poll of push comes only after 30 s.
        assert response["status"] == "completed", response
        assert stack.emulator.stats()["webhooks"]["delivered"] >= 1
    finally:
        stack.stop()
