"""Several deployments, like separate Azure OpenAI resources: each its own base URL, store, quotas, faults and
webhook signing secret; each can be taken down (connection refused, or 503s) and brought up at runtime."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from local.emulator import EmulatorServer
from local.emulator.control import EmulatorControl
from local.stack import EmulatorProcess

from .receiver import Receiver

QUICK = {"emulator_duration_ms": "0"}


@pytest.fixture(scope="module")
def receiver():
    r = Receiver().start()
    yield r
    r.stop()


@pytest.fixture(scope="module")
def fleet(receiver):
    server = EmulatorServer(
        port=0,
        time_scale=0.02,
        webhook_url=receiver.url("fleet"),
        deployments={"ptu": {"rpm_limit": 2, "quota_window_s": 600}, "payg": {}},
    ).start_in_thread()
    yield server
    server.stop()


@pytest.fixture
def ctl(fleet) -> EmulatorControl:
    control = EmulatorControl(fleet.base_url)
    yield control
    for name in ("ptu", "payg"):
        control.bring_up(name)
        control.reset(name)


def sdk(base_url: str, **kw) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key="k", max_retries=kw.pop("max_retries", 0), **kw)


def test_each_deployment_has_its_own_url_and_store(fleet, ctl):
    urls = ctl.deployment_urls()
    assert list(urls) == ["ptu", "payg"] and urls["ptu"] == fleet.base_url != urls["payg"]
    assert fleet.deployment("payg").base_url == urls["payg"]
    ptu, payg = sdk(urls["ptu"]), sdk(urls["payg"])
    r = ptu.responses.create(model="m", input="x", background=True, metadata=QUICK)
    assert ptu.responses.retrieve(r.id).status == "completed"
    with pytest.raises(openai.NotFoundError):
        payg.responses.retrieve(r.id)  # created at ptu, unknown at payg
    with pytest.raises(openai.NotFoundError) as exc:
        payg.responses.create(model="m", input="more", previous_response_id=r.id)
    assert exc.value.code == "previous_response_not_found"
    with pytest.raises(openai.NotFoundError):
        payg.responses.cancel(r.id)
    assert [row["id"] for row in ctl.responses("ptu")] == [r.id] and ctl.responses("payg") == []


def test_each_deployment_has_its_own_quotas_and_faults(ctl):
    ptu, payg = sdk(ctl.deployment_url("ptu")), sdk(ctl.deployment_url("payg"))
    for _ in range(2):
        ptu.responses.create(model="m", input="x", background=True, metadata=QUICK)
    with pytest.raises(openai.RateLimitError):
        ptu.responses.create(model="m", input="x", background=True, metadata=QUICK)
    for _ in range(3):  # payg has no limit
        payg.responses.create(model="m", input="x", background=True, metadata=QUICK)
    ctl.set_quota("payg", rpm=1)  # changed at runtime, payg only
    try:
        payg.responses.create(model="m", input="x", background=True, metadata=QUICK)
        with pytest.raises(openai.RateLimitError):
            payg.responses.create(model="m", input="x", background=True, metadata=QUICK)
        assert ctl.config("ptu")["rpm_limit"] == 2
        ctl.configure("payg", rpm_limit=0, fault_503_rate=1.0)
        with pytest.raises(openai.InternalServerError):
            payg.responses.create(model="m", input="x")
        ctl.reset("ptu")
        ptu.responses.create(model="m", input="x", background=True, metadata=QUICK)  # ptu has no faults
    finally:
        ctl.configure("payg", rpm_limit=0, fault_503_rate=0.0)


def test_each_deployment_signs_webhooks_with_its_own_secret(fleet, ctl, receiver):
    secrets = {}
    for name in ("ptu", "payg"):
        eps = httpx.get(f"{ctl.deployment_url(name)}/_emulator/webhook_endpoints").json()["data"]
        assert [ep["url"] for ep in eps] == [receiver.url("fleet")]
        secrets[name] = eps[0]["signing_secret"]
    assert secrets["ptu"] != secrets["payg"]
    ids = {
        name: sdk(ctl.deployment_url(name)).responses.create(model="m", input="x", background=True, metadata=QUICK).id
        for name in secrets
    }
    receiver.wait_for(lambda ds: all(any(i.encode() in d.body for d in ds) for i in ids.values()))
    for name, resp_id in ids.items():
        delivery = receiver.for_response(resp_id)[0]
        other = secrets["payg" if name == "ptu" else "ptu"]
        event = sdk(ctl.deployment_url(name)).webhooks.unwrap(delivery.body, delivery.headers, secret=secrets[name])
        assert event.data.id == resp_id
        with pytest.raises(openai.InvalidWebhookSignatureError):
            sdk(ctl.deployment_url(name)).webhooks.unwrap(delivery.body, delivery.headers, secret=other)


def test_refused_outage_then_back_on_the_same_port(fleet, ctl, receiver):
    url = ctl.deployment_url("payg")
    payg = sdk(url)
    t0 = time.monotonic()
    slow = payg.responses.create(
        model="m", input="x", background=True, metadata={"emulator_duration_ms": "200000"}
    )  # ends 4 s from now
    stream = payg.responses.retrieve(slow.id, stream=True)
    first = next(iter(stream))
    assert first.type == "response.created"
    down = ctl.take_down("payg", "refuse")
    assert down["outage"] == "refuse" and down["port"] == fleet.deployment("payg").port
    with pytest.raises(openai.APIConnectionError):  # the live stream is cut with the connection
        for _event in stream:
            pass
    with pytest.raises(openai.APIConnectionError) as exc:  # new connections are refused: nothing was sent
        payg.responses.create(model="m", input="x", background=True)
    cause = exc.value.__cause__  # the SDK's own httpx: compare by name
    assert type(cause).__name__ == "ConnectError" and "refused" in str(cause).lower()
    ptu = sdk(ctl.deployment_url("ptu"))
    ptu.responses.create(model="m", input="x", background=True, metadata=QUICK)  # the other one is unaffected
    time.sleep(max(0.0, t0 + 5 - time.monotonic()))  # the slow response ends during the outage...
    assert [d["outage"] for d in ctl.deployments()] == [None, "refuse"]
    back_at = time.time()
    assert ctl.bring_up("payg")["outage"] is None
    assert payg.responses.retrieve(slow.id).status == "completed"  # it kept its state, on the same URL
    receiver.wait_for(lambda _ds: receiver.for_response(slow.id))  # ...its webhook was held until it was back
    assert min(d.at for d in receiver.for_response(slow.id)) >= back_at


def test_503_outage_and_timed_comeback(ctl):
    payg = sdk(ctl.deployment_url("payg"))
    live = payg.responses.create(
        model="m", input="x", background=True, stream=True, metadata={"emulator_duration_ms": "500000"}
    )
    assert next(iter(live)).type == "response.created"
    down = ctl.take_down("payg", "503")
    assert down["outage"] == "503" and down["up_at"] is None
    with pytest.raises(openai.APIConnectionError):  # a live stream is cut, as by a failing resource
        for _event in live:
            pass
    with pytest.raises(openai.InternalServerError) as exc:
        payg.responses.create(model="m", input="x")
    assert exc.value.status_code == 503 and exc.value.code == "service_unavailable"
    assert "retry-after" not in exc.value.response.headers
    with pytest.raises(openai.InternalServerError):
        payg.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    assert ctl.stats("payg")["outage_refusals"] == 2  # the control routes keep answering
    assert ctl.take_down("payg", "503", for_s=0.3)["up_at"] > time.time()
    deadline = time.monotonic() + 10
    while ctl.deployments()[1]["outage"] is not None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert payg.responses.create(model="m", input="x", background=True, metadata=QUICK).status == "completed"


def test_primary_refusing_is_controlled_through_another_port(fleet, ctl):
    ctl.take_down("ptu", "refuse")  # the primary's own port closes
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{fleet.base_url}/_emulator/stats")
    ctl.set_quota("ptu", rpm=7)  # settings still reach it, through payg's port
    assert ctl.bring_up("ptu")["outage"] is None
    assert ctl.config("ptu")["rpm_limit"] == 7
    ctl.set_quota("ptu", rpm=2)


def test_control_input_is_checked(fleet, ctl):
    url = f"{fleet.base_url}/_emulator/deployments"
    for body, status, param in (
        ({"outage": "fire"}, 400, "outage"),
        ({}, 400, "outage"),
        ({"outage": "503", "for_s": -1}, 400, "for_s"),
        ({"outage": None, "for_s": 5}, 400, "for_s"),
        ({"outage": "503", "extra": 1}, 400, "outage"),
    ):
        reply = httpx.post(f"{url}/payg", json=body)
        assert reply.status_code == status and reply.json()["error"]["param"] == param, body
    assert httpx.post(f"{url}/nope", json={"outage": "503"}).status_code == 404
    assert [d["outage"] for d in ctl.deployments()] == [None, None]
    assert fleet.set_outage("payg", "503")["outage"] == "503"  # in-process, from another thread
    assert httpx.post(f"{ctl.deployment_url('payg')}/responses", json={"model": "m"}).status_code == 503
    assert fleet.set_outage("payg", None)["outage"] is None


def test_single_default_deployment_cannot_lock_itself_out(tmp_path):
    with EmulatorServer(port=0, time_scale=0.02) as emu:
        control = EmulatorControl(emu.base_url)
        assert [d["name"] for d in control.deployments()] == ["default"]
        reply = httpx.post(f"{emu.base_url}/_emulator/deployments/default", json={"outage": "refuse"})
        assert reply.status_code == 409 and reply.json()["error"]["param"] == "for_s"
        control.take_down("default", "refuse", for_s=2)
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{emu.base_url}/_emulator/stats")
        with pytest.raises(httpx.ConnectError):  # no other port to go through
            control.configure(seed=1)
        deadline = time.monotonic() + 10
        while True:
            try:
                if httpx.get(f"{emu.base_url}/_emulator/stats").status_code == 200:
                    break
            except httpx.ConnectError:
                assert time.monotonic() < deadline
                time.sleep(0.05)


def test_each_deployment_persists_to_its_own_db(tmp_path):
    db = tmp_path / "emu.sqlite"
    spec = {"ptu": {}, "payg": {}}
    with EmulatorServer(port=0, time_scale=0.02, db=str(db), deployments=spec) as emu:
        payg_port = emu.deployment("payg").port
        resp_id = sdk(emu.deployment("payg").base_url).responses.create(model="m", input="x", background=True).id
    assert (tmp_path / "emu.sqlite.payg").exists()
    with EmulatorServer(
        port=0, time_scale=0.02, db=str(db), deployments={"ptu": {}, "payg": {"port": payg_port}}
    ) as emu:
        assert sdk(emu.deployment("payg").base_url).responses.retrieve(resp_id).id == resp_id
        with pytest.raises(openai.NotFoundError):
            sdk(emu.deployment("ptu").base_url).responses.retrieve(resp_id)


def test_subprocess_emulator_with_deployments_for_benches(tmp_path):
    """What a bench runs: `python -m local.emulator --deployments ...` via the stack, controlled by the helper."""
    emu = EmulatorProcess(
        tmp_path / "emulator.log", time_scale=0.02, deployments={"ptu": {"rpm_limit": 1}, "payg": {}}
    ).start()
    try:
        assert emu.deployment_urls() == {d["name"]: d["base_url"] for d in emu.deployments()}
        ptu = sdk(emu.deployment_url("ptu"))
        ptu.responses.create(model="m", input="x", background=True, metadata=QUICK)
        with pytest.raises(openai.RateLimitError):
            ptu.responses.create(model="m", input="x", background=True, metadata=QUICK)
        emu.take_down("ptu", "refuse")
        with pytest.raises(openai.APIConnectionError):
            ptu.responses.create(model="m", input="x")
        emu.set_quota("ptu", rpm=0)
        emu.bring_up("ptu")
        ptu.responses.create(model="m", input="x", background=True, metadata=QUICK)
        assert len(emu.responses("ptu")) == 2 and emu.responses("payg") == []
    finally:
        emu.stop()
    assert emu.proc.returncode == 0  # a clean stop on SIGTERM
