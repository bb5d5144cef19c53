"""The domain behind the Responses API facade, on fakes: owners and visibility, chaining from a run, the provider's
Response kept with the run, run lists, listing pages, deleting, Idempotency-Keys per caller, callers by key."""

from __future__ import annotations

import pytest

from shared.errors import InvalidRequest, NotFound
from shared.runs.callers import OPERATOR, Caller, CallerKeys
from shared.runs.requests import RunRequest
from shared.settings import ApiKey, SettingsError, parse_api_keys

from .fakes import world

ALICE, BOB, OPS = Caller("alice"), Caller("bob"), Caller("ops", operator=True)


async def start(w, caller=OPERATOR, **fields):
    return (await w.services.starter.start(RunRequest(input=fields.pop("input", "hi"), **fields), caller=caller)).run


async def finish(w, run, text="done"):
    w.backend.responses[run.response_id].complete(text)
    await w.drain_polls()
    return await w.services.reader.get(run.id)


async def test_a_run_records_its_owner_and_only_it_and_operators_see_it(monkeypatch):
    w = world(monkeypatch)
    run = await start(w, ALICE)
    assert (await w.services.reader.get(run.id, caller=ALICE)).owner == "alice"
    assert (await w.services.reader.get(run.id, caller=OPS)).id == run.id
    assert (await w.services.reader.get(run.id)).id == run.id  # the native API is an operator
    for attempt in (
        w.services.reader.get(run.id, caller=BOB),
        w.services.canceller.cancel(run.id, caller=BOB),
        w.services.deleter.delete(run.id, caller=BOB),
    ):
        with pytest.raises(NotFound) as hidden:
            await attempt
        assert hidden.value.code == "not_found"  # exactly what an unknown id answers
    assert (await w.services.reader.get(run.id)).is_active  # bob's cancel and delete changed nothing
    native = await start(w)
    assert native.owner is None
    with pytest.raises(NotFound):
        await w.services.reader.get(native.id, caller=ALICE)


async def test_previous_run_id_continues_from_that_runs_provider_response_if_visible(monkeypatch):
    w = world(monkeypatch)
    first = await finish(w, await start(w, ALICE))
    second = await start(w, ALICE, previous_run_id=first.id)
    assert w.backend.responses[second.response_id].params["previous_response_id"] == first.response_id
    assert (await w.services.reader.get(second.id)).previous_run_id == first.id
    for caller, previous in ((BOB, first.id), (ALICE, "run_0123456789abcdef01234567"), (ALICE, "resp_x")):
        with pytest.raises(NotFound) as missing:
            await start(w, caller, previous_run_id=previous)
        assert missing.value.param == "previous_response_id"
    assert (await start(w, OPS, previous_run_id=first.id)).is_active  # an operator may continue anyone's run


async def test_pass_through_options_reach_the_provider_but_never_override_the_services_own(monkeypatch):
    w = world(monkeypatch)
    run = await start(
        w,
        ALICE,
        options={"temperature": 0.2, "text": {"format": {"type": "text"}}, "store": False, "model": "other"},
        model="m1",
    )
    params = w.backend.responses[run.response_id].params
    assert params["temperature"] == 0.2 and params["text"] == {"format": {"type": "text"}}
    assert params["store"] is True and params["model"] == "m1" and params["metadata"]["bg_run_id"] == run.id


async def test_the_providers_create_reply_and_final_response_are_kept_with_the_run(monkeypatch):
    w = world(monkeypatch)
    run = await start(w, ALICE)
    stored = await w.services.reader.get(run.id)
    assert stored.response["id"] == run.response_id and "output" not in stored.response
    ended = await finish(w, run, "the answer")
    assert ended.result["response"]["status"] == "completed" and "output" not in ended.result["response"]
    assert ended.result["output_text"] == "the answer"  # the output is stored once, in the result


async def test_run_lists_are_written_at_start_and_end_and_paged_newest_first(monkeypatch):
    w = world(monkeypatch)
    runs = []
    for _ in range(5):
        runs.append(await start(w, ALICE))
        w.clock.advance(1)
    bobs = await start(w, BOB)
    await finish(w, runs[1])
    lister = w.services.lister
    page = await lister.page(caller=ALICE, limit=2)
    assert [r["id"] for r in page.runs] == [runs[4].id, runs[3].id] and page.has_more
    page2 = await lister.page(caller=ALICE, limit=2, cursor=page.next_cursor)
    page3 = await lister.page(caller=ALICE, limit=2, cursor=page2.next_cursor)
    assert [r["id"] for r in page2.runs + page3.runs] == [runs[2].id, runs[1].id, runs[0].id] and not page3.has_more
    everything = await lister.page(limit=100)  # an operator: every run
    assert [r["id"] for r in everything.runs] == [bobs.id] + [r.id for r in reversed(runs)]
    completed = await lister.page(caller=ALICE, status="completed")
    assert [r["id"] for r in completed.runs] == [runs[1].id] and completed.runs[0]["completed_at"] == w.clock.now
    w.backend.responses[runs[0].response_id].status = "in_progress"
    await w.drain_polls()
    in_progress = await lister.page(caller=ALICE, status="in_progress")
    assert [r["id"] for r in in_progress.runs] == [runs[0].id]  # the live status of a run still going
    assert {r["status"] for r in (await lister.page(caller=ALICE, status="queued")).runs} == {"queued"}
    with pytest.raises(InvalidRequest):
        await lister.page(cursor="not-a-cursor")
    with pytest.raises(InvalidRequest):
        await lister.page(status="sleeping")


async def test_a_sessions_runs_are_listed_and_filtered_by_session(monkeypatch):
    w = world(monkeypatch)
    session = await w.services.starter.open_session()
    first = await finish(w, await start(w, session_id=session.id))
    w.clock.advance(1)  # runs started in the same millisecond are listed in no particular order
    second = await start(w, session_id=session.id)
    await start(w)  # another run, outside the session
    listed = await w.services.lister.page(session_id=session.id)
    assert [r["id"] for r in listed.runs] == [second.id, first.id]
    assert all(r["session_id"] == session.id for r in listed.runs)


async def test_delete_cancels_a_running_run_then_removes_it_everywhere(monkeypatch):
    w = world(monkeypatch)
    run = await start(w, ALICE)
    assert await w.services.deleter.delete(run.id, caller=ALICE) == run.id
    assert [name for name, _ in w.backend.calls] == ["start", "cancel", "delete"]
    assert run.response_id not in w.backend.responses
    with pytest.raises(NotFound):
        await w.services.reader.get(run.id)
    # No list rows, no retention date and no open work left (tests/unit/test_deleting.py: every row, and races).
    assert not [key for key in w.index.rows if run.id in key[1]]
    assert not (await w.services.lister.page()).runs


async def test_idempotency_keys_are_per_caller(monkeypatch):
    w = world(monkeypatch)
    starter = w.services.starter
    first = await starter.start(RunRequest(input="x"), caller=ALICE, idempotency_key="k1")
    again = await starter.start(RunRequest(input="x"), caller=ALICE, idempotency_key="k1")
    bobs = await starter.start(RunRequest(input="x"), caller=BOB, idempotency_key="k1")
    native = await starter.start(RunRequest(input="x"), idempotency_key="k1")
    assert first.run.id == again.run.id and len({first.run.id, bobs.run.id, native.run.id}) == 3
    assert w.backend.count("start") == 3


def test_callers_are_found_by_key_and_rotation_keeps_the_name():
    keys = parse_api_keys("app:" + "a" * 32 + " app:" + "b" * 40 + ",ops:" + "c" * 32 + ":operator")
    callers = CallerKeys(keys)
    assert callers.caller("a" * 32) == callers.caller("b" * 40) == Caller("app")
    assert callers.caller("c" * 32) == Caller("ops", operator=True)
    assert callers.caller("a" * 31) is None and callers.caller(None) is None and callers.caller("") is None
    assert not CallerKeys(()).configured and CallerKeys(keys).configured
    assert keys[0] == ApiKey("app", "a" * 32) and "a" * 32 not in repr(keys)


@pytest.mark.parametrize(
    "raw, problem",
    [
        ("app", "not name:key"),
        ("app:short", "32-256 characters"),
        ("a b:" + "k" * 32, "not name:key"),
        ("app:" + "k" * 32 + ":admin", "not name:key"),
        ("a/b:" + "k" * 32, "caller name"),
        ("a:" + "k" * 32 + " b:" + "k" * 32, "repeats the key"),
        ("a:" + "k" * 32 + " a:" + "j" * 32 + ":operator", "operator in one entry"),
    ],
)
def test_bad_api_key_settings_are_named_without_the_key(raw, problem):
    with pytest.raises(SettingsError) as error:
        parse_api_keys(raw)
    assert problem in str(error.value) and "k" * 32 not in str(error.value)
