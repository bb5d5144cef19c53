"""A bad setting fails the first invocation of a real host with a 503 naming the setting (never quoting a secret),
and the health details say which; tests/unit/test_settings.py has one test per kind of rule."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from local.azurite import start_for_tests


@pytest.fixture
def own_storage():
    """Storage of its own: a misconfigured host must not take the session host's queue messages."""
    azurite = start_for_tests(f"settings-{time.time_ns()}")
    yield azurite.connection_string
    azurite.stop()


@pytest.mark.parametrize(
    "override,named,secret",
    [
        ({"POLL_INITIAL_DELAY_SECONDS": "0"}, "POLL_INITIAL_DELAY_SECONDS: must be at least 0.05, got 0.0", None),
        (
            {"WEBHOOK_SIGNING_SECRETS": "whsec_s3cr3t!"},
            "WEBHOOK_SIGNING_SECRETS: entry 1 is not base64 after whsec_",
            "s3cr3t",
        ),
    ],
)
def test_a_bad_setting_fails_the_first_invocation_naming_it(stack, own_storage, override, named, secret):
    host = stack.start_host("misconfigured", AzureWebJobsStorage=own_storage, **override)
    try:
        client = httpx.Client(base_url=host.base_url, timeout=30, headers=stack.key_headers)
        answer = client.post("/api/runs", json={"input": "x"})
        assert answer.status_code == 503 and answer.headers["Retry-After"] == "30", answer.text
        error = answer.json()["error"]
        assert error["code"] == "misconfigured" and error["message"] == f"The service is misconfigured: {named}"
        details = client.get("/api/health/details", headers={"x-functions-key": stack.local.master_key})
        assert details.status_code == 503 and details.json()["checks"] == {"settings": named}
        if secret:
            assert secret not in answer.text + json.dumps(details.json())
    finally:
        host.stop()
