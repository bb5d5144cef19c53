"""The known findings match exactly what they describe and nothing else: a known finding must never hide
another failure on the same route (tests/fuzz/known_findings.py is the filter_failure hook of the fuzz run)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from .known_findings import match


def case(label: str, *, body=None, headers=None, query=None):
    return SimpleNamespace(operation=SimpleNamespace(label=label), body=body, headers=headers, query=query)


def failure(code: str, message: str = ""):
    return SimpleNamespace(code=code, title="t", message=message)


def status(code: int):
    return SimpleNamespace(status_code=code)


STREAM = "GET /runs/{run_id}/stream"
NEGATIVE_QUERY = "Invalid component: parameter `starting_after` in query - starting_after: Value smaller than minimum"
NEGATIVE_HEADER = "Invalid component: parameter `Last-Event-ID` in header - does not match pattern"


@pytest.mark.parametrize("code", ["ST101", "ST103"])
def test_a_500_for_an_unresolvable_webhook_host_is_known(code):
    found = match(failure(code), case("POST /runs", body={"input": "x", "webhook_url": "https://0.com"}), status(500))
    assert found is not None and found.id == "webhook-host-unresolvable-500"


@pytest.mark.parametrize("body", [
    {"input": "x"},                                            # no webhook: another cause
    {"input": "x", "webhook_url": "https://127.0.0.1/hook"},   # resolves (an IP literal)
    {"input": "x", "webhook_url": "not a url"},                # no host at all
    ["not", "an", "object"],
])
def test_other_500s_of_post_runs_are_not_known(body):
    assert match(failure("ST101"), case("POST /runs", body=body), status(500)) is None


def test_the_same_body_is_not_known_for_another_status_or_route():
    body = {"input": "x", "webhook_url": "https://0.com"}
    assert match(failure("ST103"), case("POST /runs", body=body), status(502)) is None
    assert match(failure("ST101"), case("POST /sessions", body=body), status(500)) is None


def test_an_invalid_query_position_beside_a_valid_last_event_id_is_known():
    found = match(failure("ST201", NEGATIVE_QUERY), case(STREAM, headers={"Last-Event-ID": "-1"},
                                                         query={"starting_after": -2}), status(200))
    assert found is not None and found.id == "stream-invalid-query-position-accepted"


def test_an_invalid_query_position_alone_accepted_is_not_known():
    assert match(failure("ST201", NEGATIVE_QUERY), case(STREAM, query={"starting_after": -2}), status(200)) is None


@pytest.mark.parametrize("value", ["+3", "1_0", "\uff13"])
def test_a_leniently_parsed_last_event_id_is_known(value):
    found = match(failure("ST201", NEGATIVE_HEADER), case(STREAM, headers={"Last-Event-ID": value}), status(200))
    assert found is not None and found.id == "stream-position-parsed-leniently"


@pytest.mark.parametrize("value", ["-2", "abc", "3.5"])
def test_other_accepted_last_event_ids_are_not_known(value):
    assert match(failure("ST201", NEGATIVE_HEADER), case(STREAM, headers={"Last-Event-ID": value}), status(200)) is None
