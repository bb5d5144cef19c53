"""The console's JSON API (/api/console/api/...) on the local stack: the Responses API keys decide who sees and
steers what (a caller only its own runs, another caller's run is 404 as an unknown id; an operator every run and
the operator view), 401 without a key; the page and its assets come with a strict Content-Security-Policy."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from .. import sse
from ..stack import FACADE_KEYS

RUN_ROUTES = (("GET", ""), ("GET", "/stream"), ("POST", "/cancel"), ("DELETE", ""), ("POST", "/webhook/redeliver"))


@pytest.fixture(scope="module")
def console(stack):
    """A client of the console API per caller (alice, bob, ops), and one with no key."""
    clients = {
        name: httpx.Client(
            base_url=f"{stack.host.base_url}/api/console/api", timeout=30, headers={"Authorization": f"Bearer {key}"}
        )
        for name, key in FACADE_KEYS.items()
    }
    clients[None] = httpx.Client(base_url=f"{stack.host.base_url}/api/console/api", timeout=30)
    yield clients
    for client in clients.values():
        client.close()


def openapi_validator(schema: str) -> Draft202012Validator:
    """A validator of openapi.yaml's components/schemas/<schema> (its $refs resolved in the document)."""
    document = yaml.safe_load((Path(__file__).resolve().parents[2] / "openapi.yaml").read_text())
    registry = Registry().with_resource("urn:openapi", Resource.from_contents(document, DRAFT202012))
    return Draft202012Validator({"$ref": f"urn:openapi#/components/schemas/{schema}"}, registry=registry)


def wait_until(read, done, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = read()
        if done(value):
            return value
        time.sleep(0.3)
    raise AssertionError(f"not done in {timeout}s: {value}")


def test_without_a_key_or_with_a_wrong_one_every_route_is_401(stack, console):
    wrong = httpx.Client(base_url=console[None].base_url, headers={"Authorization": "Bearer " + "x" * 40})
    run_id = stack.start_as("alice")
    routes = [("GET", "/me"), ("GET", "/runs"), ("GET", "/operations")] + [
        (method, f"/runs/{run_id}{suffix}") for method, suffix in RUN_ROUTES
    ]
    for client in (console[None], wrong):
        for method, path in routes:
            response = client.request(method, path)
            assert response.status_code == 401, (method, path, response.text)
            assert response.json()["error"]["code"] == "invalid_api_key"
            assert response.headers["www-authenticate"].startswith("Bearer")
            assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    assert console["alice"].get(f"/runs/{run_id}").status_code == 200  # the run is untouched


def test_a_caller_sees_and_steers_only_its_own_runs(stack, console):
    hook = stack.hook_url("console-isolation")
    alices = stack.start_as("alice", "alice's secret", duration_ms=20000, webhook_url=hook)
    bobs = stack.start_as("bob", "bob's", duration_ms=300)
    native = stack.start("native", metadata={"emulator_duration_ms": "300"}).json()["id"]

    for method, suffix in RUN_ROUTES:  # bob cannot read, follow, cancel, delete or redeliver alice's run
        response = console["bob"].request(method, f"/runs/{alices}{suffix}")
        assert response.status_code == 404 and response.json()["error"]["code"] == "not_found", (method, suffix)
        assert "secret" not in response.text
    assert console["bob"].get(f"/runs/{native}").status_code == 404  # nor the native API's
    bob_ids = [r["id"] for r in console["bob"].get("/runs", params={"limit": 100}).json()["data"]]
    assert bobs in bob_ids and alices not in bob_ids and native not in bob_ids
    assert console["bob"].get("/runs", params={"owner": "alice"}).json()["data"] == []

    run = console["alice"].get(f"/runs/{alices}").json()
    assert run["status"] in ("queued", "in_progress") and run["owner"] == "alice"  # bob's cancel changed nothing
    assert {e["type"] for e in run["timeline"]["entries"]} >= {"created", "provider_accepted"}

    everyone = [r["id"] for r in console["ops"].get("/runs", params={"limit": 10}).json()["data"]]
    assert {alices, bobs, native} <= set(everyone)
    alices_only = console["ops"].get("/runs", params={"owner": "alice", "limit": 100}).json()["data"]
    assert alices in [r["id"] for r in alices_only] and {r["owner"] for r in alices_only} == {"alice"}
    assert console["ops"].get(f"/runs/{native}").json()["owner"] is None

    cancelled = console["alice"].post(f"/runs/{alices}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"


def test_who_am_i_and_the_operator_view(stack, console):
    assert console["alice"].get("/me").json() == {"caller": "alice", "operator": False}
    me = console["ops"].get("/me").json()
    assert me["operator"] and {c["name"] for c in me["callers"]} == {"alice", "bob", "ops"}

    refused = console["alice"].get("/operations")
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "operator_only"

    running = stack.start_as("bob", duration_ms=20000)
    operations = console["ops"].get("/operations").json()
    checks = operations["health"]["checks"]
    assert operations["health"]["status"] == "healthy" and checks["storage"] == "ok"
    assert checks["provider"]["kind"] == "emulator" and checks["backend"]["run_backend"] == "background"
    assert checks["completion"]["strategy"] == "poll" and checks["webhooks"]["enabled"] is True
    assert operations["metrics"]["scope"] == "this process only" and operations["metrics"]["storage_requests_total"] > 0
    in_flight = operations["in_flight"]
    assert in_flight["callers"]["bob"]["active"] >= 1 and in_flight["callers"]["ops"]["operator"] is True
    assert in_flight["complete"] is True
    assert "RESPONSES_API_KEYS" not in str(operations) and FACADE_KEYS["ops"] not in str(operations)
    capacity = operations["capacity"]  # the session stack sets no quota: every caller unlimited, no slot kept
    assert set(capacity["callers"]) >= {"alice", "bob", "ops", "@native"}
    assert capacity["callers"]["bob"] == {
        "max_active_runs": 0,
        "starts_per_minute": 0,
        "active_slots": None,
        "active_runs": in_flight["callers"]["bob"]["active"],
        "status_queued": in_flight["callers"]["bob"]["queued"],
        "waiting_for_capacity": 0,
    }  # the emulator has room
    assert capacity["deployments"] == [{"name": "gpt-4.1-mini", "provider": "emulator", "default": True}]
    problems = [error.message for error in openapi_validator("ConsoleOperations").iter_errors(operations)]
    assert problems == []
    console["bob"].post(f"/runs/{running}/cancel")


def test_a_run_shows_its_webhook_lag_and_its_owner_redelivers_and_deletes_it(stack, console):
    name = "console-lag"
    run_id = stack.start_as("alice", duration_ms=300, webhook_url=stack.hook_url(name))
    run = wait_until(
        lambda: console["alice"].get(f"/runs/{run_id}").json(),
        lambda r: r.get("webhook", {}).get("state") == "delivered",
    )
    finished = next(e for e in run["timeline"]["entries"] if e["type"] == "finished")
    assert finished["provider_completed_at"] == run["provider_ended_at"]  # the provider's own completed_at
    delivered_at = next(e["at"] for e in run["timeline"]["entries"] if e["type"] == "webhook_attempt")
    assert run["webhook_lag_seconds"] == pytest.approx(delivered_at - run["provider_ended_at"], abs=0.01)
    assert 0 <= run["webhook_lag_seconds"] < 30 and run["webhook"]["next_attempt_at"] is None
    listed = next(r for r in console["alice"].get("/runs").json()["data"] if r["id"] == run_id)
    assert listed["webhook"] == {"state": "delivered", "attempts": 1, "lag_seconds": run["webhook_lag_seconds"]}

    redelivered = console["alice"].post(f"/runs/{run_id}/webhook/redeliver")
    assert redelivered.status_code == 202 and redelivered.json()["webhook"]["state"] == "pending"
    wait_until(lambda: len(stack.received(name)), lambda n: n == 2)
    assert len({d["headers"]["webhook-id"] for d in stack.received(name)}) == 1

    deleted = console["alice"].delete(f"/runs/{run_id}")
    assert deleted.json() == {"id": run_id, "object": "run", "deleted": True}
    assert console["alice"].get(f"/runs/{run_id}").status_code == 404
    assert run_id not in [r["id"] for r in console["ops"].get("/runs").json()["data"]]


def test_the_stream_resumes_exactly_after_last_event_id(stack, console):
    run_id = stack.start_as("alice", duration_ms=3000)
    with console["alice"].stream("GET", f"/runs/{run_id}/stream") as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        assert "default-src 'self'" in response.headers["content-security-policy"]
        first = []
        for event in sse.parse(response.iter_lines()):
            first.append(event)
            if sum(e.event == "output_text.delta" for e in first) == 5:
                break  # the connection drops here
    cut = first[-1].id
    rest = sse.read(console["alice"], "GET", f"/runs/{run_id}/stream", headers={"Last-Event-ID": str(cut)})
    assert rest[0].id == cut + 1 and rest[-1].event == "run.completed"
    assert "".join(e.delta for e in first + rest) == rest[-1].data["run"]["output_text"]


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"status": "sleeping"}, "status"),
        ({"limit": "x"}, "limit"),
        ({"limit": "500"}, "limit"),
        ({"owner": "a/b"}, "owner"),
        ({"session_id": "../x"}, "session_id"),
        ({"cursor": "zz"}, "cursor"),
    ],
)
def test_bad_list_parameters_are_400s_naming_them(console, params, param):
    response = console["ops"].get("/runs", params=params)
    assert response.status_code == 400 and response.json()["error"]["param"] == param


def test_the_page_and_its_assets(stack):
    base = f"{stack.host.base_url}/api/console"
    page = httpx.get(base)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    for directive in (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "frame-ancestors 'none'",
        "require-trusted-types-for 'script'",
        "trusted-types 'none'",
    ):
        assert directive in policy
    assert "<script>" not in page.text and " style=" not in page.text and "on" + "click=" not in page.text
    assert httpx.get(f"{base}/").headers["location"] == "/api/console"
    script = httpx.get(f"{base}/assets/app.js")
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
    assert script.headers["x-content-type-options"] == "nosniff"
    for name in ("nope.js", "..%2F..%2Ffunction_app.py", "index.html"):
        assert httpx.get(f"{base}/assets/{name}").status_code == 404, name
