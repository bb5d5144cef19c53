"""The known findings of `make fuzz`: defects of the SERVICE that schemathesis found, owned by issue 12.

Each entry says what was sent, what the service should answer and what it answers, with a reproduction. This
module is loaded as schemathesis hooks (tests/fuzz/run.py sets SCHEMATHESIS_HOOKS): its `filter_failure` hook
drops a failure only when it is a known finding (the route, the check and the cause, not just the status code),
so any other failure, even on the same route, still fails the run. Every match is written to the file named by
FUZZ_KNOWN_LOG, and the run prints it as "known, owned by issue 12". When the owner fixes one, delete its
entry: the run then shows whether the fix holds.

Two kinds of entries:
- `matches`: the request and the response say it all (a stream accepted with an invalid position);
- `suspect`: a 500, whose body ("internal_error") says nothing about its cause. The entry names the input it
  suspects and how to repair it; the hook sends the same request again with every suspect repaired, and the
  500 is known only if that request is not a 500. Each suspect is then tried alone, to name the cause.
"""
from __future__ import annotations

import json
import os
import re
import socket
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import urlsplit

import requests
import schemathesis

OWNER = "issue 12"

Body = dict[str, Any]


@dataclass(frozen=True)
class KnownFinding:
    id: str
    operation: str  # schemathesis's label: "POST /runs"
    codes: tuple[str, ...]  # the schemathesis failure codes that report it (ST101 server error, ...)
    sent: str
    expected: str
    actual: str
    reproduce: str
    matches: Callable[[Any, Any, Any], bool] | None = None  # (failure, case, response) -> is it this finding?
    suspect: Callable[[Body], Body | None] | None = None  # a 500's body -> the fields that repair it, or None


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
    """A position that is not a plain integer but that int() parses ("+3", "1_0", " 3", "３"), or an empty query."""
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


KNOWN_FINDINGS = [
    KnownFinding(
        id="webhook-host-unresolvable-500",
        operation="POST /runs",
        codes=("ST101", "ST103"),  # not_a_server_error, status_code_conformance (an undocumented 500)
        sent='a new run whose webhook_url host does not resolve: {"input": "x", "webhook_url": "https://0.com"}',
        expected='400 {"error": {"code": "invalid_webhook_url", "param": "webhook_url", ...}} naming the host',
        actual='500 internal_error: ResolutionFailed "0.com does not resolve" escapes RunService._vet_webhook, which '
               "catches only DestinationRefused (shared/service.py; issue 12, defect 5)",
        reproduce="curl -s -X POST $API/runs -H 'x-functions-key: $KEY' -H 'content-type: application/json' "
                  "-d '{\"input\": \"x\", \"webhook_url\": \"https://0.com\"}'  (schemathesis: POST /runs, checks "
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
                  "-d '{\"input\": \"x\", \"reasoning\": {\"effort\": []}}'  (schemathesis: POST /runs, checks "
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


def _status_of(response: Any, body: Body) -> int:
    """Send the request that got `response` again with another JSON body; its status code."""
    sent = response.request
    headers = {k: v for k, v in sent.headers.items() if k.lower() != "content-length"}
    return requests.request(sent.method, sent.url, headers=headers, json=body, timeout=30).status_code


def _explained_500(suspects: list[tuple[KnownFinding, Body]], body: Body, response: Any) -> list[KnownFinding]:
    """The suspects that explain a 500: none if it stays a 500 with all of them repaired."""
    repaired = {field: value for _, repair in suspects for field, value in repair.items()}
    if _status_of(response, {**body, **repaired}) == 500:
        return []  # another cause: a new finding
    for finding, repair in suspects:
        if len(suspects) > 1 and _status_of(response, {**body, **repair}) != 500:
            return [finding]  # this one alone was the cause
    return [finding for finding, _ in suspects]


def match(failure: Any, case: Any, response: Any) -> list[KnownFinding]:
    """The known findings that explain this failure ([] when it is new)."""
    candidates = [f for f in KNOWN_FINDINGS
                  if f.operation == case.operation.label and getattr(failure, "code", None) in f.codes]
    for finding in candidates:
        if finding.matches is not None and finding.matches(failure, case, response):
            return [finding]
    body = case.body if isinstance(case.body, dict) else {}
    suspects = [(f, repair) for f in candidates if f.suspect is not None and (repair := f.suspect(body))]
    if response.status_code != 500 or not suspects:
        return []
    return _explained_500(suspects, body, response)


@schemathesis.hook
def filter_failure(context, failure, case, response) -> bool:
    findings = match(failure, case, response)
    log = os.environ.get("FUZZ_KNOWN_LOG")
    if findings and log:
        with open(log, "a", encoding="utf-8") as out:
            for finding in findings:
                out.write(json.dumps({"id": finding.id, "code": failure.code, "title": failure.title}) + "\n")
    return not findings  # a known finding is dropped; anything else fails the run
