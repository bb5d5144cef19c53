"""GET /api/runs: newest first, filtered by status and session, paginated with an opaque cursor."""

from __future__ import annotations

import openai

from ..stack import FACADE_KEYS


def test_a_sessions_runs_are_listed_newest_first_by_pages_and_status(stack):
    session = stack.post("/api/sessions").json()["id"]
    ids = []
    for n in range(3):
        run = stack.start(f"turn {n}", session_id=session, background=False, metadata={"emulator_duration_ms": "200"})
        ids.append(run.json()["id"])
    running = stack.start("still going", session_id=session, metadata={"emulator_duration_ms": "20000"}).json()
    first = stack.get("/api/runs", params={"session_id": session, "limit": 2}).json()
    assert [r["id"] for r in first["data"]] == [running["id"], ids[2]] and first["has_more"]
    rest = stack.get("/api/runs", params={"session_id": session, "limit": 2, "cursor": first["next_cursor"]}).json()
    assert [r["id"] for r in rest["data"]] == [ids[1], ids[0]] and not rest["has_more"] and rest["next_cursor"] is None
    completed = stack.get("/api/runs", params={"session_id": session, "status": "completed"}).json()
    assert [r["id"] for r in completed["data"]] == ids[::-1]
    active = stack.get("/api/runs", params={"session_id": session, "status": "in_progress"}).json()["data"]
    queued = stack.get("/api/runs", params={"session_id": session, "status": "queued"}).json()["data"]
    assert [r["id"] for r in active + queued] == [running["id"]]  # its current status, whichever it is
    assert stack.post(f"/api/runs/{running['id']}/cancel").json()["status"] == "cancelled"
    cancelled = stack.get("/api/runs", params={"session_id": session, "status": "cancelled"}).json()["data"]
    assert [r["id"] for r in cancelled] == [running["id"]] and cancelled[0]["completed_at"] is not None


def test_the_list_of_all_runs_includes_every_callers_runs_newest_first(stack):
    facade = openai.OpenAI(base_url=f"{stack.host.base_url}/api/v1", api_key=FACADE_KEYS["bob"])
    bobs = facade.responses.create(model="gpt-4.1-mini", input="bob's", background=True)
    native = stack.start("native").json()
    listed = stack.get("/api/runs", params={"limit": 2}).json()["data"]
    assert [r["id"] for r in listed] == [native["id"], bobs.id]
    assert [r["owner"] for r in listed] == [None, "bob"]


def test_bad_list_parameters_are_400s_naming_them(stack):
    for params, param in (
        ({"status": "sleeping"}, "status"),
        ({"cursor": "zzz"}, "cursor"),
        ({"limit": "0"}, "limit"),
        ({"limit": "x"}, "limit"),
        ({"session_id": "../x"}, "session_id"),
        # Sent empty: judged as sent (the only finding of the keyed fuzz run, issue 21).
        ({"status": ""}, "status"),
        ({"limit": ""}, "limit"),
        ({"session_id": ""}, "session_id"),
        ({"cursor": ""}, "cursor"),
    ):
        response = stack.get("/api/runs", params=params)
        assert response.status_code == 400 and response.json()["error"]["param"] == param, params
