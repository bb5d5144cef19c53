"""App settings (local.settings.json), host.json and `%NAME%` expressions, read like the real host.

Dev-only: part of the local Azure Functions host (see local/functions_host/README.md).
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import StartupError

_SETTING_EXPR = re.compile(r"%([^%]+)%")
_TIMESPAN = re.compile(r"^(?:(?P<d>\d+)\.)?(?P<h>\d+):(?P<m>\d+):(?P<s>\d+(?:\.\d+)?)$")


def parse_timespan(value: Any, *, what: str) -> float | None:
    """`hh:mm:ss[.fff]`, `d.hh:mm:ss` or a number of seconds -> seconds. `-1` means "no limit" (None)."""
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return None if value < 0 else float(value)
    text = str(value).strip()
    if text == "-1":
        return None
    match = _TIMESPAN.match(text)
    if not match:
        raise StartupError(f"host.json: {what} has an invalid TimeSpan value {value!r} (expected hh:mm:ss)")
    days = int(match["d"] or 0)
    return days * 86400 + int(match["h"]) * 3600 + int(match["m"]) * 60 + float(match["s"])


def load_local_settings(app_dir: Path, environ: MutableMapping[str, str] | None = None) -> dict[str, list[str]]:
    """Copy local.settings.json `Values` into the environment, like Core Tools.

    A variable that is already set in the real environment wins (Core Tools prints "Skipping 'X' from
    local.settings.json as it's already defined in current environment variables."). Returns which
    names were applied and which were skipped, for the start-up log.
    """
    environ = os.environ if environ is None else environ
    path = app_dir / "local.settings.json"
    result: dict[str, list[str]] = {"applied": [], "skipped": []}
    if not path.exists():
        return result
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as exc:
        raise StartupError(f"{path}: invalid JSON ({exc})") from exc
    if data.get("IsEncrypted"):
        raise StartupError(f"{path}: IsEncrypted=true is not supported by the local host")
    for name, value in (data.get("Values") or {}).items():
        if name in environ:
            result["skipped"].append(name)
            continue
        environ[name] = "" if value is None else str(value)
        result["applied"].append(name)
    return result


def resolve_expression(text: str, *, what: str, environ: Mapping[str, str] | None = None) -> str:
    """Replace `%NAME%` with the app setting NAME (as Azure does in binding properties)."""
    environ = os.environ if environ is None else environ

    def repl(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in environ:
            raise StartupError(f"{what}: '%{name}%' does not resolve to a value (app setting {name} is not set)")
        return environ[name]

    return _SETTING_EXPR.sub(repl, text)


# The worker's is_true_like (azure_functions_worker/utils/common.py).
_TRUE_LIKE = {"1", "true", "t", "yes", "y"}
INIT_INDEXING = "PYTHON_ENABLE_INIT_INDEXING"
HTTP_CONCURRENCY = "FUNCTIONS_HOST_HTTP_PER_INSTANCE_CONCURRENCY"
# Flex Consumption's default functionTimeout (the plan this app is deployed to); -1 in host.json: unbounded.
DEFAULT_FUNCTION_TIMEOUT = 1800.0


def check_init_indexing(
    http_v2: bool, environ: Mapping[str, str] | None = None, version: tuple[int, int] = sys.version_info[:2]
) -> None:
    """Refuse an app with the FastAPI HTTP types when the worker would not serve them.

    On Python <= 3.12 the worker starts its HTTP v2 (streaming) proxy only during init indexing, which
    PYTHON_ENABLE_INIT_INDEXING switches on; without it the app's HTTP functions fail in Azure.
    """
    environ = os.environ if environ is None else environ
    if not http_v2 or version >= (3, 13):
        return
    if (environ.get(INIT_INDEXING) or "").strip().lower() in _TRUE_LIKE:
        return
    raise StartupError(
        f"This app uses the FastAPI HTTP types (azurefunctions-extensions-http-fastapi), which the Python "
        f"{version[0]}.{version[1]} worker serves only with the app setting {INIT_INDEXING}=1; Azure would fail "
        f"this app's HTTP functions. Set {INIT_INDEXING}=1 (local.settings.json Values or the environment; in "
        f"Azure an app setting, as infra/app/api.bicep does)."
    )


def http_concurrency(value: str | int | None) -> int | None:
    """The per-instance HTTP concurrency limit (Flex `scaleAndConcurrency.triggers.http.perInstanceConcurrency`).

    None or "" means unlimited (Core Tools); otherwise 1-1000, the range Azure accepts.
    """
    if value is None or str(value).strip() == "":
        return None
    try:
        limit = int(str(value).strip())
    except ValueError:
        raise StartupError(f"{HTTP_CONCURRENCY}: expected an integer 1-1000, got {value!r}") from None
    if not 1 <= limit <= 1000:
        raise StartupError(f"{HTTP_CONCURRENCY}: must be between 1 and 1000 (got {limit})")
    return limit


@dataclass
class QueueOptions:
    """host.json `extensions.queues`, with the storage extension 5.x defaults."""

    batch_size: int = 16
    new_batch_threshold: int = 0
    max_polling_interval: float = 2.0  # the local-development default (Azure: 1 min)
    visibility_timeout: float = 0.0
    max_dequeue_count: int = 5
    message_encoding: str = "base64"
    # Local host only (not in host.json): how long a received message stays invisible while the function
    # runs (the real host: 10 min), renewed every half period.
    lease_seconds: float = 600.0


@dataclass
class HostConfig:
    route_prefix: str = "api"
    function_timeout: float | None = None
    queues: QueueOptions = field(default_factory=QueueOptions)
    raw: dict = field(default_factory=dict)


def load_host_json(app_dir: Path, environ: Mapping[str, str] | None = None) -> HostConfig:
    environ = os.environ if environ is None else environ
    path = app_dir / "host.json"
    raw: dict = {}
    if path.exists():
        try:
            raw = json.loads(path.read_text(encoding="utf-8-sig"))
        except json.JSONDecodeError as exc:
            raise StartupError(f"{path}: invalid JSON ({exc})") from exc
    if raw and str(raw.get("version", "")) != "2.0":
        raise StartupError(f"{path}: 'version' must be \"2.0\" (found {raw.get('version')!r})")
    ext = raw.get("extensions") or {}
    http = ext.get("http") or {}
    prefix = http.get("routePrefix", "api")
    prefix = "" if prefix is None else str(prefix).strip("/")

    q = ext.get("queues") or {}
    batch = int(q.get("batchSize", 16))
    if not 1 <= batch <= 32:
        raise StartupError(f"{path}: extensions.queues.batchSize must be between 1 and 32 (found {batch})")
    cpus = os.cpu_count() or 1
    threshold = q.get("newBatchThreshold")
    # QueuesOptions.NewBatchThreshold: (batchSize / 2) * processorCount unless set.
    threshold = int(threshold) if threshold is not None else (batch // 2) * cpus
    max_poll = parse_timespan(q.get("maxPollingInterval"), what="extensions.queues.maxPollingInterval")
    if max_poll is None:
        max_poll = 2.0
    max_poll = max(max_poll, 0.1)
    encoding = str(q.get("messageEncoding", "base64")).lower()
    if encoding not in ("base64", "none"):
        raise StartupError(f"{path}: extensions.queues.messageEncoding must be 'base64' or 'none' (found {encoding!r})")
    max_dequeue = int(q.get("maxDequeueCount", 5))
    if max_dequeue < 1:
        raise StartupError(f"{path}: extensions.queues.maxDequeueCount must be at least 1")
    lease = float(environ.get("FUNCTIONS_HOST_QUEUE_LEASE_SECONDS") or 600)
    queues = QueueOptions(
        batch_size=batch,
        new_batch_threshold=threshold,
        max_polling_interval=max_poll,
        visibility_timeout=parse_timespan(q.get("visibilityTimeout"), what="extensions.queues.visibilityTimeout")
        or 0.0,
        max_dequeue_count=max_dequeue,
        message_encoding=encoding,
        lease_seconds=max(lease, 1.0),
    )
    # Absent: Flex Consumption's default; "-1": unbounded (parse_timespan gives None).
    timeout = (
        DEFAULT_FUNCTION_TIMEOUT
        if "functionTimeout" not in raw
        else parse_timespan(raw.get("functionTimeout"), what="functionTimeout")
    )
    return HostConfig(route_prefix=prefix, function_timeout=timeout, queues=queues, raw=raw)
