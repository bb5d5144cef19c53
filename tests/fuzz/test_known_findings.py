"""The known findings match exactly what they describe and nothing else: a known finding must never hide
another failure on the same route (tests/fuzz/known_findings.py is the filter_failure hook of the fuzz run)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from . import known_findings
from .known_findings import match

STREAM = "GET /runs/{run_id}/stream"
NEGATIVE_QUERY = "Invalid component: parameter `starting_after` in query - starting_after: Value smaller than minimum"
NEGATIVE_HEADER = "Invalid component: parameter `Last-Event-ID` in header - does not match pattern"
UNRESOLVABLE = "https://0.com"


def case(label: str, *, body=None, headers=None, query=None):
    return SimpleNamespace(operation=SimpleNamespace(label=label), body=body, headers=headers, query=query)


def failure(code: str, message: str = ""):
    return SimpleNamespace(code=code, title="t", message=message)


def ids(code: str, request, status: int, message: str = "") -> list[str]:
    return [finding.id for finding in match(failure(code, message), request, SimpleNamespace(status_code=status))]


def service(body: dict) -> int:
    """What the service answers a body sent again: 500 for each of the two known causes, else 202."""
    effort = (body.get("reasoning") or {}).get("effort")
    return 500 if isinstance(effort, (list, dict)) or body.get("webhook_url") == UNRESOLVABLE else 202


@pytest.fixture
def resent(monkeypatch):
    """The bodies the hook sends again, answered by `answer` (default: the `service` above)."""
    sent: list[dict] = []
    state = SimpleNamespace(bodies=sent, answer=service)

    def status_of(response, body):
        sent.append(body)
        return state.answer(body)

    monkeypatch.setattr(known_findings, "_status_of", status_of)
    return state


@pytest.mark.parametrize("code", ["ST101", "ST103"])
def test_a_500_for_an_unresolvable_webhook_host_is_known(code, resent):
    assert ids(code, case("POST /runs", body={"input": "x", "webhook_url": UNRESOLVABLE}), 500) == [
        "webhook-host-unresolvable-500"]
    assert resent.bodies == [{"input": "x", "webhook_url": "ftp://webhook.invalid/hook"}]  # refused before DNS


def test_a_500_for_a_reasoning_effort_that_is_not_a_string_is_known(resent):
    body = {"input": "x", "reasoning": {"effort": ["low"], "summary": "auto"}}
    assert ids("ST101", case("POST /runs", body=body), 500) == ["reasoning-effort-not-a-string-500"]
    assert resent.bodies == [{"input": "x", "reasoning": {"effort": "low", "summary": "auto"}}]


def test_a_500_with_both_known_causes_is_known_when_repairing_both_ends_it(resent):
    body = {"input": "x", "webhook_url": UNRESOLVABLE, "reasoning": {"effort": {}}}
    assert ids("ST101", case("POST /runs", body=body), 500) == ["webhook-host-unresolvable-500",
                                                                "reasoning-effort-not-a-string-500"]


def test_a_500_with_a_suspect_but_another_cause_is_new(resent):
    resent.answer = lambda body: 500  # still a 500 with every suspect repaired: something else broke
    assert ids("ST101", case("POST /runs", body={"input": "x", "webhook_url": UNRESOLVABLE}), 500) == []
    assert ids("ST101", case("POST /runs", body={"input": "x", "reasoning": {"effort": []}}), 500) == []


@pytest.mark.parametrize("body", [
    {"input": "x"},                                            # no suspect at all
    {"input": "x", "reasoning": {"effort": "low"}},
    {"input": "x", "webhook_url": "https://127.0.0.1/hook"},   # resolves (an IP literal)
    {"input": "x", "webhook_url": "not a url"},                # no host at all
    ["not", "an", "object"],
])
def test_other_500s_of_post_runs_are_new(body, resent):
    assert ids("ST101", case("POST /runs", body=body), 500) == []
    assert resent.bodies == []


def test_a_suspect_body_is_not_known_for_another_status_or_route(resent):
    body = {"input": "x", "webhook_url": UNRESOLVABLE}
    assert ids("ST103", case("POST /runs", body=body), 502) == []
    assert ids("ST101", case("POST /sessions", body=body), 500) == []


def test_an_invalid_query_position_beside_a_valid_last_event_id_is_known():
    request = case(STREAM, headers={"Last-Event-ID": "-1"}, query={"starting_after": -2})
    assert ids("ST201", request, 200, NEGATIVE_QUERY) == ["stream-invalid-query-position-accepted"]


def test_an_invalid_query_position_accepted_without_the_header_is_new():
    assert ids("ST201", case(STREAM, query={"starting_after": -2}), 200, NEGATIVE_QUERY) == []


@pytest.mark.parametrize("value", ["+3", "1_0", "\uff13"])
def test_a_leniently_parsed_last_event_id_is_known(value):
    request = case(STREAM, headers={"Last-Event-ID": value})
    assert ids("ST201", request, 200, NEGATIVE_HEADER) == ["stream-position-parsed-leniently"]


@pytest.mark.parametrize("value", ["-2", "abc", "3.5"])
def test_other_accepted_last_event_ids_are_new(value):
    assert ids("ST201", case(STREAM, headers={"Last-Event-ID": value}), 200, NEGATIVE_HEADER) == []
