"""What host.json bounds: `functionTimeout` ends every invocation, so streams and watch windows must end first.

`Settings.from_env` reads host.json once and checks the settings against it here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from .spec import SettingsError

# host.json sits next to function_app.py, two folders above this package (/home/site/wwwroot in Azure).
HOST_JSON = Path(__file__).resolve().parents[2] / "host.json"
# functionTimeout when host.json does not set one: the Flex Consumption default (30 min), the only plan infra/ uses.
FLEX_DEFAULT_FUNCTION_TIMEOUT_SECONDS = 1800.0
WATCH_MARGIN_SECONDS = 30.0  # a watch window ends this long before functionTimeout, leaving time to store the end

_TIMESPAN = re.compile(r"^(?:(?P<d>\d+)\.)?(?P<h>\d+):(?P<m>\d+):(?P<s>\d+(?:\.\d+)?)$")


def function_timeout_seconds(host_json: Path = HOST_JSON) -> float | None:
    """host.json `functionTimeout` in seconds; None when it is -1 (unbounded).

    Absent (or no host.json): the platform default of the plan, Flex Consumption's 30 minutes.
    """
    try:
        raw = json.loads(host_json.read_text(encoding="utf-8-sig")).get("functionTimeout")
    except FileNotFoundError:
        raw = None
    except ValueError as error:
        raise SettingsError(f"host.json: invalid JSON ({error})") from None
    if raw is None:
        return FLEX_DEFAULT_FUNCTION_TIMEOUT_SECONDS
    if str(raw).strip() == "-1":
        return None
    match = _TIMESPAN.match(str(raw).strip())
    if not match:
        raise SettingsError(f"host.json: functionTimeout {raw!r} is not a TimeSpan (hh:mm:ss) or -1")
    return int(match["d"] or 0) * 86400 + int(match["h"]) * 3600 + int(match["m"]) * 60 + float(match["s"])


def check_stream_below_function_timeout(stream_max_seconds: float, timeout: float | None) -> None:
    """A stream must end (with its `reconnect` event) before the platform cuts the invocation.

    A streamed HTTP invocation lasts until its stream ends, so `functionTimeout` bounds it. With
    functionTimeout -1 there is no such bound and nothing to check (Azure's 230 s HTTP limit still applies).
    """
    if timeout is not None and stream_max_seconds >= timeout:
        raise SettingsError(
            f"STREAM_MAX_SECONDS: {stream_max_seconds:g} must be below host.json functionTimeout ({timeout:g} s), "
            "or the platform cuts streams before their reconnect event"
        )


def check_watch_window_below_function_timeout(window_seconds: float, timeout: float | None) -> None:
    """A poll step that holds the provider's stream (COMPLETION_STRATEGY=watch) is one invocation too."""
    if timeout is not None and window_seconds >= timeout - WATCH_MARGIN_SECONDS:
        raise SettingsError(
            f"WATCH_WINDOW_SECONDS: {window_seconds:g} must end at least {WATCH_MARGIN_SECONDS:g} s "
            f"before host.json functionTimeout ({timeout:g} s)"
        )
