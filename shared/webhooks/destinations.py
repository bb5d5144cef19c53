"""SSRF guard for webhook destinations.

Two steps, both needed at delivery time:

* `check_url` — syntax only: scheme, userinfo, port, and literal IP hosts (checked right away).
* `resolve_and_vet` — resolves the host ONCE and refuses the whole destination if ANY returned
  address is disallowed. The caller then connects to one of the returned (vetted) addresses, never
  resolving again, so a DNS answer that changes between check and connect (rebinding) cannot reach
  an internal address.

Any-vs-all: we refuse when *any* address is disallowed rather than silently dropping the bad ones.
A public webhook host has no business publishing a loopback/private record next to a public one;
such a mixed answer is an attack signal, and refusing it is simpler to reason about than filtering.

`allow_private` (local development only) permits loopback, RFC 1918 and IPv6 unique-local targets.
Everything else in the table below — link-local, cloud metadata, the Azure platform address
168.63.129.16, CGNAT, documentation, multicast, reserved — is refused whatever the flag says.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# An injectable resolver: (host, port) -> addresses as strings or ip objects.
Resolver = Callable[[str, int], Awaitable[Sequence[str | IPAddress]]]

DEFAULT_PORTS = {"http": 80, "https": 443}


class DestinationRefused(Exception):
    """The webhook URL or what it resolves to is not an allowed destination; the message says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ResolutionFailed(Exception):
    """The host did not resolve (possibly transient: retry later). Not an SSRF refusal."""


@dataclass(frozen=True)
class ParsedURL:
    url: str  # canonical form (IDNA-encoded host), what is actually requested
    scheme: str
    host: str  # lower-case ASCII (IDNA), no brackets for IPv6
    port: int  # explicit or the scheme default
    ip: IPAddress | None  # set when the host is a literal IP


# (network, class name, allowed with allow_private). First match wins, so specific entries come
# before the ranges that contain them (169.254.169.254 before 169.254.0.0/16).
_V4_RULES: tuple[tuple[str, str, bool], ...] = (
    ("169.254.169.254/32", "cloud metadata (IMDS)", False),
    ("168.63.129.16/32", "Azure platform (WireServer)", False),
    ("0.0.0.0/8", "unspecified", False),
    ("127.0.0.0/8", "loopback", True),
    ("10.0.0.0/8", "private", True),
    ("172.16.0.0/12", "private", True),
    ("192.168.0.0/16", "private", True),
    ("169.254.0.0/16", "link-local", False),
    ("100.64.0.0/10", "carrier-grade NAT (shared)", False),
    ("192.0.0.0/24", "reserved (IETF protocol assignments)", False),
    ("192.0.2.0/24", "documentation", False),
    ("198.51.100.0/24", "documentation", False),
    ("203.0.113.0/24", "documentation", False),
    ("198.18.0.0/15", "benchmarking", False),
    ("192.88.99.0/24", "reserved (6to4 relay)", False),
    ("224.0.0.0/4", "multicast", False),
    ("240.0.0.0/4", "reserved", False),  # includes 255.255.255.255 broadcast
)
_V6_RULES: tuple[tuple[str, str, bool], ...] = (
    ("::/128", "unspecified", False),
    ("::1/128", "loopback", True),
    ("fd00:ec2::254/128", "cloud metadata (IMDS)", False),
    ("fc00::/7", "private (unique local)", True),
    ("fe80::/10", "link-local", False),
    ("fec0::/10", "site-local", False),
    ("ff00::/8", "multicast", False),
    ("2001:db8::/32", "documentation", False),
    ("3fff::/20", "documentation", False),
    ("2001::/23", "reserved (IETF protocol assignments)", False),
    ("2002::/16", "6to4 (embeds an IPv4 address)", False),
)
_V4 = tuple((ipaddress.ip_network(n), name, ok) for n, name, ok in _V4_RULES)
_V6 = tuple((ipaddress.ip_network(n), name, ok) for n, name, ok in _V6_RULES)
_V6_GLOBAL_UNICAST = ipaddress.ip_network("2000::/3")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NUMERIC_HOST = re.compile(r"^(0x[0-9a-f]*|[0-9]+)(\.(0x[0-9a-f]*|[0-9]+))*\.?$")


def canonical_ip(ip: IPAddress) -> IPAddress:
    """Unwrap IPv4 addresses embedded in IPv6 (mapped ::ffff:a.b.c.d, NAT64 64:ff9b::a.b.c.d)."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip in _NAT64:
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if ip.scope_id:
            return ipaddress.IPv6Address(str(ip).split("%", 1)[0])
    return ip


def address_class(ip: IPAddress) -> tuple[str, bool] | None:
    """(class name, allowed with allow_private) for a non-public address, None for a public one."""
    ip = canonical_ip(ip)
    rules = _V4 if ip.version == 4 else _V6
    for network, name, private_ok in rules:
        if ip in network:
            return name, private_ok
    if ip.version == 6 and ip not in _V6_GLOBAL_UNICAST:
        return "reserved", False
    return None


def vet_address(ip: IPAddress, *, allow_private: bool, what: str = "resolves to") -> IPAddress:
    """Return the canonical address, or raise DestinationRefused naming its class."""
    canonical = canonical_ip(ip)
    found = address_class(canonical)
    if found is not None:
        name, private_ok = found
        if not (private_ok and allow_private):
            article = "an" if name[0] in "aeiou" else "a"
            raise DestinationRefused(f"{what} {article} {name} address {canonical}")
    return canonical


def _literal_ip(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        if _NUMERIC_HOST.match(host):
            raise DestinationRefused(f"host {host!r} is a non-canonical numeric address") from None
        return None


def check_url(url: str, *, allow_http: bool, allow_private: bool) -> ParsedURL:
    """Syntax, scheme and literal-IP checks. Raises DestinationRefused; does no network I/O."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        raise DestinationRefused(f"not a valid URL ({exc})") from None
    scheme = parsed.scheme
    if scheme not in DEFAULT_PORTS:
        raise DestinationRefused(f"scheme {scheme!r} is not allowed (http or https only)")
    if scheme == "http" and not allow_http:
        raise DestinationRefused("https is required")
    if parsed.userinfo:
        raise DestinationRefused("credentials (userinfo) in the URL are not allowed")
    host = parsed.raw_host.decode("ascii").lower()
    if not host:
        raise DestinationRefused("the URL has no host")
    port = parsed.port or DEFAULT_PORTS[scheme]
    if not 0 < port < 65536:
        raise DestinationRefused(f"port {port} is out of range")
    ip = _literal_ip(host)
    if ip is not None:
        ip = vet_address(ip, allow_private=allow_private, what="host is")
    elif not allow_private and (host.rstrip(".") == "localhost" or host.rstrip(".").endswith(".localhost")):
        raise DestinationRefused(f"host {host!r} is a loopback name")
    return ParsedURL(url=str(parsed), scheme=scheme, host=host, port=port, ip=ip)


async def system_resolver(host: str, port: int) -> list[str]:
    """Resolve with the event loop's getaddrinfo (runs in the default executor)."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise ResolutionFailed(f"{host} does not resolve ({exc})") from None
    return [str(info[4][0]) for info in infos]  # an IP address: sockaddr[0] of AF_INET/AF_INET6


async def resolve_and_vet(
    parsed: ParsedURL, *, allow_private: bool, resolver: Resolver | None = None
) -> list[IPAddress]:
    """Resolve once; return the vetted addresses (order kept, duplicates dropped).

    Raises DestinationRefused if ANY address is disallowed, ResolutionFailed if there is none.
    """
    if parsed.ip is not None:
        return [vet_address(parsed.ip, allow_private=allow_private, what="host is")]
    raw = await (resolver or system_resolver)(parsed.host, parsed.port)
    vetted: list[IPAddress] = []
    for item in raw:
        ip = vet_address(_to_ip(item), allow_private=allow_private)
        if ip not in vetted:
            vetted.append(ip)
    if not vetted:
        raise ResolutionFailed(f"{parsed.host} resolved to no address")
    return vetted


def _to_ip(item: str | IPAddress) -> IPAddress:
    if isinstance(item, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return item
    try:
        return ipaddress.ip_address(str(item))
    except ValueError:
        raise DestinationRefused(f"resolver returned a non-address {item!r}") from None
