"""Verifying webhook deliveries (Standard Webhooks signatures) on the receiving side."""
from __future__ import annotations

import json
from typing import Any, Iterable, Mapping

from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError as _LibraryVerificationError

from .errors import WebhookVerificationError


def _secrets(secrets: str | bytes | Iterable[str | bytes]) -> list[str | bytes]:
    if isinstance(secrets, bytes):
        return [secrets]
    if isinstance(secrets, str):
        return secrets.split()  # one secret, or several separated by spaces (as WEBHOOK_SIGNING_SECRETS)
    return list(secrets)


def verify_webhook(headers: Mapping[str, str] | Iterable[tuple[str, str]], body: bytes | str,
                   secrets: str | bytes | Iterable[str | bytes]) -> Any:
    """Check a delivery's `webhook-id`, `webhook-timestamp` (within 5 minutes) and `webhook-signature`
    against each secret in turn and return the parsed JSON payload.

    `headers`: any mapping (or pairs), names in any case. `body`: the raw request body, exactly as
    received (do not re-serialize parsed JSON). `secrets`: "whsec_..." strings (several while keys
    are rotated), or raw key bytes.

    Raises WebhookVerificationError for every bad delivery, including malformed signature headers
    (where the underlying library would raise ValueError); ValueError only for unusable secrets.
    """
    keys = _secrets(secrets)
    if not keys:
        raise ValueError("no webhook secret given")
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    normalized = {str(k).lower(): str(v) for k, v in pairs}
    if isinstance(body, str):
        body = body.encode("utf-8")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise WebhookVerificationError("the body is not UTF-8") from None
    verifiers = []
    for key in keys:
        try:
            verifiers.append(Webhook(key))
        except Exception as error:  # noqa: BLE001 - bad base64, empty key, ...
            raise ValueError(f"an unusable webhook secret ({type(error).__name__}); expected 'whsec_' + base64") from None
    last: str = "no secret matched"
    for verifier in verifiers:
        try:
            verifier.verify(text, normalized, json_parse=False)
        except _LibraryVerificationError as error:
            last = str(error)
            continue
        except (ValueError, TypeError) as error:
            # A malformed webhook-signature (no comma, bad base64, ...) surfaces as ValueError/binascii.Error.
            raise WebhookVerificationError(f"malformed webhook-signature header ({type(error).__name__})") from None
        try:
            return json.loads(text)
        except ValueError:
            raise WebhookVerificationError("the signed body is not valid JSON") from None
    raise WebhookVerificationError(f"webhook verification failed: {last}")
