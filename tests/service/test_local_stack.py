"""The local stack refuses a second host on a storage account that another stack's host serves.

Hosts on one account share its queues and tables: the other host would take this stack's poll messages and ask
its own emulator about responses it never made. Stop 30's CI failed on exactly that, silently (a run failed with
the emulator's 404); the stack now says so at start instead."""

from __future__ import annotations

import pytest

from local.stack import LocalStack


def test_a_second_stack_cannot_start_a_host_on_the_sessions_azurite(stack, azurite):
    intruder = LocalStack("intruder", azurite=azurite)
    with pytest.raises(RuntimeError, match="already serves stack 'host-e2e'"):
        intruder.start()
    assert intruder.host is None and intruder.emulator is None  # refused before anything was started
    assert azurite.serving_stack == "host-e2e"  # the refused stack's stop() left the claim alone
    assert stack.client.get("/api/health").status_code == 200


def test_a_stack_without_a_host_may_share_it(stack, azurite):
    tools = LocalStack("tools-only", azurite=azurite).start(with_host=False)
    try:
        assert tools.emulator is not None and azurite.serving_stack == "host-e2e"
    finally:
        tools.stop()
