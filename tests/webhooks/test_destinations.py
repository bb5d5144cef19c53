from __future__ import annotations

import ipaddress
import re

import pytest

from shared.webhooks import DestinationRefused, ResolutionFailed, check_url, resolve_and_vet
from shared.webhooks.destinations import system_resolver

from .conftest import fixed_resolver

# address -> words the refusal must name
ALWAYS_REFUSED = {
    "169.254.169.254": "metadata",
    "168.63.129.16": "Azure platform",
    "100.64.0.1": "carrier-grade NAT",
    "0.0.0.0": "unspecified",
    "::": "unspecified",
    "fe80::1": "link-local",
    "169.254.1.1": "link-local",
    "224.0.0.1": "multicast",
    "ff02::1": "multicast",
    "240.0.0.1": "reserved",
    "255.255.255.255": "reserved",
    "198.18.0.1": "benchmarking",
    "192.0.2.1": "documentation",
    "2001:db8::1": "documentation",
    "64:ff9b::a9fe:a9fe": "metadata",  # NAT64 of 169.254.169.254
}
PRIVATE = {
    "127.0.0.1": "loopback",
    "::1": "loopback",
    "::ffff:127.0.0.1": "loopback",
    "10.1.2.3": "private",
    "172.16.0.1": "private",
    "192.168.1.1": "private",
    "fc00::1": "private (unique local)",
}
CANONICAL = {"::ffff:127.0.0.1": "127.0.0.1", "64:ff9b::a9fe:a9fe": "169.254.169.254"}
PUBLIC = ["8.8.8.8", "93.184.215.14", "2606:4700:4700::1111"]


def _url(ip: str, path: str = "/hook") -> str:
    host = f"[{ip}]" if ":" in ip else ip
    return f"https://{host}{path}"


@pytest.mark.parametrize("ip,words", [*ALWAYS_REFUSED.items(), *PRIVATE.items()])
def test_literal_ip_refused_at_check_time(ip, words):
    with pytest.raises(DestinationRefused, match=re.escape(words)) as info:
        check_url(_url(ip), allow_http=False, allow_private=False)
    assert str(info.value).endswith(f"address {CANONICAL.get(ip, ip)}")


@pytest.mark.parametrize("ip,words", [*ALWAYS_REFUSED.items(), *PRIVATE.items()])
async def test_resolved_address_refused(ip, words):
    parsed = check_url("https://hooks.example.com/x", allow_http=False, allow_private=False)
    resolver = fixed_resolver({"hooks.example.com": [ip]})
    with pytest.raises(DestinationRefused, match=f"^resolves to an? .*{re.escape(words)}"):
        await resolve_and_vet(parsed, allow_private=False, resolver=resolver)


@pytest.mark.parametrize("ip", list(ALWAYS_REFUSED))
async def test_allow_private_never_opens_platform_and_link_local(ip):
    with pytest.raises(DestinationRefused):
        check_url(_url(ip), allow_http=False, allow_private=True)
    parsed = check_url("https://h.example/", allow_http=False, allow_private=True)
    with pytest.raises(DestinationRefused):
        await resolve_and_vet(parsed, allow_private=True, resolver=fixed_resolver({"h.example": [ip]}))


@pytest.mark.parametrize("ip", list(PRIVATE))
async def test_allow_private_permits_loopback_and_private(ip):
    parsed = check_url(_url(ip), allow_http=False, allow_private=True)
    assert await resolve_and_vet(parsed, allow_private=True) == [ipaddress.ip_address(CANONICAL.get(ip, ip))]


@pytest.mark.parametrize("ip", PUBLIC)
async def test_public_addresses_pass(ip):
    assert check_url(_url(ip), allow_http=False, allow_private=False).ip == ipaddress.ip_address(ip)
    parsed = check_url("https://h.example/", allow_http=False, allow_private=False)
    got = await resolve_and_vet(parsed, allow_private=False, resolver=fixed_resolver({"h.example": [ip, ip]}))
    assert got == [ipaddress.ip_address(ip)]  # duplicates dropped


async def test_one_bad_address_among_good_ones_refuses_the_destination():
    parsed = check_url("https://h.example/", allow_http=False, allow_private=False)
    resolver = fixed_resolver({"h.example": ["8.8.8.8", "10.0.0.5", "8.8.4.4"]})
    with pytest.raises(DestinationRefused, match=r"private address 10\.0\.0\.5"):
        await resolve_and_vet(parsed, allow_private=False, resolver=resolver)


async def test_mapped_public_address_is_canonicalised():
    parsed = check_url("https://h.example/", allow_http=False, allow_private=False)
    got = await resolve_and_vet(parsed, allow_private=False, resolver=fixed_resolver({"h.example": ["::ffff:8.8.8.8"]}))
    assert got == [ipaddress.ip_address("8.8.8.8")]


async def test_empty_or_garbage_resolution():
    parsed = check_url("https://h.example/", allow_http=False, allow_private=False)
    with pytest.raises(ResolutionFailed):
        await resolve_and_vet(parsed, allow_private=False, resolver=fixed_resolver({"h.example": []}))
    with pytest.raises(DestinationRefused):
        await resolve_and_vet(parsed, allow_private=False, resolver=fixed_resolver({"h.example": ["nope"]}))


async def test_system_resolver_vets_localhost_through_real_lookup():
    parsed = check_url("https://localhost/", allow_http=False, allow_private=True)
    with pytest.raises(DestinationRefused, match="loopback"):
        await resolve_and_vet(parsed, allow_private=False)
    assert all(ip.is_loopback for ip in await resolve_and_vet(parsed, allow_private=True))
    with pytest.raises(ResolutionFailed):
        await system_resolver("no-such-host.invalid", 443)


def test_https_required_unless_allow_http():
    with pytest.raises(DestinationRefused, match="https is required"):
        check_url("http://hooks.example.com/", allow_http=False, allow_private=False)
    assert check_url("http://hooks.example.com/", allow_http=True, allow_private=False).port == 80


@pytest.mark.parametrize(
    "url,words",
    [
        ("ftp://hooks.example.com/", "scheme"),
        ("file:///etc/passwd", "scheme"),
        ("https://user:pw@hooks.example.com/", "userinfo"),
        ("https://user@hooks.example.com/", "userinfo"),
        ("https://hooks.example.com:99999/", "port"),
        ("https:///nohost", "host"),
        ("https://2130706433/", "numeric"),
        ("https://0x7f.1/", "numeric"),
        ("https://0177.0.0.1/", "numeric|not a valid URL"),
        ("https://localhost:8080/", "loopback name"),
        ("https://api.localhost/", "loopback name"),
        ("not a url at all", "scheme|not a valid URL"),
    ],
)
def test_bad_urls_refused(url, words):
    with pytest.raises(DestinationRefused, match=words):
        check_url(url, allow_http=True, allow_private=False)


def test_idna_brackets_and_case_are_canonicalised():
    parsed = check_url("https://BÜCHER.Example:8443/p?q=1", allow_http=False, allow_private=False)
    assert (parsed.host, parsed.port, parsed.ip) == ("xn--bcher-kva.example", 8443, None)
    assert parsed.url == "https://xn--bcher-kva.example:8443/p?q=1"
    v6 = check_url("https://[2606:4700:4700::1111]/", allow_http=False, allow_private=False)
    assert v6.host == "2606:4700:4700::1111" and v6.port == 443
