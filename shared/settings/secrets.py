"""The formats of the secret settings: continuation-token keys, `whsec_` webhook secrets, the facade's API keys.

Each is a kind (spec.py): it raises ValueError with what is wrong and never repeats the secret.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field


def token_keys(raw: str) -> tuple[bytes, ...]:
    """HMAC keys, space-separated: the first signs, all verify."""
    keys = raw.split()
    if not keys:
        raise ValueError("required (32+ random bytes, e.g. `openssl rand -base64 32`)")
    for number, key in enumerate(keys, 1):
        if len(key) < 32:
            which = f" (key {number} of {len(keys)})" if len(keys) > 1 else ""
            raise ValueError(f"too short{which}; use at least 32 characters of randomness")
    return tuple(key.encode() for key in keys)


def webhook_secrets(raw: str) -> tuple[str, ...]:
    """Space- or comma-separated Standard Webhooks secrets (`whsec_` + base64 of 24-64 bytes)."""
    secrets = tuple(raw.replace(",", " ").split())
    for index, secret in enumerate(secrets, 1):
        if not secret.startswith("whsec_"):
            raise ValueError(f"entry {index} does not start with whsec_")
        try:
            decoded = base64.b64decode(secret[6:] + "=" * (-len(secret[6:]) % 4), validate=True)
        except ValueError:
            raise ValueError(f"entry {index} is not base64 after whsec_") from None
        if not 24 <= len(decoded) <= 64:
            raise ValueError(f"entry {index} must decode to 24-64 bytes")
    return secrets


@dataclass(frozen=True)
class ApiKey:
    """One key of one facade caller. Runs are owned by the caller's name, so a caller keeps its runs when its key
    is rotated (two entries with the same name)."""

    caller: str
    key: str = field(repr=False)
    operator: bool = False


CALLER_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_API_KEY = re.compile(r"^[A-Za-z0-9_-]{32,256}$")


def api_keys(raw: str) -> tuple[ApiKey, ...]:
    """`name:key[:operator]` entries separated by spaces (or commas)."""
    keys: list[ApiKey] = []
    for index, entry in enumerate(raw.replace(",", " ").split(), start=1):
        parts = entry.split(":")
        if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "operator"):
            raise ValueError(f"entry {index} is not name:key or name:key:operator")
        name, key = parts[0], parts[1]
        if not CALLER_NAME.match(name):
            raise ValueError(f"entry {index}: the caller name must be 1-64 characters of [A-Za-z0-9_.-]")
        if not _API_KEY.match(key):
            raise ValueError(f"entry {index} ({name}): the key must be 32-256 characters of [A-Za-z0-9_-]")
        if any(existing.key == key for existing in keys):
            raise ValueError(f"entry {index} ({name}) repeats the key of another entry")
        keys.append(ApiKey(name, key, len(parts) == 3))
    for name in {k.caller for k in keys}:
        if len({k.operator for k in keys if k.caller == name}) > 1:
            raise ValueError(f"caller {name} is an operator in one entry and not in another")
    return tuple(keys)
