"""How a setting is declared: one `Setting` says everything about it, and its kind reads and checks the value.

A kind is a function from the raw text (stripped; the default when unset; "" when neither) to the typed value. It
raises ValueError with what is wrong, and `Setting.parse` puts the setting's name in front. A kind that checks a
secret never repeats the value in its error: the message reaches the log and a 503 answer.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from ..webhooks.schedule import parse_schedule

# Who reads it: the part of `Settings` its value lands in ("runs" and "webhooks": top-level attributes), or
# "telemetry" (shared/telemetry reads it) and "host" (the Functions host or worker does): `Settings` ignores those.
Group = Literal["storage", "provider", "runs", "webhooks", "completion", "executor", "facade", "telemetry", "host"]
# "required": Azure must provide it; "optional": has a safe default or is only for some providers;
# "local": used by the local stack / development only.
InAzure = Literal["required", "optional", "local"]
Kind = Callable[[str], Any]


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names it."""


def text(raw: str) -> str | None:
    return raw or None


def flag(raw: str) -> bool:
    value = raw.lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected true or false, got {value!r}")


def retry_schedule(raw: str) -> tuple[float, ...]:
    try:
        return parse_schedule(raw)
    except ValueError:
        raise ValueError(f"expected comma-separated seconds, none negative, got {raw!r}") from None


@dataclass(frozen=True)
class Number:
    minimum: float
    maximum: float | None = None
    integer: bool = False

    def __call__(self, raw: str) -> float:
        try:
            value = int(raw) if self.integer else float(raw)
        except ValueError:
            raise ValueError(f"expected a number, got {raw!r}") from None
        if not math.isfinite(value):
            raise ValueError(f"expected a finite number, got {raw!r}")
        if value < self.minimum:
            raise ValueError(f"must be at least {self.minimum}, got {value}")
        if self.maximum is not None and value > self.maximum:
            raise ValueError(f"must be at most {self.maximum:g}, got {value:g}")
        return value


@dataclass(frozen=True)
class Choice:
    """One of `options` (any case); empty: None, for the reader to infer."""

    options: tuple[str, ...]

    def __call__(self, raw: str) -> str | None:
        value = raw.lower()
        if value and value not in self.options:
            raise ValueError(f"expected {', '.join(self.options[:-1])} or {self.options[-1]}, got {value!r}")
        return value or None


@dataclass(frozen=True)
class Url:
    schemes: tuple[str, ...] = ("http://", "https://")

    def __call__(self, raw: str) -> str | None:
        if raw and not raw.startswith(self.schemes):
            expected = "an https://" if self.schemes == ("https://",) else "an http(s)"
            raise ValueError(f"expected {expected} URL, got {raw!r}")
        return raw or None


@dataclass(frozen=True)
class Setting:
    name: str
    description: str
    default: str | None = None
    kind: Kind = text
    secret: bool = False
    in_azure: InAzure = "optional"
    group: Group | None = None  # set by the table's sections

    def parse(self, value: str | None) -> Any:
        """The typed value of this setting from its raw environment value (None: unset)."""
        try:
            return self.kind((value or "").strip() or self.default or "")
        except ValueError as error:
            raise SettingsError(f"{self.name}: {error}") from None
