"""Who is asking: a caller of an API, and which runs it may see.

A run records its owner (the name of the facade caller that started it; none for runs started through the
native API). A caller sees its own runs; an operator sees every run. The native API (function keys) acts as
an operator. A run another caller owns is reported as not found, so ids reveal nothing across callers.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from .model import Run


@dataclass(frozen=True)
class Caller:
    name: str | None
    operator: bool = False

    def can_see(self, run: Run) -> bool:
        return self.operator or (self.name is not None and run.owner == self.name)

    @property
    def owner(self) -> str | None:
        """What a run started by this caller records as its owner."""
        return self.name


OPERATOR = Caller(None, operator=True)


class CallerKey(Protocol):
    """One configured key (settings.ApiKey)."""

    @property
    def caller(self) -> str: ...
    @property
    def key(self) -> str: ...
    @property
    def operator(self) -> bool: ...


class CallerKeys:
    """The facade's callers, found by key. Every configured key is compared, in constant time, whatever matches:
    how long a lookup takes says nothing about which key, or how much of one, was right."""

    def __init__(self, keys: Iterable[CallerKey]) -> None:
        self._keys = tuple((key.key.encode(), Caller(key.caller, key.operator)) for key in keys)

    @property
    def configured(self) -> bool:
        return bool(self._keys)

    @property
    def callers(self) -> list[Caller]:
        """Every configured caller once (a caller with two keys during a rotation too), by name."""
        return sorted({caller for _, caller in self._keys}, key=lambda caller: caller.name or "")

    def caller(self, presented: str | None) -> Caller | None:
        if not presented:
            return None
        given = presented.encode()
        found = None
        for key, caller in self._keys:
            if hmac.compare_digest(given, key):
                found = caller
        return found
