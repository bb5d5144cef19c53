"""The known findings of `make fuzz`: defects of the SERVICE that schemathesis found, owned by issue 12.

Each entry says what was sent, what the service should answer and what it answers, with a reproduction. This
file is a schemathesis hooks module (tests/fuzz/run.py loads it through SCHEMATHESIS_HOOKS): its
`filter_failure` hook drops a failure only when the request and the response match a known finding exactly
(the route, the check and the cause, not just the status code), so any other failure on the same route still
fails the run. Every match is written to the file named by FUZZ_KNOWN_LOG, and the run prints it as "known,
owned by issue 12". When the owner fixes one, delete its entry: the run then shows whether the fix holds.
"""
from __future__ import annotations

import json
import os
import re
import socket
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import urlsplit

import schemathesis

OWNER = "issue 12"


@dataclass(frozen=True)
class KnownFinding:
    id: str
    operation: str  # schemathesis's label: "POST /runs"
    codes: tuple[str, ...]  # the schemathesis failure codes that report it (ST101 server error, ...)
    sent: str
    expected: str
    actual: str
    reproduce: str
    matches: Callable[[Any, Any, Any], bool]  # (failure, case, response) -> is it this finding?


def _webhook_host_does_not_resolve(failure: Any, case: Any, response: Any) -> bool:
    body = case.body if isinstance(case.body, dict) else {}
    url = body.get("webhook_url")
    if response.status_code != 500 or not isinstance(url, str) or body.get("continuation_token") is not None:
        return False
    try:
        host = urlsplit(url).hostname
    except ValueError:
        return False
    if not host:
        return False
    try:
        socket.getaddrinfo(host, 443)
    except (socket.gaierror, UnicodeError):
        return True
    return False


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
        actual='500 {"error": {"code": "internal_error", "message": "An internal error occurred."}} '
               "(issue 12, defect 5: the resolution error escapes the webhook URL check)",
        reproduce="curl -s -X POST $API/runs -H 'x-functions-key: $KEY' -H 'content-type: application/json' "
                  "-d '{\"input\": \"x\", \"webhook_url\": \"https://0.com\"}'  "
                  "(schemathesis: POST /runs, checks not_a_server_error and status_code_conformance; seen with "
                  "`python -m tests.fuzz.run --seed 1`)",
        matches=_webhook_host_does_not_resolve,
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
                  "negative_data_rejection; seen with `python -m tests.fuzz.run --seed 1`)",
        matches=_query_position_ignored_beside_last_event_id,
    ),
    KnownFinding(
        id="stream-position-parsed-leniently",
        operation="GET /runs/{run_id}/stream",
        codes=("ST201",),  # negative_data_rejection
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


def match(failure: Any, case: Any, response: Any) -> KnownFinding | None:
    for finding in KNOWN_FINDINGS:
        if (case.operation.label == finding.operation and getattr(failure, "code", None) in finding.codes
                and finding.matches(failure, case, response)):
            return finding
    return None


@schemathesis.hook
def filter_failure(context, failure, case, response) -> bool:
    finding = match(failure, case, response)
    if finding is None:
        return True  # not known: it fails the run
    log = os.environ.get("FUZZ_KNOWN_LOG")
    if log:
        with open(log, "a", encoding="utf-8") as out:
            out.write(json.dumps({"id": finding.id, "code": failure.code, "title": failure.title}) + "\n")
    return False
