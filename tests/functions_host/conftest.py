"""Helpers for the local Functions host tests: sample apps under apps/, hosts run as subprocesses."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest

from local.functions_host.process import HostProcess

APPS = Path(__file__).parent / "apps"


def read_results(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.05, message: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def host_factory(tmp_path):
    """Start HostProcess instances; whatever is still running at the end is killed (whole group)."""
    hosts: list[HostProcess] = []

    def make(app: str | Path, env: dict | None = None, **kwargs) -> HostProcess:
        app_dir = app if isinstance(app, Path) else APPS / app
        host = HostProcess(app_dir, env=env or {}, log_path=tmp_path / f"host-{len(hosts)}.log", **kwargs)
        hosts.append(host)
        return host

    yield make
    for host in hosts:
        if host.is_running():
            host.kill()
