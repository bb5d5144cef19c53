"""Key-like text out of what a provider says, before it reaches a caller, a stored run or a log.

A provider's error text can quote a credential: OpenAI's 401 says "Incorrect API key provided: sk-proj-***abcd",
an OpenAI-compatible proxy may echo the `Authorization` header or a URL with `?code=`. `redact` replaces what
looks like a secret with "[redacted]" and leaves the rest readable: OpenAI and Azure keys (masked ones too),
bearer tokens, the value of a named credential (`api-key: ...`, `"api_key": "..."`, `password=...`), credentials
in a URL's query, JWTs, and any other long run of base64 or hex that mixes letters and digits, except the ids
worth quoting to support (response, message, request and run ids, UUIDs).
"""

from __future__ import annotations

import re
from typing import Any

REDACTED = "[redacted]"

_PROVIDER_KEY = re.compile(r"\b(?:sk|rk|pk)-[A-Za-z0-9_\-*]{8,}")
_BEARER = re.compile(r"\b(Bearer|Basic)\s+[A-Za-z0-9\-._~+/*]+=*", re.IGNORECASE)
_NAMED = re.compile(
    r"""(?P<name>\b(?:x-)?(?:api[-_ ]?key|subscription[-_ ]?key|access[-_ ]?token|refresh[-_ ]?token|"""
    r"""client[-_ ]?secret|secret|password|passwd|authorization|x-functions-key)\b)"""
    r"""(?P<sep>["']?\s*[:=]\s*["']?)(?!Bearer\b|Basic\b|\[redacted\])(?P<value>[^\s"',;&}]+)""",
    re.IGNORECASE,
)
_QUERY = re.compile(
    r"(?P<name>[?&](?:code|sig|key|api-key|api_key|token|access_token)=)(?P<value>[^&\s\"']+)", re.IGNORECASE
)
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*")
_LONG = re.compile(r"(?<![A-Za-z0-9+/_=-])[A-Za-z0-9+/_-]{32,}={0,2}(?![A-Za-z0-9+/_=-])")
_KEPT_IDS = re.compile(
    r"^(?:resp|run|msg|req|fc|call|exec|sess|evt|rs|wh|ws|ci|mcp|file|chatcmpl|batch)[_-]"
    r"|^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
)


def redact(text: str) -> str:
    """`text` with everything key-like replaced by "[redacted]"."""
    if not text:
        return text
    text = _PROVIDER_KEY.sub(REDACTED, text)
    text = _BEARER.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    text = _NAMED.sub(lambda m: f"{m.group('name')}{m.group('sep')}{REDACTED}", text)
    text = _QUERY.sub(lambda m: f"{m.group('name')}{REDACTED}", text)
    text = _JWT.sub(REDACTED, text)
    return _LONG.sub(_long_token, text)


def redact_error(error: Any) -> Any:
    """A provider's error object (`{"code", "message"}`) with its message redacted; anything else as it is."""
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return {**error, "message": redact(error["message"])}
    return error


def _long_token(match: re.Match[str]) -> str:
    token = match.group(0)
    looks_random = any(c.isdigit() for c in token) and any(c.isalpha() for c in token)
    return REDACTED if looks_random and not _KEPT_IDS.match(token) else token
