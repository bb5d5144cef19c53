"""Continuation tokens: opaque, tamper-evident (HMAC-SHA256), bound to one run.

A token is `<base64url(payload)>.<base64url(mac)>` where payload is compact JSON
`{"v": 1, "r": run_id, "s": position}`. `s` is the last stream sequence number the holder has seen
(-1 before any), so the same token serves polling and exact stream resume. Tokens do not expire on
their own: they are safe to persist and use from another process later; they stop working when the
run is purged. A key rotation keeps them working: the codec signs with the first key and accepts any of its
keys (RUN_TOKEN_KEY "new old"), so tokens minted before the rotation verify until the old key is dropped.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import InvalidRequest

_MAX_TOKEN_LENGTH = 512


@dataclass(frozen=True)
class TokenClaims:
    run_id: str
    position: int = -1


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(key: bytes, payload: bytes) -> bytes:
    return hmac.new(key, b"run-token.v1." + payload, hashlib.sha256).digest()


class TokenCodec:
    def __init__(self, keys: bytes | Sequence[bytes]) -> None:
        self._keys = (keys,) if isinstance(keys, bytes) else tuple(keys)
        if not self._keys:
            raise ValueError("a TokenCodec needs at least one key")

    def encode(self, run_id: str, position: int = -1) -> str:
        payload = json.dumps({"v": 1, "r": run_id, "s": position}, separators=(",", ":")).encode()
        return f"{_b64(payload)}.{_b64(_mac(self._keys[0], payload))}"

    def _signed_by_a_key(self, payload: bytes, given: bytes) -> bool:
        # Every key is tried (no early exit), so the time taken does not say which key matched.
        matches = [hmac.compare_digest(given, _mac(key, payload)) for key in self._keys]
        return any(matches)

    def decode(self, token: object, *, param: str = "continuation_token") -> TokenClaims:
        invalid = InvalidRequest("invalid_token", "The continuation token is invalid or was altered.", param=param)
        if not isinstance(token, str) or not token or len(token) > _MAX_TOKEN_LENGTH or token.count(".") != 1:
            raise invalid
        body, mac = token.split(".")
        try:
            payload, given = _unb64(body), _unb64(mac)
        except (ValueError, TypeError):
            raise invalid from None
        if not self._signed_by_a_key(payload, given):
            raise invalid
        try:
            data = json.loads(payload)
            run_id, position = data["r"], data["s"]
        except (ValueError, KeyError, TypeError):
            raise invalid from None
        if data.get("v") != 1 or not isinstance(run_id, str) or not isinstance(position, int):
            raise invalid
        return TokenClaims(run_id, position)
