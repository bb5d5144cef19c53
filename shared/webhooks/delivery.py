"""One webhook delivery attempt over HTTP, SSRF-safe.

How the connection reaches only the vetted address: `send` resolves the host once and vets every
address (destinations.resolve_and_vet), then records the vetted IPs in a context variable for the
duration of the request. The client's connection pool uses a network backend that connects ONLY to
the pinned IPs of the requested host (and fails closed when there are none), so httpx never resolves
the name itself: a DNS answer that changes after vetting (rebinding) is never used. The URL keeps the
original hostname, so the Host header, the TLS server name (SNI) and certificate verification are
all for that hostname, and the pool keys connections by hostname (a TLS session verified for one
host is never reused for another host that happens to share an IP).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from contextvars import ContextVar
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

import httpcore
import httpx

from ..clock import iso_utc
from ..retry_after import parse_retry_after
from .destinations import DestinationRefused, IPAddress, ResolutionFailed, Resolver, check_url, resolve_and_vet
from .signing import sign_headers

DEFAULT_USER_AGENT = "background-responses-webhooks/1.0"
_MAX_ERROR_CHARS = 300

# host (lower-case, as in the URL) -> vetted addresses, set by WebhookSender.send around one request.
_PINNED: ContextVar[Mapping[str, tuple[IPAddress, ...]]] = ContextVar(
    "webhook_pinned_ips", default=MappingProxyType({})
)


@dataclass(frozen=True)
class Attempt:
    """The record of one delivery attempt (store it on the run; `to_dict()` is JSON-safe)."""

    at: str  # ISO-8601 UTC start time
    ok: bool  # any 2xx
    status_code: int | None = None
    error: str | None = None  # short text when not ok
    duration_ms: int = 0
    retry_after_seconds: float | None = None
    gone: bool = False  # 410: the receiver asks us to stop
    refused: bool = False  # SSRF refusal at delivery time (nothing was sent)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Attempt:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


class _PinnedBackend(httpcore.AsyncNetworkBackend):
    """Connects only to the vetted IPs pinned for the host; never resolves names."""

    def __init__(self) -> None:
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's signature
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = _PINNED.get().get(host.lower())
        if not addresses:
            raise httpcore.ConnectError(f"{host} was not vetted; refusing to connect")
        last: Exception | None = None
        for ip in addresses:  # try each vetted address in resolver order
            try:
                return await self._inner.connect_tcp(
                    str(ip), port, timeout=timeout, local_address=local_address, socket_options=socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        assert last is not None
        raise last

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's signature
        socket_options: Any = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are not webhook destinations")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class _PinnedTransport(httpx.AsyncHTTPTransport):
    def __init__(self, ssl_context: Any) -> None:
        super().__init__(verify=ssl_context, trust_env=False)
        # httpx 0.28 exposes no network-backend option: replace the pool with one that uses ours.
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context,
            max_connections=100,
            max_keepalive_connections=20,
            keepalive_expiry=5.0,
            network_backend=_PinnedBackend(),
        )


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:_MAX_ERROR_CHARS]


class WebhookSender:
    """Create once (per worker), reuse for every delivery, `await aclose()` at shutdown."""

    def __init__(
        self,
        secrets: Sequence[str],
        *,
        timeout: float = 15.0,
        allow_http: bool = False,
        allow_private: bool = False,
        resolver: Resolver | None = None,
        user_agent: str = DEFAULT_USER_AGENT,
        ssl_context: Any = None,
    ) -> None:
        if not secrets:
            raise ValueError("at least one signing secret is required")
        self._secrets = tuple(secrets)
        self._timeout = float(timeout)
        self._allow_http = allow_http
        self._allow_private = allow_private
        self._resolver = resolver
        self._user_agent = user_agent
        context = ssl_context if ssl_context is not None else httpx.create_ssl_context()
        self._client = httpx.AsyncClient(
            transport=_PinnedTransport(context),
            follow_redirects=False,
            trust_env=False,
            timeout=httpx.Timeout(self._timeout),
        )

    def __repr__(self) -> str:  # never show secrets
        return f"WebhookSender(timeout={self._timeout}, secrets=<{len(self._secrets)}>)"

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> WebhookSender:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.aclose()

    async def send(
        self, url: str, webhook_id: str, body: bytes, *, headers: Mapping[str, str] | None = None
    ) -> Attempt:
        """Deliver `body` once. Network failures come back as a failed Attempt, never raised. `headers` are sent
        too (e.g. `traceparent`); the signature and content headers always win.

        Raises only for caller bugs (bad webhook id, body not UTF-8).
        """
        at = datetime.now(UTC)
        started = time.monotonic()

        def failed(error: str, *, refused: bool = False) -> Attempt:
            return Attempt(at=iso_utc(at), ok=False, error=error, duration_ms=_ms_since(started), refused=refused)

        try:
            async with asyncio.timeout(self._timeout):
                status, reply_headers = await self._post(url, webhook_id, body, headers or {})
        except DestinationRefused as exc:
            return failed(f"destination refused: {exc.reason}", refused=True)
        except (TimeoutError, httpx.TimeoutException):
            return failed(f"timed out after {self._timeout:g}s")
        except ResolutionFailed as exc:
            return failed(f"dns: {exc}"[:_MAX_ERROR_CHARS])
        except (httpx.HTTPError, OSError) as exc:
            return failed(_short(exc))
        return _attempt_for_response(at, started, status, reply_headers)

    async def _post(
        self, url: str, webhook_id: str, body: bytes, extra: Mapping[str, str]
    ) -> tuple[int, httpx.Headers]:
        parsed = check_url(url, allow_http=self._allow_http, allow_private=self._allow_private)
        addresses = await resolve_and_vet(parsed, allow_private=self._allow_private, resolver=self._resolver)
        headers = {
            **extra,
            "content-type": "application/json",
            "user-agent": self._user_agent,
            **sign_headers(webhook_id, body, self._secrets),  # fresh timestamp per attempt
        }
        token = _PINNED.set({parsed.host: tuple(addresses)})
        try:
            request = self._client.build_request("POST", parsed.url, content=body, headers=headers)
            response = await self._client.send(request, stream=True)
            await response.aclose()  # the body is not needed; do not buffer what a receiver sends
        finally:
            _PINNED.reset(token)
        return response.status_code, response.headers


def _attempt_for_response(at: datetime, started: float, status: int, headers: httpx.Headers) -> Attempt:
    ok = 200 <= status < 300
    if ok:
        error = None
    elif 300 <= status < 400:
        error = f"HTTP {status} redirect (not followed)"
    else:
        error = f"HTTP {status}"
    return Attempt(
        at=iso_utc(at),
        ok=ok,
        status_code=status,
        error=error,
        duration_ms=_ms_since(started),
        retry_after_seconds=None if ok else parse_retry_after(headers.get("retry-after")),
        gone=status == 410,
    )


def _ms_since(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
