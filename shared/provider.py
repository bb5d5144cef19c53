"""The model provider: one AsyncOpenAI client for OpenAI, Azure OpenAI (v1 API) or the local emulator.

All three speak the Responses API, so the service has one code path. Creates are never retried by the
SDK (`max_retries=0`): OpenAI has no idempotency key, so a retried create could start a second
background response. Retrieve and cancel are safe to retry; the poller does its own backoff.
"""
from __future__ import annotations

import email.utils
import time
from dataclasses import dataclass

import openai
from openai import AsyncOpenAI

from .settings import ProviderSettings

AZURE_SCOPE = "https://cognitiveservices.azure.com/.default"


def open_provider(settings: ProviderSettings) -> AsyncOpenAI:
    common = dict(timeout=settings.timeout_seconds, max_retries=0)
    if settings.kind == "azure_openai" and not settings.api_key:
        from azure.identity.aio import DefaultAzureCredential, ManagedIdentityCredential, get_bearer_token_provider

        credential = (ManagedIdentityCredential(client_id=settings.client_id) if settings.client_id
                      else DefaultAzureCredential())
        return AsyncOpenAI(base_url=settings.base_url, api_key=get_bearer_token_provider(credential, AZURE_SCOPE),
                           **common)
    return AsyncOpenAI(base_url=settings.base_url, api_key=settings.api_key, **common)


@dataclass
class ProviderFailure:
    """What a provider exception means for us."""

    transient: bool  # worth retrying later (429, 5xx, timeouts, connection errors)
    status: int | None
    message: str
    retry_after: float | None = None
    code: str | None = None


def _retry_after(headers) -> float | None:
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


def classify(error: Exception) -> ProviderFailure:
    if isinstance(error, (openai.APITimeoutError, openai.APIConnectionError)):
        return ProviderFailure(True, None, f"provider unreachable: {type(error).__name__}")
    if isinstance(error, openai.APIStatusError):
        status = error.status_code
        transient = status in (408, 409, 429) or status >= 500
        if status == 429 and getattr(error, "code", None) == "insufficient_quota":
            transient = False
        return ProviderFailure(transient, status, _message(error), _retry_after(error.response.headers),
                               getattr(error, "code", None))
    raise error


def _message(error: openai.APIStatusError) -> str:
    body = error.body if isinstance(error.body, dict) else {}
    return str(body.get("message") or error.message)
