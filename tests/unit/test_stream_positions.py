"""Where a resuming stream continues: every position given is checked, strictly (found by fuzzing)."""

from __future__ import annotations

import pytest
from starlette.requests import Request

from shared.api.streams import resume_position
from shared.errors import InvalidRequest
from shared.runs.tokens import TokenCodec

CODEC = TokenCodec(b"k" * 40)


def request(query: str = "", **headers: str) -> Request:
    raw_headers = [(k.lower().replace("_", "-").encode(), v.encode()) for k, v in headers.items()]
    return Request(
        {
            "type": "http",
            "method": "GET",
            "path": "/api/runs/run_1/stream",
            "query_string": query.encode(),
            "headers": raw_headers,
        }
    )


def position(query: str = "", **headers: str) -> int:
    return resume_position(request(query, **headers), "run_1", CODEC.decode)


def test_the_header_wins_over_valid_positions_in_the_url():
    assert position("starting_after=2", Last_Event_ID="7") == 7
    assert position(f"continuation_token={CODEC.encode('run_1', 3)}") == 3
    assert position("starting_after=5") == 5 and position() == -1
    assert position(Last_Event_ID="") == -1  # an empty Last-Event-ID is none, as EventSource sends it


@pytest.mark.parametrize(
    "query",
    [
        "starting_after=-2",
        "starting_after=",
        "continuation_token=garbage",
        "starting_after=%2B3",
        "starting_after=1_0",
        "starting_after=%D9%A3",
        "starting_after=%203",
    ],
)
def test_an_invalid_position_in_the_url_is_refused_even_beside_a_header(query):
    with pytest.raises(InvalidRequest):
        position(query, Last_Event_ID="1")
    with pytest.raises(InvalidRequest):
        position(query)


@pytest.mark.parametrize("header", ["+3", "1_0", "\u0663", " 3", "3.0", "-2"])
def test_an_invalid_last_event_id_is_refused(header):
    with pytest.raises(InvalidRequest):
        position(Last_Event_ID=header)
