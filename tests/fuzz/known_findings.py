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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

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


# None at the moment. The four that the first runs found (issue 12: an unresolvable webhook host and a reasoning
# effort that is not a string answered 500; an invalid position in the stream URL was ignored beside a
# Last-Event-ID; positions were parsed leniently, "+3" and "1_0" included) are fixed, each with a test that failed
# before its fix (tests/unit, tests/service/test_hardening.py); tests/fuzz/test_known_findings.py keeps them as
# the examples that show the filter matches exactly what it describes. The one a keyed run found for issue 21
# (`GET /runs?status=`, empty, was accepted although the document says enum) is fixed too: a parameter sent empty
# is judged as sent (tests/service/test_list_runs.py).
KNOWN_FINDINGS: list[KnownFinding] = []


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
    candidates = [
        f for f in KNOWN_FINDINGS if f.operation == case.operation.label and getattr(failure, "code", None) in f.codes
    ]
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
