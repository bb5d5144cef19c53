"""verify_webhook on a real signed delivery from the service (via the local webhook receiver)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time

import pytest
from bgruns import WebhookVerificationError, verify_webhook

from ..stack import WEBHOOK_SECRETS
from .conftest import emulated


async def delivery_of(client, stack, name: str) -> tuple[dict, dict, str]:
    response = await client.run(
        "Notify me.", options={"webhook_url": stack.hook_url(name), "metadata": emulated(300, 60)}
    )
    final = await client.wait(response, timeout=30)
    deadline = time.monotonic() + 20
    while not (received := stack.received(name)):
        assert time.monotonic() < deadline, "no webhook delivery arrived"
        await asyncio.sleep(0.2)
    return final.raw, received[0]["headers"], received[0]["body"]


async def test_verify_webhook_accepts_a_real_delivery_and_rejects_tampering(client, stack):
    run, headers, body = await delivery_of(client, stack, f"client-{time.time_ns()}")
    other_secret = "whsec_" + base64.b64encode(os.urandom(32)).decode()

    event = verify_webhook(headers, body, WEBHOOK_SECRETS)
    assert event["type"] == "run.completed" and event["data"]["id"] == run["id"]
    assert event["data"]["output_text"] == run["output_text"]
    # Several secrets are tried in turn (rotation): a non-matching one first is fine; bytes body, any header case.
    upper = {k.upper(): v for k, v in headers.items()}
    assert verify_webhook(upper, body.encode(), [other_secret, WEBHOOK_SECRETS[1]]) == event
    assert verify_webhook(list(headers.items()), body, " ".join([other_secret, WEBHOOK_SECRETS[0]])) == event

    tampered_body = body.replace(run["id"], run["id"][:-1] + ("0" if run["id"][-1] != "0" else "1"))
    assert tampered_body != body
    cases = {
        "altered body": (headers, tampered_body, WEBHOOK_SECRETS),
        "wrong secret": (headers, body, [other_secret]),
        "missing signature": ({k: v for k, v in headers.items() if k != "webhook-signature"}, body, WEBHOOK_SECRETS),
        "stale timestamp": ({**headers, "webhook-timestamp": str(int(time.time()) - 3600)}, body, WEBHOOK_SECRETS),
        # malformed signatures make the library raise ValueError/binascii.Error: still our one exception
        "signature without comma": ({**headers, "webhook-signature": "v1garbage"}, body, WEBHOOK_SECRETS),
        "signature not base64": ({**headers, "webhook-signature": "v1,@@not-base64@@"}, body, WEBHOOK_SECRETS),
        "signature with two commas": ({**headers, "webhook-signature": "v1,a,b"}, body, WEBHOOK_SECRETS),
        "body not UTF-8": (headers, b"\xff\xfe", WEBHOOK_SECRETS),
    }
    accepted = []
    for name, (case_headers, case_body, secrets) in cases.items():
        try:
            verify_webhook(case_headers, case_body, secrets)
        except WebhookVerificationError:
            continue
        accepted.append(name)
    assert accepted == []
    with pytest.raises(ValueError, match="unusable webhook secret"):  # a configuration error, not a bad delivery
        verify_webhook(headers, body, ["whsec_!!!"])
    with pytest.raises(ValueError, match="no webhook secret given"):
        verify_webhook(headers, body, [])
    assert json.loads(body)["data"]["id"] == run["id"]
