"""Webhook delivery library: Standard Webhooks signing, SSRF-safe delivery, retry timing, payloads.

Framework-free and async; the service wires it to the queue trigger and run storage.
"""

from ..retry_after import parse_retry_after
from .delivery import DEFAULT_USER_AGENT, Attempt, WebhookSender
from .destinations import (
    DestinationRefused,
    ParsedURL,
    ResolutionFailed,
    Resolver,
    address_class,
    check_url,
    resolve_and_vet,
)
from .payload import build_payload, event_type_for
from .schedule import next_delay, parse_schedule
from .signing import SignatureError, new_webhook_id, sign_headers, verify

__all__ = [
    "DEFAULT_USER_AGENT",
    "Attempt",
    "DestinationRefused",
    "ParsedURL",
    "ResolutionFailed",
    "Resolver",
    "SignatureError",
    "WebhookSender",
    "address_class",
    "build_payload",
    "check_url",
    "event_type_for",
    "new_webhook_id",
    "next_delay",
    "parse_retry_after",
    "parse_schedule",
    "resolve_and_vet",
    "sign_headers",
    "verify",
]
