"""The emulator pushes webhooks like OpenAI / Azure OpenAI: endpoints registered through either management
API, Standard Webhooks signed deliveries verified with the openai SDK's own helpers, retries, knobs, restarts."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from itertools import pairwise

import httpx
import openai
import pytest

from local.emulator import EmulatorServer

from .receiver import Receiver

ALL_TYPES = ["response.completed", "response.failed", "response.cancelled", "response.incomplete"]
QUICK = {"emulator_duration_ms": "5000"}  # 100 ms at scale 0.02


@pytest.fixture(scope="module")
def wemu():
    # webhook_time_scale 0.01: the default retry schedule 5 s, 30 s, 2 min, ... becomes 50 ms, 300 ms, 1.2 s, ...
    server = EmulatorServer(port=0, time_scale=0.02, webhook_time_scale=0.01).start_in_thread()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def receiver():
    r = Receiver().start()
    yield r
    r.stop()


@pytest.fixture
def c(wemu):
    httpx.post(f"{wemu.base_url}/_emulator/reset", json={"webhook_endpoints": True}).raise_for_status()
    with openai.OpenAI(base_url=wemu.base_url, api_key="k") as client:
        yield client


def deliveries(emu: EmulatorServer, **params) -> list[dict]:
    return httpx.get(f"{emu.base_url}/_emulator/webhook_deliveries", params=params).json()["data"]


def wait_state(emu, resp_id: str, done, timeout: float = 20.0) -> list[dict]:
    end = time.monotonic() + timeout
    while True:
        rows = deliveries(emu, response_id=resp_id)
        if rows and done(rows):
            return rows
        assert time.monotonic() < end, f"deliveries of {resp_id}: {rows}"
        time.sleep(0.02)


# ------------------------------------------------------------------ management API


def test_openai_management_api_with_the_sdk(c, receiver):
    ep = c.webhooks.create(name="svc", url=receiver.url(), event_types=["response.completed"])
    assert ep.object == "webhook_endpoint" and ep.id.startswith("we_")
    assert ep.signing_secret.startswith("whsec_") and ep.signing_secret_hint.endswith(ep.signing_secret[-4:])
    assert [e.id for e in c.webhooks.list()] == [ep.id]
    got = c.webhooks.retrieve(ep.id)
    assert got.url == receiver.url() and "signing_secret" not in got.model_dump()  # shown on create/rotate only
    same = c.webhooks.update(ep.id, name="svc")  # unchanged: no new updated_at
    assert same.updated_at == ep.updated_at
    moved = c.webhooks.update(ep.id, event_types=ALL_TYPES, url=receiver.url("other"))
    assert moved.event_types == ALL_TYPES and moved.url.endswith("/other")
    rotated = c.webhooks.rotate_secret(ep.id)
    assert rotated.signing_secret != ep.signing_secret
    test = c.webhooks.test(ep.id, event_type="response.completed")
    assert test.object == "webhook_endpoint.test" and test.status_code == 204 and test.success
    sample = receiver.wait_for(lambda ds: any(d.path == "/other" for d in ds))[-1]
    event = c.webhooks.unwrap(sample.body, sample.headers, secret=rotated.signing_secret)
    assert event.type == "response.completed"
    deleted = c.webhooks.delete(ep.id)
    assert deleted.deleted and deleted.object == "webhook_endpoint.deleted"
    with pytest.raises(openai.NotFoundError):
        c.webhooks.retrieve(ep.id)
    assert list(c.webhooks.list()) == []


def test_management_api_refuses_bad_input(c, receiver):
    nr = c.with_options(max_retries=0)
    for bad in (
        {"url": "ftp://x/y", "event_types": ["response.completed"]},
        {"url": receiver.url(), "event_types": ["response.exploded"]},
        {"url": receiver.url(), "event_types": []},
        {"event_types": ["response.completed"]},
        {"url": receiver.url(), "event_types": ["response.completed"], "colour": "red"},
    ):
        with pytest.raises(openai.BadRequestError) as exc:
            nr.post("/webhook_endpoints", body=bad, cast_to=object)
        assert exc.value.body["message"] and exc.value.status_code == 400
    with pytest.raises(openai.NotFoundError):
        nr.webhooks.update("we_missing", name="x")
    with pytest.raises(openai.NotFoundError):
        nr.webhooks.delete("we_missing")


def test_azure_management_api_shape(wemu, receiver, c):
    base = f"{wemu.azure_base_url}/dashboard/webhook_endpoints"
    h = {"api-key": "k"}
    created = httpx.post(
        base,
        headers=h,
        params={"api-version": "preview"},
        json={"name": "fn", "url": receiver.url(), "event_types": ["response.completed"]},
    ).json()
    assert created["object"] == "webhook.endpoint" and created["signing_secret"].startswith("whsec_")
    listing = httpx.get(base, headers=h).json()
    assert listing["object"] == "list" and [e["id"] for e in listing["data"]] == [created["id"]]
    assert "signing_secret" not in listing["data"][0]
    updated = httpx.post(f"{base}/{created['id']}", headers=h, json={"event_types": ALL_TYPES}).json()
    assert updated["event_types"] == ALL_TYPES and updated["object"] == "webhook.endpoint"
    # one registry behind both flavours
    assert c.webhooks.retrieve(created["id"]).event_types == ALL_TYPES
    gone = httpx.delete(f"{base}/{created['id']}", headers=h).json()
    assert gone == {"id": created["id"], "object": "webhook.endpoint.deleted", "deleted": True}
    assert httpx.get(f"{base}/{created['id']}", headers=h).status_code == 404


# ------------------------------------------------------------------ deliveries


def test_every_terminal_outcome_is_delivered_once_and_verifies(c, receiver, wemu):
    ep = c.webhooks.create(name="all", url=receiver.url("all"), event_types=ALL_TYPES)
    only_done = c.webhooks.create(name="done", url=receiver.url("done"), event_types=["response.completed"])
    runs = {
        "completed": c.responses.create(model="m", input="a", background=True, metadata=QUICK),
        "failed": c.responses.create(
            model="m", input="b", background=True, metadata={**QUICK, "emulator_outcome": "failed"}
        ),
        "incomplete": c.responses.create(
            model="m", input="c", background=True, metadata={**QUICK, "emulator_outcome": "incomplete"}
        ),
        "cancelled": c.responses.create(
            model="m", input="d", background=True, metadata={"emulator_duration_ms": "500000"}
        ),
    }
    c.responses.cancel(runs["cancelled"].id)
    foreground = c.responses.create(model="m", input="e", metadata=QUICK)  # not background: no webhook
    receiver.wait_for(
        lambda ds: all(len([d for d in ds if r.id.encode() in d.body and d.path == "/all"]) == 1 for r in runs.values())
    )
    for outcome, r in runs.items():
        [d] = receiver.for_response(r.id, "all")
        event = c.webhooks.unwrap(d.body, d.headers, secret=ep.signing_secret)
        assert event.type == f"response.{outcome}" and event.data.id == r.id and event.object == "event"
        assert d.headers["webhook-id"].startswith("wh_") and d.headers["user-agent"].startswith("OpenAI/1.0")
        assert json.loads(d.body)["id"].startswith("evt_")
        c.webhooks.verify_signature(d.body, d.headers, secret=ep.signing_secret)
        with pytest.raises(openai.InvalidWebhookSignatureError):
            c.webhooks.verify_signature(d.body, d.headers, secret=only_done.signing_secret)
        assert c.responses.retrieve(event.data.id).status == outcome  # the receiver's follow-up retrieve
    time.sleep(0.2)
    assert [len(receiver.for_response(r.id, "done")) for r in runs.values()] == [1, 0, 0, 0]  # subscription filter
    assert receiver.for_response(foreground.id) == []
    stats = httpx.get(f"{wemu.base_url}/_emulator/stats").json()["webhooks"]
    assert stats["delivered"] >= 5 and stats["endpoints"] == 2


async def test_async_client_unwraps(wemu, receiver):
    async with httpx.AsyncClient() as h:
        await h.post(f"{wemu.base_url}/_emulator/reset", json={"webhook_endpoints": True})
    async with openai.AsyncOpenAI(base_url=wemu.base_url, api_key="k") as ac:
        ep = await ac.webhooks.create(name="a", url=receiver.url("async"), event_types=ALL_TYPES)
        rs = await asyncio.gather(
            *(ac.responses.create(model="m", input=f"a{i}", background=True, metadata=QUICK) for i in range(5))
        )
        while not all(receiver.for_response(r.id) for r in rs):
            await asyncio.sleep(0.02)
        for r in rs:
            [d] = receiver.for_response(r.id)
            event = ac.webhooks.unwrap(d.body, d.headers, secret=ep.signing_secret)  # plain, not awaitable
            assert event.data.id == r.id and (await ac.responses.retrieve(r.id)).status == "completed"


def test_retries_with_backoff_keep_the_webhook_id(c, receiver, wemu):
    ep = c.webhooks.create(name="flaky", url=receiver.url("flaky", fail=2), event_types=ALL_TYPES)
    r = c.responses.create(model="m", input="retry", background=True, metadata=QUICK)
    [row] = wait_state(wemu, r.id, lambda rows: rows[0]["state"] == "delivered")
    assert [a["status"] for a in row["attempts"]] == [500, 500, 204]
    gaps = [b["at"] - a["at"] for a, b in pairwise(row["attempts"])]
    assert gaps[0] >= 0.04 and gaps[1] >= 0.25 and gaps[1] > gaps[0]  # 50 ms then 300 ms: backing off
    got = receiver.for_response(r.id)
    assert len(got) == 3 and len({d.headers["webhook-id"] for d in got}) == 1
    assert all(c.webhooks.unwrap(d.body, d.headers, secret=ep.signing_secret).data.id == r.id for d in got)


def test_retries_are_bounded(c, receiver, wemu):
    httpx.post(f"{wemu.base_url}/_emulator/config", json={"webhook_retry_schedule_ms": "20,20"})
    try:
        dead = socket.socket()
        dead.bind(("127.0.0.1", 0))  # a port nobody listens on: connection refused
        closed_url = f"http://127.0.0.1:{dead.getsockname()[1]}/x"
        dead.close()
        c.webhooks.create(name="500", url=receiver.url("down", status=500), event_types=["response.completed"])
        c.webhooks.create(name="refused", url=closed_url, event_types=["response.completed"])
        r = c.responses.create(model="m", input="doomed", background=True, metadata=QUICK)
        rows = wait_state(wemu, r.id, lambda rows: all(x["state"] == "failed" for x in rows))
        assert sorted(len(x["attempts"]) for x in rows) == [3, 3]  # 1 + len(schedule)
        refused = next(x for x in rows if x["url"] == closed_url)
        assert all(a["status"] is None and "Connect" in a["error"] for a in refused["attempts"])
        time.sleep(0.2)
        assert len(receiver.for_response(r.id)) == 3  # no attempt after giving up
        assert httpx.get(f"{wemu.base_url}/_emulator/stats").json()["webhooks"]["gave_up"] >= 2
    finally:
        httpx.post(
            f"{wemu.base_url}/_emulator/config", json={"webhook_retry_schedule_ms": "5000,30000,120000,600000,1800000"}
        )


def test_timeouts_count_as_failures(c, receiver, wemu):
    httpx.post(f"{wemu.base_url}/_emulator/config", json={"webhook_timeout_ms": 100})
    try:
        c.webhooks.create(name="slow", url=receiver.url("slow", hang=0.5), event_types=["response.completed"])
        r = c.responses.create(model="m", input="slow", background=True, metadata=QUICK)
        rows = wait_state(wemu, r.id, lambda rows: len(rows[0]["attempts"]) >= 2)
        assert "Timeout" in rows[0]["attempts"][0]["error"]
    finally:
        httpx.post(f"{wemu.base_url}/_emulator/config", json={"webhook_timeout_ms": 10000})
        httpx.post(f"{wemu.base_url}/_emulator/reset", json={"webhook_endpoints": True})


def test_delay_drop_duplicate_knobs_per_response(c, receiver, wemu):
    ep = c.webhooks.create(name="knobs", url=receiver.url("knobs"), event_types=ALL_TYPES)
    late = c.responses.create(
        model="m", input="late", background=True, metadata={**QUICK, "emulator_webhook_delay_ms": "40000"}
    )  # 400 ms at 0.01
    lost = c.responses.create(
        model="m", input="lost", background=True, metadata={**QUICK, "emulator_webhook_drop": "true"}
    )
    twice = c.responses.create(
        model="m", input="twice", background=True, metadata={**QUICK, "emulator_webhook_duplicate": "true"}
    )
    receiver.wait_for(lambda ds: len(receiver.for_response(twice.id)) == 2 and receiver.for_response(late.id))
    first, second = receiver.for_response(twice.id)
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    for d in (first, second):
        assert c.webhooks.unwrap(d.body, d.headers, secret=ep.signing_secret).data.id == twice.id
    finished = {r["id"]: r["finished_at"] for r in httpx.get(f"{wemu.base_url}/_emulator/responses").json()["data"]}
    [arrived] = receiver.for_response(late.id)
    assert arrived.at - finished[late.id] >= 0.39
    assert receiver.for_response(lost.id) == []
    assert deliveries(wemu, response_id=lost.id)[0]["state"] == "dropped"
    with pytest.raises(openai.BadRequestError):
        c.responses.create(model="m", input="x", background=True, metadata={"emulator_webhook_drop": "maybe"})


def test_global_drop_and_duplicate_rates(c, receiver, wemu):
    c.webhooks.create(name="rates", url=receiver.url("rates"), event_types=ALL_TYPES)
    httpx.post(
        f"{wemu.base_url}/_emulator/config", json={"webhook_drop_rate": 0.5, "webhook_duplicate_rate": 0.5, "seed": 11}
    )
    try:
        rs = [c.responses.create(model="m", input=f"r{i}", background=True, metadata=QUICK) for i in range(40)]
        rows = {r.id: wait_state(wemu, r.id, lambda x: x[0]["state"] in ("delivered", "dropped"))[0] for r in rs}
        time.sleep(0.2)
    finally:
        httpx.post(
            f"{wemu.base_url}/_emulator/config",
            json={"webhook_drop_rate": 0.0, "webhook_duplicate_rate": 0.0, "seed": 0},
        )
    dropped = [i for i, row in rows.items() if row["state"] == "dropped"]
    doubled = [i for i, row in rows.items() if row["copies"] == 2 and row["state"] == "delivered"]
    assert 8 <= len(dropped) <= 32 and 4 <= len(doubled)  # about half each (deterministic per seed)
    assert all(receiver.for_response(i) == [] for i in dropped)
    assert all(len(receiver.for_response(i)) == 2 for i in doubled)


def test_rotation_keeping_the_old_secret_signs_with_both(c, receiver, wemu):
    ep = c.webhooks.create(name="rot", url=receiver.url("rot"), event_types=ALL_TYPES)
    new = c.webhooks.rotate_secret(ep.id, keep_old_secret_active_for_24_hours=True)
    r = c.responses.create(model="m", input="rot", background=True, metadata=QUICK)
    receiver.wait_for(lambda ds: receiver.for_response(r.id))
    [d] = receiver.for_response(r.id)
    assert len(d.headers["webhook-signature"].split(" ")) == 2
    for secret in (ep.signing_secret, new.signing_secret):  # a receiver on either secret accepts it
        assert c.webhooks.unwrap(d.body, d.headers, secret=secret).data.id == r.id


def test_deleted_endpoint_gets_nothing_more(c, receiver, wemu):
    httpx.post(f"{wemu.base_url}/_emulator/config", json={"webhook_retry_schedule_ms": "100000"})  # 1 s
    try:
        ep = c.webhooks.create(name="gone", url=receiver.url("gone", fail=1), event_types=ALL_TYPES)
        r = c.responses.create(model="m", input="gone", background=True, metadata=QUICK)
        wait_state(wemu, r.id, lambda rows: len(rows[0]["attempts"]) == 1)
        c.webhooks.delete(ep.id)  # before the retry is due
        wait_state(wemu, r.id, lambda rows: rows[0]["state"] == "endpoint_deleted")
        assert len(receiver.for_response(r.id)) == 1
    finally:
        httpx.post(
            f"{wemu.base_url}/_emulator/config", json={"webhook_retry_schedule_ms": "5000,30000,120000,600000,1800000"}
        )


async def test_restart_with_db_delivers_what_ended_while_down(tmp_path):
    db = str(tmp_path / "emu.sqlite")
    receiver = Receiver().start()
    try:
        slow_retry = {"webhook_time_scale": 0.01, "webhook_retry_schedule_ms": "100000"}  # retry after 1 s
        async with EmulatorServer(port=0, time_scale=0.02, db=db, **slow_retry) as a:
            async with openai.AsyncOpenAI(base_url=a.base_url, api_key="k") as ac:
                ep = await ac.webhooks.create(name="persist", url=receiver.url("p", fail=1), event_types=ALL_TYPES)
                done = await ac.responses.create(
                    model="m", input="before", background=True, metadata={"emulator_duration_ms": "0"}
                )
                while not receiver.for_response(done.id):  # its first attempt fails (fail=1) ...
                    await asyncio.sleep(0.01)
                pending = await ac.responses.create(
                    model="m", input="while down", background=True, metadata={"emulator_duration_ms": "10000"}
                )  # ends in 0.2 s
        await asyncio.sleep(0.4)  # ... the retry and this end fall here
        assert len(receiver.for_response(done.id)) == 1 and receiver.for_response(pending.id) == []
        async with EmulatorServer(port=0, db=db, **slow_retry) as b:
            async with openai.AsyncOpenAI(base_url=b.base_url, api_key="k") as bc:
                assert (await bc.webhooks.retrieve(ep.id)).url == receiver.url("p", fail=1)
                end = time.monotonic() + 20
                while not (len(receiver.for_response(done.id)) == 2 and len(receiver.for_response(pending.id)) == 2):
                    assert time.monotonic() < end, [d.path for d in receiver.deliveries]
                    await asyncio.sleep(0.02)
                for resp_id in (done.id, pending.id):
                    for d in receiver.for_response(resp_id):  # the same secret after the restart
                        assert bc.webhooks.unwrap(d.body, d.headers, secret=ep.signing_secret).data.id == resp_id
                async with httpx.AsyncClient() as h:
                    stats = (await h.get(f"{b.base_url}/_emulator/stats")).json()["webhooks"]
                assert stats["events"] == 1 and stats["delivered"] == 2  # only the new event fired here
    finally:
        receiver.stop()


async def test_startup_registration_flag():
    receiver = Receiver().start()
    secret = "whsec_" + "A" * 43 + "="
    try:
        async with EmulatorServer(
            port=0, time_scale=0.02, webhook_url=receiver.url("fn"), webhook_secret=secret
        ) as emu:
            async with openai.AsyncOpenAI(base_url=emu.base_url, api_key="k", webhook_secret=secret) as ac:
                r = await ac.responses.create(model="m", input="x", background=True, metadata=QUICK)
                while not receiver.for_response(r.id):
                    await asyncio.sleep(0.02)
                [d] = receiver.for_response(r.id)
                assert ac.webhooks.unwrap(d.body, d.headers).data.id == r.id  # secret from the client option
    finally:
        receiver.stop()


async def test_many_concurrent_responses_each_delivered_once(wemu, receiver):
    async with httpx.AsyncClient() as h:
        await h.post(f"{wemu.base_url}/_emulator/reset", json={"webhook_endpoints": True})
    n = 200
    limits = httpx.Limits(max_connections=400, max_keepalive_connections=400)
    async with openai.AsyncOpenAI(
        base_url=wemu.base_url, api_key="k", http_client=openai.DefaultAsyncHttpxClient(limits=limits)
    ) as ac:
        ep = await ac.webhooks.create(name="load", url=receiver.url("load"), event_types=ALL_TYPES)
        meta = {"emulator_duration_ms": "50000", "emulator_output_chars": "100"}  # all end within ~1 s
        rs = await asyncio.gather(
            *(ac.responses.create(model="m", input=f"l{i}", background=True, metadata=meta) for i in range(n))
        )
        ids = {r.id for r in rs}
        end = time.monotonic() + 60
        while len({json.loads(d.body)["data"]["id"] for d in receiver.deliveries if d.path == "/load"} & ids) < n:
            assert time.monotonic() < end
            await asyncio.sleep(0.05)
    got = [d for d in receiver.deliveries if d.path == "/load" and json.loads(d.body)["data"]["id"] in ids]
    assert len(got) == n  # exactly once each
    assert all(
        openai.OpenAI(api_key="k").webhooks.unwrap(d.body, d.headers, secret=ep.signing_secret) for d in got[:20]
    )
