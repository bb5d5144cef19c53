"""The host refuses what the Python worker refuses, with a message naming the problem (exit code 1)."""
from __future__ import annotations

import pytest

from local.functions_host.process import HostStartError

CASES = {
    "broken_import": r"ModuleNotFoundError: No module named 'module_that_does_not_exist' \(at .*broken_import"
                     r"/function_app\.py:3\)",
    "two_apps": r"More than one FunctionApp or other top level function app instances",
    "no_app": r"Could not find top level function app instances in function_app\.py",
    "duplicate_names": r"Function same_name does not have a unique function name",
    "no_trigger": r"Function lonely does not have a trigger",
    "mixed_styles": r"cannot load the old_style function: 'req' binding type \"httpTrigger\" does not match",
    "missing_setting": r"'%QUEUE_NAME_NOT_SET%' does not resolve to a value",
}


@pytest.mark.parametrize("app", sorted(CASES))
def test_startup_refuses_broken_app(host_factory, app):
    host = host_factory(app)
    with pytest.raises(HostStartError) as info:
        host.start(wait_ready=True, timeout=20)
    assert host.wait() == 1
    assert "Host start-up failed" in str(info.value)
    import re

    assert re.search(CASES[app], str(info.value)), str(info.value)
