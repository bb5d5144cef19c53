from __future__ import annotations

import datetime as dt
import json

import pytest

from shared.webhooks import build_payload, event_type_for


@pytest.mark.parametrize("status", ["completed", "failed", "cancelled", "incomplete", "requires_action", "expired"])
def test_terminal_statuses_map_to_run_events(status):
    assert event_type_for(status) == f"run.{status}"


@pytest.mark.parametrize("status", ["queued", "in_progress", ""])
def test_non_terminal_statuses_have_no_event(status):
    with pytest.raises(ValueError, match=f"^no webhook event for run status '{status}'$"):
        event_type_for(status)


def test_payload_is_compact_json_with_utc_timestamp():
    run = {"id": "run_1", "status": "completed", "output_text": "héllo"}
    when = dt.datetime(2030, 5, 6, 9, 8, 7, 123456, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    body = build_payload(run, when)
    assert isinstance(body, bytes) and b" " not in body.replace("héllo".encode(), b"")
    doc = json.loads(body)
    assert doc == {"type": "run.completed", "timestamp": "2030-05-06T07:08:07.123Z", "data": run}


def test_payload_rejects_naive_timestamps_and_unknown_status():
    with pytest.raises(ValueError, match="timestamp must be timezone-aware"):
        build_payload({"status": "completed"}, dt.datetime(2030, 1, 1))  # noqa: DTZ001 - the naive time under test
    with pytest.raises(ValueError, match="no webhook event for run status 'queued'"):
        build_payload({"status": "queued"}, dt.datetime.now(dt.UTC))
