"""Fixtures shared by every test folder: a real Azurite per test session, and the whole local stack
(local.stack.LocalStack: emulator, webhook receiver, the local Functions host running function_app.py) on it."""

from __future__ import annotations

import os
import time

import pytest

from local.azurite import Azurite, start_for_tests
from local.stack import LocalStack

from .stack import FUNCTION_KEY, MASTER_KEY, TEST_ENV, WEBHOOK_SECRETS, Stack


@pytest.fixture(scope="session")
def azurite() -> Azurite:
    """A fresh Azurite (blob, queue, table) on free loopback ports, stopped at the end."""
    instance = start_for_tests(f"pytest-{os.getpid()}")
    yield instance
    instance.stop()


@pytest.fixture(scope="module")
def own_azurite() -> Azurite:
    """An Azurite for one module's stack alone. Hosts on one storage account share its queues and tables, so the
    session stack's host would take another stack's poll messages and ask its own emulator about responses it
    never made (404: the run fails). Every stack with its own emulator needs its own Azurite."""
    instance = start_for_tests(f"own-{os.getpid()}-{time.time_ns()}")
    yield instance
    instance.stop()


@pytest.fixture(scope="session")
def storage_connection_string(azurite: Azurite) -> str:
    return azurite.connection_string


@pytest.fixture(scope="session")
def stack(azurite: Azurite) -> Stack:
    """The service running on the local host against Azurite and the emulator (session-wide), with function
    keys enforced: `stack.client` sends the function key, other clients take `stack.function_key`."""
    local = LocalStack(
        "host-e2e",
        env=TEST_ENV,
        azurite=azurite,
        webhook_secrets=WEBHOOK_SECRETS,
        function_key=FUNCTION_KEY,
        master_key=MASTER_KEY,
    ).start()
    s = Stack(local)  # start() waited for /api/health: the service is built and its tables and queues exist
    yield s
    s.close()
    local.stop()
