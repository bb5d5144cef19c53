"""Standard Webhooks v1 signing (sender) and verification (receivers, tests).

Signed content is `{webhook_id}.{timestamp}.{body}`; one `v1,<base64 HMAC-SHA256>` per secret,
space-separated, so receivers holding either the old or the new secret verify during a rotation.
"""

from __future__ import annotations

import secrets as _random
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

from standardwebhooks import Webhook, WebhookVerificationError

_ID_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


class SignatureError(WebhookVerificationError):
    """Verification failed (missing/old headers, no matching or malformed signature)."""


def new_webhook_id() -> str:
    """A fresh event id, e.g. `msg_3qZ...`; keep it for every retry of the same event."""
    return "msg_" + _random.token_urlsafe(18)


def _check_id(webhook_id: str) -> None:
    # The id is part of the signed string and a header value: no '.', no whitespace/control chars.
    if not webhook_id or not set(webhook_id) <= _ID_CHARS:
        raise ValueError("webhook id must be non-empty and use only [A-Za-z0-9_-]")


def _utc_now_seconds() -> datetime:
    # standardwebhooks' sign() does timestamp.replace(tzinfo=utc): pass UTC, whole seconds.
    now = int(datetime.now(UTC).timestamp())
    return datetime.fromtimestamp(now, tz=UTC)


def sign_headers(
    webhook_id: str, body: bytes, secrets: Sequence[str], *, timestamp: datetime | None = None
) -> dict[str, str]:
    """The three Standard Webhooks headers for `body`, signed with every secret.

    `timestamp` defaults to now (each delivery attempt is signed afresh). An aware timestamp in
    any zone is converted to UTC first; a naive one is taken as UTC.
    """
    _check_id(webhook_id)
    if not secrets:
        raise ValueError("at least one signing secret is required")
    when = _utc_now_seconds() if timestamp is None else _as_utc_seconds(timestamp)
    text = body.decode("utf-8")  # the library signs str; UTF-8 round-trips the raw bytes exactly
    signatures = " ".join(Webhook(s).sign(webhook_id, when, text) for s in secrets)
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(when.timestamp())),
        "webhook-signature": signatures,
    }


def _as_utc_seconds(timestamp: datetime) -> datetime:
    if timestamp.tzinfo is None:
        timestamp = timestamp.replace(tzinfo=UTC)
    seconds = int(timestamp.astimezone(UTC).timestamp())
    return datetime.fromtimestamp(seconds, tz=UTC)


def verify(headers: Mapping[str, str], body: bytes | str, secrets: Sequence[str]) -> None:
    """Accept if any secret verifies (±5 min timestamp tolerance); else raise SignatureError.

    Normalises the library's pitfall where a malformed signature token raises ValueError.
    """
    if not secrets:
        raise ValueError("at least one secret is required")
    hooks = [Webhook(s) for s in secrets]  # a malformed secret is a config error: let it raise
    plain = dict(headers.items())
    last: Exception | None = None
    for hook in hooks:
        try:
            hook.verify(body, plain, json_parse=False)
            return
        except (WebhookVerificationError, ValueError) as exc:  # ValueError: malformed token/base64
            last = exc
    raise SignatureError(f"webhook signature not verified: {last}")
