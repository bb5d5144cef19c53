"""What an operator looks at: the service's configuration and storage check (GET /api/health) and this process's
counters (GET /api/metrics); the console's operator view shows the same two. Never a secret."""

from __future__ import annotations

import resource
from collections import Counter
from collections.abc import Callable
from typing import Any

from azure.core.exceptions import AzureError, ResourceNotFoundError

from ..settings import Quota, Settings
from ..storage import STORAGE_REQUESTS, Table


def configuration(settings: Settings) -> dict[str, Any]:
    """What is configured, counted (never a secret): the provider, how runs run and end, webhooks, the callers."""
    return {
        "provider": {
            "kind": settings.provider.kind,
            "default_model": settings.provider.default_model,
            "auth": "key" if settings.provider.api_key else "entra_id",
        },
        "backend": {"run_backend": settings.executor.backend, "executor_api": settings.executor.api},
        "deployments": [
            {
                "name": d.name,
                "provider": d.provider.kind,
                "priority": d.priority,
                "weight": d.weight,
                "auth": "key" if d.provider.api_key else "entra_id",
            }
            for d in settings.deployments
        ],
        "webhooks": {"enabled": bool(settings.webhook_secrets), "signing_secrets": len(settings.webhook_secrets)},
        "completion": {
            "strategy": settings.completion.strategy,
            "provider_webhook_secrets": len(settings.completion.provider_webhook_secrets),
        },
        "responses_api": {
            "callers": len({key.caller for key in settings.facade.api_keys}),
            "keys": len(settings.facade.api_keys),
        },
        "caller_quotas": {
            **_quota(settings.quotas.default),
            "overrides": {name: _quota(quota) for name, quota in sorted(settings.quotas.overrides.items())},
        },
    }


def _quota(quota: Quota) -> dict[str, int]:
    return {"max_active_runs": quota.max_active, "starts_per_minute": quota.per_minute}


class HealthCheck:
    """The checks behind GET /api/health: the configuration, and whether storage answers (a point read of the runs
    table)."""

    def __init__(
        self, configured: dict[str, Any], runs_table: Table, breakers: Callable[[], dict[str, str]] | None = None
    ) -> None:
        """`breakers`: each deployment's circuit breaker as this instance sees it (provider.pool)."""
        self._configured = configured
        self._runs_table = runs_table
        self._breakers = breakers

    async def check(self) -> tuple[dict[str, Any], bool]:
        """The checks, and whether the service is healthy."""
        checks = dict(self._configured)
        if self._breakers is not None:
            checks["circuit_breakers"] = {"scope": "this instance", **self._breakers()}
        try:
            await self._runs_table.get_entity("health-check", "run")
            checks["storage"] = "ok"
        except ResourceNotFoundError:  # storage answered: that is all this checks
            checks["storage"] = "ok"
        except AzureError as error:
            checks["storage"] = type(error).__name__
        return checks, checks["storage"] == "ok"


def process_metrics() -> dict[str, Any]:
    """This process's counters: storage requests by function and by service/method, CPU time and peak memory.
    On Flex Consumption HTTP, queue and timer functions run on separate instances, so one answer covers only
    the functions this instance served (`functions`)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    by_request: Counter[str] = Counter()
    by_function: dict[str, Counter[str]] = {}
    for (function, request), count in STORAGE_REQUESTS.items():
        by_request[request] += count
        by_function.setdefault(function, Counter())[request] += count
    return {
        "scope": "this process only",
        "functions": sorted(by_function),
        "storage_requests": dict(by_request),
        "storage_requests_total": sum(by_request.values()),
        "storage_requests_by_function": {f: dict(c) for f, c in by_function.items()},
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
        "max_rss_kib": usage.ru_maxrss,
    }
