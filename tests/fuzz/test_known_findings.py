"""The known findings match exactly what they describe and nothing else: a known finding must never hide
another failure on the same route (tests/fuzz/known_findings.py is the filter_failure hook of the fuzz run)."""

from __future__ import annotations

import re
import socket
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

import pytest

from . import known_findings
from .known_findings import Body, KnownFinding, match


# -- the 500s: what each one suspects, and its repair --------------------------------------------------------------
def _unresolvable_webhook_host(body: Body) -> Body | None:
    url = body.get("webhook_url")
    try:
        host = urlsplit(url).hostname if isinstance(url, str) else None
    except ValueError:
        return None
    if not host:
        return None
    try:
        socket.getaddrinfo(host, 443)
        return None
    except (socket.gaierror, UnicodeError):
        # ftp:// is refused (400) before any name is resolved, and nothing is ever sent to it.
        return {"webhook_url": "ftp://webhook.invalid/hook"}


def _unhashable_reasoning_effort(body: Body) -> Body | None:
    reasoning = body.get("reasoning")
    if isinstance(reasoning, dict) and isinstance(reasoning.get("effort"), (list, dict)):
        return {"reasoning": {**reasoning, "effort": "low"}}
    return None


# -- the accepted invalid positions of the stream ------------------------------------------------------------------
def _query_position_ignored_beside_last_event_id(failure: Any, case: Any, response: Any) -> bool:
    headers = {k.lower(): v for k, v in (case.headers or {}).items()}
    try:
        header_is_valid = int(headers.get("last-event-id", "")) >= -1
    except ValueError:
        return False
    message = str(getattr(failure, "message", ""))
    names_query = any(f"parameter `{name}` in query" in message for name in ("starting_after", "continuation_token"))
    return response.status_code == 200 and header_is_valid and names_query


def _position_not_a_plain_integer_accepted(failure: Any, case: Any, response: Any) -> bool:
    """A position that is not a plain integer but that int() parses ("+3", "1_0", " 3", "３"), or an empty query."""  # noqa: RUF002 - the full-width digit is the point
    message = str(getattr(failure, "message", ""))
    headers = {k.lower(): v for k, v in (case.headers or {}).items()}
    if "parameter `Last-Event-ID` in header" in message:
        value = headers.get("last-event-id")
    elif "parameter `starting_after` in query" in message and "last-event-id" not in headers:
        value = (case.query or {}).get("starting_after")
    else:
        return False
    if response.status_code != 200 or not isinstance(value, (str, int)) or isinstance(value, bool):
        return False
    text = str(value)
    if text == "":
        return True
    try:
        int(text)
    except ValueError:
        return False
    return not re.fullmatch(r"-?[0-9]+", text)


EXAMPLES = [
    KnownFinding(
        id="webhook-host-unresolvable-500",
        operation="POST /runs",
        codes=("ST101", "ST103"),  # not_a_server_error, status_code_conformance (an undocumented 500)
        sent='a new run whose webhook_url host does not resolve: {"input": "x", "webhook_url": "https://0.com"}',
        expected='400 {"error": {"code": "invalid_webhook_url", "param": "webhook_url", ...}} naming the host',
        actual='500 internal_error: ResolutionFailed "0.com does not resolve" escapes RunService._vet_webhook, which '
        "catches only DestinationRefused (shared/service.py; issue 12, defect 5)",
        reproduce="curl -s -X POST $API/runs -H 'x-functions-key: $KEY' -H 'content-type: application/json' "
        '-d \'{"input": "x", "webhook_url": "https://0.com"}\'  (schemathesis: POST /runs, checks '
        "not_a_server_error and status_code_conformance; every seed tried, e.g. `--seed 1`)",
        suspect=_unresolvable_webhook_host,
    ),
    KnownFinding(
        id="reasoning-effort-not-a-string-500",
        operation="POST /runs",
        codes=("ST101", "ST103"),
        sent='a new run whose reasoning.effort is a list or an object: {"input": "x", "reasoning": {"effort": []}}',
        expected='400 {"error": {"code": "invalid_request", "param": "reasoning.effort", ...}}',
        actual="500 internal_error: TypeError \"unhashable type: 'list'\" from `effort not in REASONING_EFFORTS`, a "
        "set membership test on an unhashable value (shared/run_requests.py `_reasoning`)",
        reproduce="curl -s -X POST $API/runs -H 'x-functions-key: $KEY' -H 'content-type: application/json' "
        '-d \'{"input": "x", "reasoning": {"effort": []}}\'  (schemathesis: POST /runs, checks '
        "not_a_server_error and status_code_conformance; coverage phase, seeds 1 and 4-7)",
        suspect=_unhashable_reasoning_effort,
    ),
    KnownFinding(
        id="stream-invalid-query-position-accepted",
        operation="GET /runs/{run_id}/stream",
        codes=("ST201",),  # negative_data_rejection
        sent="a valid Last-Event-ID header with an invalid position in the query: "
        "GET /runs/{id}/stream?starting_after=-2 with Last-Event-ID: -1 (likewise a malformed continuation_token)",
        expected="400 naming starting_after (or continuation_token): bad input gets a 4xx, whatever else is sent",
        actual="200 and the stream from the header's position: the service reads the query only when the header "
        "is absent, so it never validates it (shared/streaming.py `_position`)",
        reproduce="curl -s -N $API/runs/$RUN_ID/stream?starting_after=-2 -H 'Last-Event-ID: -1' "
        "-H 'x-functions-key: $KEY'  (schemathesis: GET /runs/{run_id}/stream, check "
        "negative_data_rejection; `--seed 1`)",
        matches=_query_position_ignored_beside_last_event_id,
    ),
    KnownFinding(
        id="stream-position-parsed-leniently",
        operation="GET /runs/{run_id}/stream",
        codes=("ST201",),
        sent='a position that is not a plain integer: Last-Event-ID: +3 (or 1_0, " 3", a non-ASCII digit), '
        "or ?starting_after= with an empty value",
        expected="400 naming Last-Event-ID (or starting_after): a sequence number is -1 or ASCII digits",
        actual="200 and the stream after int(value) (after 3, after 10, ...); an empty starting_after counts as "
        "absent (shared/streaming.py `_sequence_number` uses int(), which accepts signs, underscores, "
        "spaces and any Unicode digit). Found reading the fuzz results and reproduced by hand; a fuzz run "
        "meets it when it generates such a value",
        reproduce="curl -s -N $API/runs/$RUN_ID/stream -H 'Last-Event-ID: +3' -H 'x-functions-key: $KEY'  "
        "(schemathesis: GET /runs/{run_id}/stream, check negative_data_rejection)",
        matches=_position_not_a_plain_integer_accepted,
    ),
]


@pytest.fixture(autouse=True)
def examples(monkeypatch):
    """The findings the first fuzz runs made (all fixed since), as the filter's known findings."""
    monkeypatch.setattr(known_findings, "KNOWN_FINDINGS", EXAMPLES)


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
        "webhook-host-unresolvable-500"
    ]
    assert resent.bodies == [{"input": "x", "webhook_url": "ftp://webhook.invalid/hook"}]  # refused before DNS


def test_a_500_for_a_reasoning_effort_that_is_not_a_string_is_known(resent):
    body = {"input": "x", "reasoning": {"effort": ["low"], "summary": "auto"}}
    assert ids("ST101", case("POST /runs", body=body), 500) == ["reasoning-effort-not-a-string-500"]
    assert resent.bodies == [{"input": "x", "reasoning": {"effort": "low", "summary": "auto"}}]


def test_a_500_with_both_known_causes_is_known_when_repairing_both_ends_it(resent):
    body = {"input": "x", "webhook_url": UNRESOLVABLE, "reasoning": {"effort": {}}}
    assert ids("ST101", case("POST /runs", body=body), 500) == [
        "webhook-host-unresolvable-500",
        "reasoning-effort-not-a-string-500",
    ]


def test_a_500_with_a_suspect_but_another_cause_is_new(resent):
    resent.answer = lambda body: 500  # still a 500 with every suspect repaired: something else broke
    assert ids("ST101", case("POST /runs", body={"input": "x", "webhook_url": UNRESOLVABLE}), 500) == []
    assert ids("ST101", case("POST /runs", body={"input": "x", "reasoning": {"effort": []}}), 500) == []


@pytest.mark.parametrize(
    "body",
    [
        {"input": "x"},  # no suspect at all
        {"input": "x", "reasoning": {"effort": "low"}},
        {"input": "x", "webhook_url": "https://127.0.0.1/hook"},  # resolves (an IP literal)
        {"input": "x", "webhook_url": "not a url"},  # no host at all
        ["not", "an", "object"],
    ],
)
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
