from __future__ import annotations

import datetime as dt
import time

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from shared.webhooks import SignatureError, new_webhook_id, sign_headers, verify

from .conftest import make_secret

BODY = b'{"type":"run.completed","data":{"id":"run_1","text":"h\xc3\xa9"}}'


def test_each_rotation_secret_verifies_and_a_third_does_not(secrets_pair):
    headers = sign_headers("msg_abc", BODY, secrets_pair)
    assert len(headers["webhook-signature"].split(" ")) == 2
    for secret in secrets_pair:
        Webhook(secret).verify(BODY, headers)  # the official verifier, one secret at a time
    with pytest.raises(WebhookVerificationError):
        Webhook(make_secret()).verify(BODY, headers)


def test_headers_carry_the_callers_id_and_a_current_utc_timestamp(secrets_pair):
    headers = sign_headers("msg_stable", BODY, secrets_pair)
    assert headers["webhook-id"] == "msg_stable"
    assert abs(int(headers["webhook-timestamp"]) - time.time()) <= 2


def test_non_utc_aware_timestamp_is_converted_not_mislabelled(secrets_pair):
    utc = dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    plus_two = utc.astimezone(dt.timezone(dt.timedelta(hours=2)))
    assert sign_headers("msg_x", BODY, secrets_pair, timestamp=plus_two) == sign_headers(
        "msg_x", BODY, secrets_pair, timestamp=utc
    )
    assert sign_headers("msg_x", BODY, secrets_pair, timestamp=utc)["webhook-timestamp"] == str(int(utc.timestamp()))


def test_verify_helper_accepts_any_secret_and_rejects_tampering(secrets_pair):
    headers = sign_headers("msg_abc", BODY, secrets_pair)
    verify(headers, BODY, [make_secret(), secrets_pair[1]])
    with pytest.raises(SignatureError):
        verify(headers, BODY + b" ", secrets_pair)
    with pytest.raises(SignatureError):
        verify(headers, BODY, [make_secret()])


def test_verify_normalises_malformed_signature_and_old_timestamp(secrets_pair):
    headers = sign_headers("msg_abc", BODY, secrets_pair)
    with pytest.raises(SignatureError):  # the library raises a bare ValueError for this one
        verify({**headers, "webhook-signature": "garbage-without-comma"}, BODY, secrets_pair)
    old = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=10)
    with pytest.raises(SignatureError, match="too old"):
        verify(sign_headers("msg_abc", BODY, secrets_pair, timestamp=old), BODY, secrets_pair)
    assert issubclass(SignatureError, WebhookVerificationError)


def test_ids_are_unique_and_safe_to_sign():
    ids = {new_webhook_id() for _ in range(200)}
    assert len(ids) == 200
    assert all(i.startswith("msg_") and "." not in i for i in ids)


@pytest.mark.parametrize("bad", ["", "msg.1", "msg 1", "msg\r\nx: y"])
def test_unsafe_ids_are_rejected(bad, secrets_pair):
    with pytest.raises(ValueError, match=r"webhook id must be non-empty and use only \[A-Za-z0-9_-\]"):
        sign_headers(bad, BODY, secrets_pair)


def test_no_secret_is_an_error():
    with pytest.raises(ValueError, match="at least one signing secret is required"):
        sign_headers("msg_1", BODY, [])
