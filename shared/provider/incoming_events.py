"""The provider's webhooks in: verified with the `openai` SDK's own helpers (Standard Webhooks signatures,
300 s timestamp tolerance), against every configured secret so a rotation never drops an event.

The events that matter here are the ends of background responses; their payload carries only the
response id (`{"object": "event", "id": "evt_...", "type": "response.completed", "data": {"id": "resp_..."}}`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from openai import InvalidWebhookSignatureError
from openai.resources.webhooks.webhooks import AsyncWebhooks  # the type client.webhooks declares

from .. import strict_json
from ..responses_vocabulary import ENDED_WEBHOOK_EVENT_TYPES

# Printable ASCII without the characters a Table key may not hold.
_WEBHOOK_ID = re.compile(r"^(?:(?![/\\#?])[!-~]){1,256}$")
SIGNATURE_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")


class InvalidProviderEvent(Exception):
    """Not a genuine, well-formed provider event (bad or stale signature, malformed body); the message says which."""


@dataclass(frozen=True)
class ProviderEvent:
    webhook_id: str  # the delivery's id, stable across the provider's retries (deduplicate on it)
    type: str
    response_id: str | None

    @property
    def ends_a_response(self) -> bool:
        return self.type in ENDED_WEBHOOK_EVENT_TYPES and bool(self.response_id)


class ProviderEventVerifier:
    def __init__(self, webhooks: AsyncWebhooks, secrets: Sequence[str]) -> None:
        self._webhooks = webhooks  # the openai client's `.webhooks` resource
        # The SDK decodes the secret strictly: give it the padded base64 that Standard Webhooks allows unpadded.
        self._secrets = tuple(s + "=" * (-len(s.removeprefix("whsec_")) % 4) for s in secrets)

    def unwrap(self, body: bytes, headers: Mapping[str, str]) -> ProviderEvent:
        headers = {key.lower(): value for key, value in headers.items()}
        webhook_id = headers.get("webhook-id", "")
        if not _WEBHOOK_ID.match(webhook_id):  # it becomes a Table row key once the delivery verifies
            raise InvalidProviderEvent("missing or malformed webhook-id header")
        self._verify(body, headers)
        try:
            event = strict_json.loads(body)
        except strict_json.JsonRefused as refused:
            raise InvalidProviderEvent(f"the body is not acceptable JSON: {refused.message}") from None
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            raise InvalidProviderEvent("the body is not an event object with a type")
        data = event.get("data")
        ident = data.get("id") if isinstance(data, dict) else None
        return ProviderEvent(
            webhook_id, event["type"], ident if isinstance(ident, str) and 0 < len(ident) <= 256 else None
        )

    def _verify(self, body: bytes, headers: Mapping[str, str]) -> None:
        # The SDK compares the signatures with hmac.compare_digest, which raises TypeError for text that is not
        # ASCII: such a header is malformed, and is never echoed back.
        if not all(headers.get(name, "").isascii() for name in SIGNATURE_HEADERS):
            raise InvalidProviderEvent("the signature headers are malformed (not ASCII)")
        for secret in self._secrets:
            try:
                self._webhooks.verify_signature(body, headers, secret=secret)
                return
            except InvalidWebhookSignatureError:
                continue
            except UnicodeDecodeError:  # the SDK decodes the body to sign it
                raise InvalidProviderEvent("the body is not UTF-8") from None
            except ValueError:  # a missing or malformed signature header (its value is not echoed)
                raise InvalidProviderEvent("the signature headers are missing or malformed") from None
        raise InvalidProviderEvent(
            "the signature does not verify (wrong secret, altered body, or a timestamp outside the 300 s tolerance)"
        )
