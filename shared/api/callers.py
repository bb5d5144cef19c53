"""Who is calling, from the key a request presents: the Responses API facade and the console check keys here.

A key from RESPONSES_API_KEYS comes as `Authorization: Bearer <key>` (what `OpenAI(api_key=...)` and the console
send) or `api-key: <key>` (what `AzureOpenAI` sends); shared.runs.callers compares it in constant time.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..errors import Unauthorized
from ..runs.callers import Caller, CallerKeys


def presented_key(headers: Mapping[str, str]) -> str | None:
    authorization = headers.get("authorization", "")
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return headers.get("api-key")


def authenticated(keys: CallerKeys, headers: Mapping[str, str], *, what: str) -> Caller:
    """The caller whose key the request presents; Unauthorized (401 `invalid_api_key`) otherwise. `what` names
    the API in the answer when no key is configured at all."""
    if not keys.configured:
        raise Unauthorized(
            "invalid_api_key", f"The {what} is not enabled on this service: no RESPONSES_API_KEYS are configured."
        )
    caller = keys.caller(presented_key(headers))
    if caller is None:
        raise Unauthorized(
            "invalid_api_key",
            "Missing or incorrect API key. Send it as 'Authorization: Bearer <key>' or as 'api-key: <key>'.",
        )
    return caller
