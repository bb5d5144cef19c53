"""Retry-After from providers and receivers: what is usable is used, anything else is ignored."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import openai
import pytest

from shared.provider import classify
from shared.retry_after import parse_retry_after, retry_after_from_headers


@pytest.mark.parametrize(
    "value,seconds",
    [
        ("7", 7.0),
        ("0", 0.0),
        ("Wed, 21 Oct 2015 07:28:30 GMT", 0.0),
        ("Wed, 21 Oct 2015 07:29:00 GMT", 30.0),
        ("999999999", 86400.0),
    ],
)
def test_usable_values(value, seconds):
    assert parse_retry_after(value, now=datetime(2015, 10, 21, 7, 28, 30, tzinfo=UTC)) == seconds


@pytest.mark.parametrize("value", ["soon", "120s", "-5", "1.5", "", None, "Wed, 99 Foo", "\x00"])
def test_unusable_values_are_ignored(value):
    assert parse_retry_after(value) is None


def test_retry_after_ms_wins_when_valid_and_is_ignored_when_not():
    assert retry_after_from_headers({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert retry_after_from_headers({"retry-after-ms": "nan", "retry-after": "9"}) == 9.0
    assert retry_after_from_headers({"retry-after-ms": "later", "retry-after": "soon"}) is None


@pytest.mark.parametrize("header", ["soon", "120s"])
def test_a_malformed_provider_retry_after_does_not_break_error_handling(header):
    # The defect: parsing "soon" raised inside error handling, so starts answered 500 and polls went to poison.
    response = httpx.Response(
        429, headers={"retry-after": header}, request=httpx.Request("POST", "http://provider/v1/responses")
    )
    error = openai.RateLimitError("slow down", response=response, body={"message": "slow down"})
    failure = classify(error)
    assert failure.transient and failure.status == 429 and failure.retry_after is None
