"""The model provider's client: one AsyncOpenAI for OpenAI, Azure OpenAI (v1 API) or the local emulator.

All three speak the Responses API, so the service has one code path. Creates are never retried by the SDK
(`max_retries=0`): OpenAI has no idempotency key, so a retried create could start a second background
response. Retrieve and cancel are safe to retry; the poll chain does its own backoff.
"""
from __future__ import annotations

from openai import AsyncOpenAI

from ..settings import ProviderSettings

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
