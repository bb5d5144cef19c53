"""The host refuses what the Python worker refuses, with a message naming the problem (exit code 1)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from local.functions_host.process import HostStartError

BROKEN_IMPORT = Path(__file__).parent / "apps" / "broken_import" / "function_app.py"
# The line the error must point at, read from the app (a formatter may move it).
BROKEN_LINE = next(
    n for n, line in enumerate(BROKEN_IMPORT.read_text().splitlines(), 1) if "import module_that" in line
)

CASES = {
    "broken_import": r"ModuleNotFoundError: No module named 'module_that_does_not_exist' \(at .*broken_import"
    rf"/function_app\.py:{BROKEN_LINE}\)",
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
    assert re.search(CASES[app], str(info.value)), str(info.value)


@pytest.mark.parametrize("value", ["", "0", "false"])
def test_fastapi_types_without_init_indexing_are_refused(host_factory, value):
    """Azure (Python <= 3.12) does not serve the FastAPI HTTP types without PYTHON_ENABLE_INIT_INDEXING."""
    host = host_factory("http_fastapi", env={"PYTHON_ENABLE_INIT_INDEXING": value})
    with pytest.raises(HostStartError) as info:
        host.start(wait_ready=True, timeout=20)
    assert host.wait() == 1
    assert "Host start-up failed: This app uses the FastAPI HTTP types" in str(info.value)
    assert "PYTHON_ENABLE_INIT_INDEXING=1" in str(info.value)


def test_classic_apps_do_not_need_init_indexing(host_factory):
    host = host_factory("http_classic", env={"PYTHON_ENABLE_INIT_INDEXING": ""}).start(timeout=20)
    assert host.is_running()
