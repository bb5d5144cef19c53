"""Fixtures of the registration tests against the emulator: the app's side that receives the provider's webhooks."""

from __future__ import annotations

import pytest

from tests.emulator.receiver import Receiver


@pytest.fixture(scope="module")
def receiver() -> Receiver:
    r = Receiver().start()
    yield r
    r.stop()


@pytest.fixture
def url(receiver) -> str:
    """Where the app receives the provider's webhooks (https://<app>/api/provider/webhooks in Azure)."""
    return receiver.url("api/provider/webhooks")
