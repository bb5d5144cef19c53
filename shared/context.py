"""The process-wide service objects: settings read once, async clients created once and reused.

Built lazily on the first invocation (inside the worker's event loop, which the clients bind to).
A bad setting fails that first invocation with a message naming the setting.
"""
from __future__ import annotations

import asyncio
import logging

from .provider import open_provider
from .service import RunService
from .settings import Settings
from .storage import open_storage
from .webhooks import WebhookSender

log = logging.getLogger("runs.context")


class Context:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.storage = open_storage(settings.storage)
        self.provider = open_provider(settings.provider)
        self.service = RunService(settings, self.storage, self.provider)
        self.webhooks = WebhookSender(settings.webhook_secrets, timeout=settings.webhook_timeout,
                                      allow_http=settings.webhook_allow_http,
                                      allow_private=settings.webhook_allow_private)

    async def close(self) -> None:
        await self.webhooks.aclose()
        await self.provider.close()
        await self.storage.close()


_context: Context | None = None
_lock = asyncio.Lock()


async def get_context() -> Context:
    global _context
    if _context is None:
        async with _lock:
            if _context is None:
                settings = Settings.from_env()
                context = Context(settings)
                await context.storage.ensure_resources()
                log.info("service ready: provider=%s model=%s", settings.provider.kind,
                         settings.provider.default_model)
                _context = context
    return _context
