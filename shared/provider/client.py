"""The model provider's client: one AsyncOpenAI for OpenAI, Azure OpenAI (v1 API), an OpenAI-compatible server
or the local emulator.

OpenAI, Azure OpenAI and the emulator speak the Responses API (background mode); an OpenAI-compatible server
is called by the executor (Chat Completions, or a Responses API without background mode). Calls are never
retried by the SDK (`max_retries=0`): OpenAI has no idempotency key, so a retried create could start a second
background response; the poll chain and the executor do their own backoff.
"""

from __future__ import annotations

from openai import AsyncOpenAI

from ..settings import ProviderSettings

AZURE_SCOPE = "https://cognitiveservices.azure.com/.default"


def open_provider(settings: ProviderSettings) -> AsyncOpenAI:
    entra = (settings.kind == "azure_openai" and not settings.api_key) or (
        settings.kind == "openai_compatible" and not settings.api_key
    )
    if entra:
        from azure.identity.aio import DefaultAzureCredential, ManagedIdentityCredential, get_bearer_token_provider

        credential = (
            ManagedIdentityCredential(client_id=settings.client_id) if settings.client_id else DefaultAzureCredential()
        )
        scope = settings.entra_scope if settings.kind == "openai_compatible" else AZURE_SCOPE
        return AsyncOpenAI(
            base_url=settings.base_url,
            api_key=get_bearer_token_provider(credential, scope or AZURE_SCOPE),
            timeout=settings.timeout_seconds,
            max_retries=0,
        )
    return AsyncOpenAI(
        base_url=settings.base_url, api_key=settings.api_key, timeout=settings.timeout_seconds, max_retries=0
    )
