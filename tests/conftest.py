"""Fixtures shared by every test folder: a real Azurite per test session, and the whole local
stack (emulator, webhook receiver, the local Functions host running function_app.py) on top of it."""
from __future__ import annotations

import os

import pytest

from local.azurite import Azurite, free_port, start_for_tests
from local.emulator import EmulatorServer
from local.webhook_receiver import ReceiverThread

from .stack import WEBHOOK_SECRETS, Stack, start_host


@pytest.fixture(scope="session")
def azurite() -> Azurite:
    """A fresh Azurite (blob, queue, table) on free loopback ports, stopped at the end."""
    instance = start_for_tests(f"pytest-{os.getpid()}")
    yield instance
    instance.stop()


@pytest.fixture(scope="session")
def storage_connection_string(azurite: Azurite) -> str:
    return azurite.connection_string


@pytest.fixture(scope="session")
def emulator() -> EmulatorServer:
    server = EmulatorServer(port=0).start_in_thread()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def receiver() -> ReceiverThread:
    server = ReceiverThread(WEBHOOK_SECRETS, free_port()).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def stack(storage_connection_string: str, emulator: EmulatorServer, receiver: ReceiverThread) -> Stack:
    """The service running on the local host against Azurite and the emulator (session-wide)."""
    host = start_host(storage_connection_string, emulator, "host-e2e")
    s = Stack(host, emulator, receiver, storage_connection_string, host.env)
    assert s.get("/api/health").status_code == 200  # builds the service and creates its tables and queues
    yield s
    s.client.close()
    host.stop()
