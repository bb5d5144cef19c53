"""The official `openai` SDK (sync and async, OpenAI and AzureOpenAI) against the facade."""

from __future__ import annotations

import time

import openai
import pytest

from ..schemas import validate
from ..stack import FACADE_KEYS
from .conftest import MODEL, emulator_text, knobs, provider_response


def test_background_create_then_poll_until_the_terminal_response(client, stack):
    created = client.responses.create(model=MODEL, input="Explain queues.", background=True, metadata=knobs(1500, 240))
    assert created.id.startswith("run_") and created.status in ("queued", "in_progress")
    assert created.background is True and created.output == [] and created.metadata == knobs(1500, 240)
    response = created
    while response.status in ("queued", "in_progress"):
        time.sleep(0.2)
        response = client.responses.retrieve(created.id)
    assert response.status == "completed" and response.id == created.id
    provider = provider_response(stack, created.id)
    assert response.output_text == emulator_text(stack, provider["id"]) and len(response.output_text) == 240
    assert response.usage.output_tokens > 0 and response.completed_at is not None


def test_a_retrieve_with_prefer_wait_is_held_until_the_response_changes(client, stack):
    created = client.responses.create(model=MODEL, input="Long-poll me.", background=True, metadata=knobs(2500, 60))
    response, retrieves, began = created, 0, time.monotonic()
    while response.status in ("queued", "in_progress"):  # no sleep: the service holds each retrieve
        raw = client.responses.with_raw_response.retrieve(created.id, extra_headers={"Prefer": "wait=30"})
        response, retrieves = raw.parse(), retrieves + 1
        assert raw.headers["preference-applied"] == "wait=30"
    assert response.status == "completed" and len(response.output_text) == 60
    assert retrieves <= 3 and time.monotonic() - began < 20  # until it began, until it ended: not a busy loop


async def test_async_client_foreground_create_answers_the_terminal_response(aclient, stack):
    response = await aclient.responses.create(model=MODEL, input="quick one", metadata=knobs(800, 50))
    assert response.status == "completed" and len(response.output_text) == 50
    again = await aclient.responses.retrieve(response.id)
    assert again.output_text == response.output_text


def test_azure_openai_client_with_azure_endpoint_and_api_version(stack, recorder):
    client = openai.AzureOpenAI(
        azure_endpoint=f"{stack.host.base_url}/api",
        api_key=FACADE_KEYS["alice"],
        api_version="2025-04-01-preview",
        http_client=recorder.sync_client(),
        max_retries=0,
    )
    created = client.responses.create(model=MODEL, input="Azure flavour", background=True, metadata=knobs(600, 90))
    response = created
    while response.status in ("queued", "in_progress"):
        time.sleep(0.2)
        response = client.responses.retrieve(created.id)
    assert response.status == "completed" and len(response.output_text) == 90
    paths = {ex.path for ex in recorder.exchanges}
    assert paths == {"/api/openai/responses", f"/api/openai/responses/{created.id}"}  # sent with api-key


async def test_async_azure_v1_base_url_streams(stack, recorder):
    client = openai.AsyncOpenAI(
        base_url=f"{stack.host.base_url}/api/openai/v1",
        api_key=FACADE_KEYS["alice"],
        http_client=recorder.async_client(),
        max_retries=0,
    )
    async with client:
        stream = await client.responses.create(
            model=MODEL, input="stream via azure v1", stream=True, background=True, metadata=knobs(800, 120)
        )
        events = [event async for event in stream]
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    assert len(events[-1].response.output_text) == 120 and events[-1].response.id.startswith("run_")


def test_a_stream_is_the_providers_with_our_id_everywhere(client, stack, recorder):
    stream = client.responses.create(
        model=MODEL, input="Stream a story.", stream=True, background=True, metadata=knobs(1200, 300)
    )
    events = list(stream)
    run_id = events[0].response.id
    provider_id = provider_response(stack, run_id)["id"]
    assert [e.sequence_number for e in events] == list(range(len(events)))  # the provider's numbering, kept
    assert events[-1].type == "response.completed" and events[-1].response.status == "completed"
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == events[-1].response.output_text == emulator_text(stack, provider_id)
    raw = b"".join(bytes(ex.body) for ex in recorder.exchanges)
    assert provider_id.encode() not in raw and b"bg_run_id" not in raw
    assert client.responses.retrieve(run_id).output_text == deltas


@pytest.mark.parametrize("cut_after", [1, 4, 17])
def test_a_cut_stream_resumes_with_exactly_the_missing_events(client, stack, cut_after):
    stream = client.responses.create(
        model=MODEL, input="Resume me.", stream=True, background=True, metadata=knobs(1500, 240)
    )
    head = []
    for event in stream:
        head.append(event)
        if len(head) == cut_after:
            break
    stream.close()
    run_id = head[0].response.id
    tail = list(client.responses.retrieve(run_id, stream=True, starting_after=head[-1].sequence_number))
    everything = list(client.responses.retrieve(run_id, stream=True))  # without starting_after: from the start
    assert [e.sequence_number for e in head + tail] == [e.sequence_number for e in everything]
    assert [e.type for e in head + tail] == [e.type for e in everything]
    assert everything[-1].type == "response.completed"


def test_a_foreground_run_longer_than_the_wait_answers_in_progress_then_completes(client, stack):
    from ..stack import FACADE_MAX_WAIT_SECONDS

    started = time.monotonic()
    response = client.responses.create(model=MODEL, input="long foreground", metadata=knobs(12000, 100))
    waited = time.monotonic() - started
    assert response.status in ("queued", "in_progress") and FACADE_MAX_WAIT_SECONDS - 1 <= waited < 60, (
        waited,
        response,
    )
    while response.status in ("queued", "in_progress"):
        time.sleep(0.5)
        response = client.responses.retrieve(response.id)
    assert response.status == "completed" and len(response.output_text) == 100


def test_cancel_is_idempotent_and_the_cancelled_stream_ends_with_its_status(client, stack):
    created = client.responses.create(
        model=MODEL, input="cancel me", background=True, stream=False, metadata=knobs(20000, 200)
    )
    cancelled = client.responses.cancel(created.id)
    assert cancelled.status == "cancelled" and cancelled.id == created.id
    assert client.responses.cancel(created.id).status == "cancelled"
    assert client.responses.retrieve(created.id).status == "cancelled"
    assert provider_response(stack, created.id)["status"] == "cancelled"
    events = list(client.responses.retrieve(created.id, stream=True))
    assert events[-1].type == "response.incomplete" and events[-1].response.status == "cancelled"


def test_a_failed_run_is_a_failed_response_with_the_providers_error(client):
    response = client.responses.create(model=MODEL, input="fail", metadata=knobs(300, 40, emulator_outcome="failed"))
    assert response.status == "failed" and response.error.code == "server_error" and response.output_text == ""


def test_delete_removes_the_run_and_the_provider_response(client, stack):
    response = client.responses.create(model=MODEL, input="delete me", metadata=knobs(200, 30))
    provider_id = provider_response(stack, response.id)["id"]
    assert client.responses.delete(response.id) is None
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)
    assert stack.get(f"/api/runs/{response.id}").status_code == 404
    with pytest.raises(openai.NotFoundError):
        openai.OpenAI(base_url=stack.emulator.base_url, api_key="x").responses.retrieve(provider_id)


def test_input_items_are_listed_from_the_stored_request(client):
    items = [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "second"},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "third"}]},
    ]
    response = client.responses.create(model=MODEL, input=items, metadata=knobs(200, 30))
    listed = client.responses.input_items.list(response.id)
    assert [item.content[0].text for item in listed.data] == ["third", "second", "first"]  # newest first
    page = client.responses.input_items.list(response.id, order="asc", limit=2)
    assert [item.content[0].text for item in page.data] == ["first", "second"] and page.has_more
    rest = client.responses.input_items.list(response.id, order="asc", after=page.data[-1].id)
    assert [item.content[0].text for item in rest.data] == ["third"] and not rest.has_more


def test_errors_are_openais(client, stack, recorder):
    with pytest.raises(openai.NotFoundError) as missing:
        client.responses.retrieve("run_0123456789abcdef01234567")
    assert missing.value.body["message"] == "Response with id 'run_0123456789abcdef01234567' not found."
    with pytest.raises(openai.BadRequestError) as unknown:
        client.responses.create(model=MODEL, input="x", extra_body={"frobnicate": 1})
    assert unknown.value.body["param"] == "frobnicate" and unknown.value.code == "unknown_parameter"
    for refused in ({"conversation": "conv_1"}, {"store": False}, {"stream_options": {"include_obfuscation": False}}):
        with pytest.raises(openai.BadRequestError) as error:
            client.responses.create(model=MODEL, input="x", **refused)
        assert error.value.body["param"] == next(iter(refused))
    with pytest.raises(openai.NotFoundError) as chain:
        client.responses.create(model=MODEL, input="x", previous_response_id="run_0123456789abcdef01234567")
    assert chain.value.body["param"] == "previous_response_id"
    intruder = openai.OpenAI(
        base_url=str(client.base_url), api_key="wrong-" + "k" * 40, http_client=recorder.sync_client(), max_retries=0
    )
    with pytest.raises(openai.AuthenticationError) as denied:
        intruder.responses.retrieve("run_0123456789abcdef01234567")
    assert denied.value.status_code == 401 and denied.value.code == "invalid_api_key"
    no_key = stack.get("/api/v1/responses/run_0123456789abcdef01234567")  # the SDK refuses to send none
    assert no_key.status_code == 401 and no_key.json()["error"]["code"] == "invalid_api_key"
    validate("ErrorResponse", no_key.json())
    assert all(status >= 400 for status in recorder.statuses())


def test_owners_see_only_their_runs_and_operators_see_all(stack, base_url, recorder):
    def as_(name):
        return openai.OpenAI(
            base_url=base_url, api_key=FACADE_KEYS[name], http_client=recorder.sync_client(), max_retries=0
        )

    alice, bob, ops = as_("alice"), as_("bob"), as_("ops")
    mine = alice.responses.create(model=MODEL, input="alice's", metadata=knobs(200, 30))
    for attempt in (
        lambda: bob.responses.retrieve(mine.id),
        lambda: bob.responses.cancel(mine.id),
        lambda: bob.responses.delete(mine.id),
        lambda: bob.responses.input_items.list(mine.id),
        lambda: bob.responses.create(model=MODEL, input="x", previous_response_id=mine.id),
    ):
        with pytest.raises(openai.NotFoundError):
            attempt()
    assert ops.responses.retrieve(mine.id).output_text == mine.output_text
    assert alice.responses.retrieve(mine.id).output_text == mine.output_text


def test_idempotency_key_is_per_caller(stack, base_url):
    headers = {"Idempotency-Key": f"key-{time.time_ns()}"}
    alice = openai.OpenAI(base_url=base_url, api_key=FACADE_KEYS["alice"])
    bob = openai.OpenAI(base_url=base_url, api_key=FACADE_KEYS["bob"])
    first = alice.responses.create(
        model=MODEL, input="once", background=True, metadata=knobs(500, 20), extra_headers=headers
    )
    again = alice.responses.create(
        model=MODEL, input="once", background=True, metadata=knobs(500, 20), extra_headers=headers
    )
    other = bob.responses.create(
        model=MODEL, input="once", background=True, metadata=knobs(500, 20), extra_headers=headers
    )
    assert first.id == again.id != other.id
    assert len(stack.provider_responses(first.id)) == 1


def test_a_run_started_in_one_api_reads_through_the_other(stack, base_url):
    ops = openai.OpenAI(base_url=base_url, api_key=FACADE_KEYS["ops"])
    alice = openai.OpenAI(base_url=base_url, api_key=FACADE_KEYS["alice"])
    native = stack.start("native run", metadata=knobs(300, 50), background=False).json()
    assert native["status"] == "completed"
    through_facade = ops.responses.retrieve(native["id"])
    assert through_facade.output_text == native["output_text"] and through_facade.id == native["id"]
    with pytest.raises(openai.NotFoundError):  # native runs have no owner: only operators see them
        alice.responses.retrieve(native["id"])
    facade = alice.responses.create(model=MODEL, input="facade run", metadata=knobs(300, 50))
    run = stack.get(f"/api/runs/{facade.id}").json()  # function keys act as operators
    assert run["output_text"] == facade.output_text and run["provider_response_id"].startswith("resp_")


def test_a_webhook_given_in_extra_body_is_delivered_signed(client, stack):
    import standardwebhooks

    from ..stack import WEBHOOK_SECRETS

    name = f"facade-{time.time_ns()}"
    response = client.responses.create(
        model=MODEL,
        input="notify",
        background=True,
        metadata=knobs(400, 30),
        extra_body={"webhook_url": stack.hook_url(name), "deadline_seconds": 120},
    )
    deadline = time.monotonic() + 40
    while not stack.received(name) and time.monotonic() < deadline:
        time.sleep(0.3)
    [delivery] = stack.received(name)
    event = standardwebhooks.Webhook(WEBHOOK_SECRETS[0]).verify(delivery["body"], delivery["headers"])
    assert event["type"] == "run.completed" and event["data"]["id"] == response.id
    assert event["data"]["output_text"] == client.responses.retrieve(response.id).output_text


def test_polling_every_200_ms_costs_the_provider_nothing_extra(client, stack):
    polled = client.responses.create(model=MODEL, input="polled", background=True, metadata=knobs(20000, 50))
    unpolled = client.responses.create(model=MODEL, input="unpolled", background=True, metadata=knobs(20000, 50))
    polls = 0
    response = polled
    while response.status in ("queued", "in_progress"):
        time.sleep(0.2)
        response = client.responses.retrieve(polled.id)
        polls += 1
    while client.responses.retrieve(unpolled.id).status in ("queued", "in_progress"):
        time.sleep(1)
    retrieves = {
        name: provider_response(stack, run.id)["counters"]["retrieve"]
        for name, run in (("polled", polled), ("unpolled", unpolled))
    }
    assert polls >= 50
    # Both are read by the service's own poll chain only (its jittered backoff may differ by one look).
    assert retrieves["polled"] <= retrieves["unpolled"] + 1, retrieves


async def test_async_azure_openai_client_cancels_and_deletes(stack, recorder):
    client = openai.AsyncAzureOpenAI(
        azure_endpoint=f"{stack.host.base_url}/api",
        api_key=FACADE_KEYS["alice"],
        api_version="2025-04-01-preview",
        http_client=recorder.async_client(),
        max_retries=0,
    )
    async with client:
        created = await client.responses.create(
            model=MODEL, input="async azure", background=True, metadata=knobs(20000, 50)
        )
        assert (await client.responses.cancel(created.id)).status == "cancelled"
        await client.responses.delete(created.id)
        with pytest.raises(openai.NotFoundError):
            await client.responses.retrieve(created.id)


def test_provider_stream_drops_are_invisible_through_the_facade(client, stack):
    events = list(
        client.responses.create(
            model=MODEL,
            input="flaky provider stream",
            stream=True,
            background=True,
            metadata=knobs(1500, 200, emulator_stream_cut_after="7"),
        )
    )
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[-1].type == "response.completed" and len(events[-1].response.output_text) == 200
    assert provider_response(stack, events[0].response.id)["counters"]["stream"] >= 2  # the relay reconnected


def test_health_details_count_the_facades_callers_without_showing_a_key(stack):
    details = stack.get("/api/health/details", headers={"x-functions-key": stack.local.master_key})
    assert details.json()["checks"]["responses_api"] == {"callers": 3, "keys": 3}
    assert all(key not in details.text for key in FACADE_KEYS.values())
