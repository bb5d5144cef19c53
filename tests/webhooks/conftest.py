"""A real webhook receiver on loopback (the local stack's), plus signing secrets and resolvers for tests."""

from __future__ import annotations

import base64
import os

import pytest

from local.webhook_receiver import WebhookReceiver


def make_secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


@pytest.fixture
async def receiver():
    """The local webhook receiver (local/webhook_receiver.py) in the test's event loop; no secrets, so it
    verifies nothing and misbehaves only when the URL's query asks (`?status=500`, `?hang=30`, ...)."""
    async with WebhookReceiver() as rec:
        yield rec


@pytest.fixture
def secrets_pair() -> tuple[str, str]:
    return make_secret(), make_secret()


def fixed_resolver(mapping: dict[str, list[str]], calls: list[str] | None = None):
    """A resolver for tests: host -> addresses, recording each lookup."""

    async def resolve(host: str, port: int) -> list[str]:
        if calls is not None:
            calls.append(host)
        return mapping[host]

    return resolve
