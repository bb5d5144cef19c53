from __future__ import annotations

import asyncio
import json
import socket
import time

import httpx
import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from local.webhook_receiver import WebhookReceiver
from shared.webhooks import Attempt, WebhookSender, check_url, parse_retry_after, resolve_and_vet

from .conftest import fixed_resolver, make_secret
from .tls import make_tls

BODY = b'{"type":"run.completed","timestamp":"2030-01-01T00:00:00.000Z","data":{"id":"run_1"}}'


@pytest.fixture
async def sender(secrets_pair):
    s = WebhookSender(secrets_pair, timeout=2.0, allow_http=True, allow_private=True)
    yield s
    await s.aclose()


def url(receiver, path: str, host: str = "127.0.0.1") -> str:
    return f"http://{host}:{receiver.port}{path}"


async def test_success_delivers_signed_json_that_each_rotation_secret_verifies(sender, receiver, secrets_pair):
    attempt = await sender.send(url(receiver, "/hook?status=204"), "msg_run1", BODY)
    assert attempt.ok and attempt.status_code == 204 and attempt.error is None and not attempt.refused
    [seen] = receiver.requests
    assert seen.body == BODY
    assert seen.headers["Content-Type"] == "application/json"
    assert seen.headers["webhook-id"] == "msg_run1"
    assert seen.headers["User-Agent"].startswith("background-responses-webhooks/")
    for secret in secrets_pair:
        assert Webhook(secret).verify(seen.body, seen.headers) == json.loads(BODY)
    with pytest.raises(WebhookVerificationError):
        Webhook(make_secret()).verify(seen.body, seen.headers)


async def test_retries_keep_the_id_and_are_signed_afresh(sender, receiver):
    await sender.send(url(receiver, "/hook?status=500"), "msg_same", BODY)
    await sender.send(url(receiver, "/hook?status=500"), "msg_same", BODY)
    ids = [r.headers["webhook-id"] for r in receiver.requests]
    assert ids == ["msg_same", "msg_same"]


async def test_attempt_record_is_json_serialisable(sender, receiver):
    attempt = await sender.send(url(receiver, "/hook?status=200"), "msg_1", BODY)
    data = json.loads(json.dumps(attempt.to_dict()))
    assert set(data) == {"at", "ok", "status_code", "error", "duration_ms", "retry_after_seconds", "gone", "refused"}
    assert data["at"].endswith("Z") and isinstance(data["duration_ms"], int)
    assert Attempt.from_dict(data) == attempt


async def test_server_error_is_a_failed_attempt(sender, receiver):
    attempt = await sender.send(url(receiver, "/hook?status=500"), "msg_1", BODY)
    assert (attempt.ok, attempt.status_code, attempt.gone, attempt.error) == (False, 500, False, "HTTP 500")


async def test_410_means_gone(sender, receiver):
    attempt = await sender.send(url(receiver, "/hook?status=410"), "msg_1", BODY)
    assert not attempt.ok and attempt.status_code == 410 and attempt.gone


async def test_redirect_is_a_failure_and_not_followed(sender, receiver):
    attempt = await sender.send(url(receiver, "/redirect?redirect=/target"), "msg_1", BODY)
    assert not attempt.ok and attempt.status_code == 302 and "redirect" in attempt.error
    assert receiver.paths() == ["/redirect"]  # /target never requested


async def test_retry_after_seconds_and_http_date(sender, receiver):
    throttled = await sender.send(url(receiver, "/throttle?status=429&retry_after=7"), "msg_1", BODY)
    assert throttled.status_code == 429 and throttled.retry_after_seconds == 7.0
    unavailable = await sender.send(url(receiver, "/unavailable?status=503&retry_after_in=120"), "msg_1", BODY)
    assert unavailable.status_code == 503 and 100 <= unavailable.retry_after_seconds <= 121


def test_parse_retry_after_edge_cases():
    assert parse_retry_after("0") == 0.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # past date
    assert parse_retry_after("-5") is None and parse_retry_after("soon") is None and parse_retry_after(None) is None


async def test_receiver_that_never_answers_times_out_near_the_timeout(secrets_pair, receiver):
    async with WebhookSender(secrets_pair, timeout=0.5, allow_http=True, allow_private=True) as sender:
        started = time.monotonic()
        attempt = await sender.send(url(receiver, "/hang?hang=30"), "msg_1", BODY)
        elapsed = time.monotonic() - started
    assert not attempt.ok and attempt.status_code is None and "timed out" in attempt.error
    assert 450 <= attempt.duration_ms <= 1500 and elapsed < 1.5


async def test_connection_refused_is_returned_not_raised(sender):
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    attempt = await sender.send(f"http://127.0.0.1:{port}/x", "msg_1", BODY)
    assert not attempt.ok and attempt.status_code is None and not attempt.refused
    assert attempt.error.startswith("ConnectError")


async def test_private_destination_refused_at_delivery_without_sending(secrets_pair, receiver):
    async with WebhookSender(secrets_pair, timeout=2, allow_http=True, allow_private=False) as sender:
        attempt = await sender.send(url(receiver, "/hook?status=204"), "msg_1", BODY)
        https_only = await WebhookSender(secrets_pair, allow_private=True).send(url(receiver, "/x"), "msg_1", BODY)
    assert attempt.refused and not attempt.ok and "loopback address 127.0.0.1" in attempt.error
    assert https_only.refused and "https is required" in https_only.error
    assert receiver.requests == []


async def test_dns_rebinding_after_subscription_check_is_refused_at_delivery(secrets_pair, receiver):
    answers = iter([["93.184.215.14"], ["127.0.0.1"]])  # public when checked, loopback when sending

    async def rebinding(host, port):
        return next(answers)

    target = f"http://rebind.example:{receiver.port}/hook?status=204"
    parsed = check_url(target, allow_http=True, allow_private=False)
    assert [str(ip) for ip in await resolve_and_vet(parsed, allow_private=False, resolver=rebinding)] == [
        "93.184.215.14"
    ]
    async with WebhookSender(secrets_pair, timeout=2, allow_http=True, resolver=rebinding) as sender:
        attempt = await sender.send(target, "msg_1", BODY)
    assert attempt.refused and "resolves to a loopback address 127.0.0.1" in attempt.error
    assert receiver.requests == []


async def test_connection_goes_to_the_vetted_address_with_original_host(secrets_pair, receiver):
    calls: list[str] = []
    resolver = fixed_resolver({"hooks.invalid": ["127.0.0.1"]}, calls)  # not resolvable by real DNS
    async with WebhookSender(secrets_pair, timeout=2, allow_http=True, allow_private=True, resolver=resolver) as sender:
        first = await sender.send(f"http://hooks.invalid:{receiver.port}/hook?status=204", "msg_1", BODY)
        second = await sender.send(f"http://HOOKS.invalid:{receiver.port}/hook?status=204", "msg_1", BODY)
    assert first.ok and second.ok
    assert calls == ["hooks.invalid", "hooks.invalid"]  # exactly one resolution per attempt
    assert [r.headers["Host"] for r in receiver.requests] == [f"hooks.invalid:{receiver.port}"] * 2


async def test_client_never_connects_to_an_unvetted_host(sender, receiver):
    with pytest.raises(httpx.ConnectError, match="not vetted"):
        await sender._client.post(url(receiver, "/hook?status=204"), content=b"{}")
    assert receiver.requests == []


async def test_ipv6_literal_loopback_delivery(secrets_pair):
    # receivers bound to ::1 may be unavailable in some sandboxes; skip rather than fail
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    rec = WebhookReceiver(host="::1")
    try:
        await rec.start()
    except OSError:
        pytest.skip("cannot bind ::1")
    try:
        async with WebhookSender(secrets_pair, timeout=2, allow_http=True, allow_private=True) as sender:
            attempt = await sender.send(f"http://[::1]:{rec.port}/hook?status=204", "msg_1", BODY)
        assert attempt.ok, attempt
    finally:
        await rec.stop()


async def test_https_uses_original_hostname_for_sni_and_certificate(secrets_pair):
    server_tls, client_tls, sni_seen = make_tls("hooks.example.test")
    rec = await WebhookReceiver(ssl_context=server_tls).start()
    resolver = fixed_resolver({"hooks.example.test": ["127.0.0.1"], "other.example.test": ["127.0.0.1"]})
    try:
        async with WebhookSender(
            secrets_pair, timeout=3, allow_private=True, resolver=resolver, ssl_context=client_tls
        ) as sender:
            good = await sender.send(f"https://hooks.example.test:{rec.port}/hook?status=204", "msg_1", BODY)
            wrong_name = await sender.send(f"https://other.example.test:{rec.port}/hook?status=204", "msg_1", BODY)
    finally:
        await rec.stop()
    assert good.ok, good
    assert sni_seen[0] == "hooks.example.test"
    assert rec.requests[0].headers["Host"] == f"hooks.example.test:{rec.port}"
    # the certificate is checked against the URL's hostname, not the IP we connected to
    assert not wrong_name.ok and wrong_name.status_code is None and "certificate" in wrong_name.error.lower()
    assert len(rec.requests) == 1


async def test_concurrent_sends_keep_their_own_pinned_addresses(secrets_pair, receiver):
    # good.invalid -> the receiver; bad.invalid -> 127.0.0.2, where nothing listens
    resolver = fixed_resolver({"good.invalid": ["127.0.0.1"], "bad.invalid": ["127.0.0.2"]})
    async with WebhookSender(secrets_pair, timeout=2, allow_http=True, allow_private=True, resolver=resolver) as sender:
        hosts = ["good.invalid", "bad.invalid"] * 5
        attempts = await asyncio.gather(
            *(sender.send(f"http://{h}:{receiver.port}/hook?status=204", "msg_1", BODY) for h in hosts)
        )
    assert [a.ok for a in attempts] == [h == "good.invalid" for h in hosts]
    assert len(receiver.requests) == 5


async def test_proxy_environment_is_ignored(secrets_pair, receiver, monkeypatch):
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")  # a proxy would bypass the vetted connection
    async with WebhookSender(secrets_pair, timeout=2, allow_http=True, allow_private=True) as sender:
        attempt = await sender.send(url(receiver, "/hook?status=204"), "msg_1", BODY)
    assert attempt.ok and len(receiver.requests) == 1
