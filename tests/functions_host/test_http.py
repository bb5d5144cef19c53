"""HTTP triggers through the local host: routing, methods, keys, both HTTP styles, real streaming."""

from __future__ import annotations

import json
import shutil

import httpx
import pytest

from .conftest import APPS


@pytest.fixture(scope="module")
def classic(tmp_path_factory):
    from local.functions_host.process import HostProcess

    host = HostProcess(APPS / "http_classic", log_path=tmp_path_factory.mktemp("classic") / "host.log").start()
    yield host
    host.stop()


@pytest.fixture(scope="module")
def fastapi_host(tmp_path_factory):
    from local.functions_host.process import HostProcess

    host = HostProcess(
        APPS / "http_fastapi",
        env={"PYTHON_ENABLE_INIT_INDEXING": "1"},
        log_path=tmp_path_factory.mktemp("fastapi") / "host.log",
    ).start()
    yield host
    host.stop()


def test_status_endpoint(classic):
    r = httpx.get(classic.url("admin/host/status"))
    assert r.status_code == 200 and r.json()["state"] == "Running"


def test_status_counts_invocations_per_function_and_shows_the_event_loop(classic):
    """bench/soak.py divides the host's CPU by these counts and watches the loop's tasks for growth."""

    def status():
        return httpx.get(classic.url("admin/host/status")).json()

    before = status()["invocations"].get("get_run", {}).get("succeeded", 0)
    for _ in range(3):
        assert httpx.get(classic.url("api/runs/r-1")).status_code == 200
    after = status()
    assert after["invocations"]["get_run"] == {"succeeded": before + 3, "failed": 0}
    process = after["process"]
    assert process["asyncio_tasks"] >= 1 and process["running_invocations"] == 0 and process["allocated_blocks"] > 0
    pools = httpx.get(classic.url("admin/host/pools")).json()
    assert set(pools) == {"aiohttp", "httpx"}
    assert all(set(counts) == {"pools", "in_use", "idle"} and min(counts.values()) >= 0 for counts in pools.values())


def test_classic_routes_params_and_query(classic):
    r = httpx.get(classic.url("api/runs/r-1?x=1&y=two"))
    assert r.status_code == 200
    assert r.json() == {
        "method": "GET",
        "route_params": {"run_id": "r-1"},
        "params": {"x": "1", "y": "two"},
        "body": "",
        "fn": "get_run",
    }
    assert httpx.get(classic.url("api/runs/latest")).json()["fn"] == "latest_run"  # literal beats {run_id}
    assert httpx.get(classic.url("api/items/42")).json()["route_params"] == {"id": "42"}
    assert httpx.get(classic.url("api/items/forty-two")).status_code == 404  # {id:int} constraint
    assert httpx.get(classic.url("api/files/a/b/c.txt")).json()["route_params"] == {"rest": "a/b/c.txt"}
    assert httpx.get(classic.url("api/DefaultRoute")).text == "default route is the function name"
    assert httpx.get(classic.url("runs/r-1")).status_code == 404  # outside the route prefix
    assert httpx.get(classic.url("api/nothing-here")).status_code == 404


def test_classic_response_and_methods(classic):
    r = httpx.post(classic.url("api/runs"), json={"a": 1})  # async def handler
    assert r.status_code == 202 and r.json() == {"got": {"a": 1}}
    assert r.headers["Location"] == "/api/runs/1" and r.headers["Retry-After"] == "5"
    assert r.headers["content-type"].startswith("application/json")
    # A known route with a method it does not allow: the Functions host answers 404 (not 405),
    # azure-functions-host#10098.
    assert httpx.delete(classic.url("api/runs/r-1")).status_code == 404
    assert httpx.put(classic.url("api/runs")).status_code == 404
    assert httpx.get(classic.url("api/boom")).status_code == 500
    classic.wait_for_log(r"Executed 'Functions\.boom' \(Failed, Id=[0-9a-f-]+, Duration=\d+ms\)")
    classic.wait_for_log(r"RuntimeError: boom from the function")


def test_no_keys_needed_without_configuration(classic):
    assert httpx.get(classic.url("api/secure")).text == "secret"
    assert httpx.get(classic.url("api/only-admin")).text == "admin"


def test_function_logs_and_invocation_lines(classic):
    response = httpx.get(classic.url("api/runs/logged"))
    assert response.status_code == 200 and response.json()["fn"] == "get_run", response.text
    # The host is shared by this module's tests: the last get_run invocation is this request's (it has answered).
    executing = classic.wait_for_log(r"Executing 'Functions\.get_run' \(Reason='[^']+', Id=([0-9a-f-]{36})\)")[-1]
    classic.wait_for_log(rf"Executed 'Functions\.get_run' \(Succeeded, Id={executing}")  # the same invocation ended
    assert classic.wait_for_log(r"get_run called for logged") == ["get_run called for logged"]  # python logging


def test_empty_route_prefix_keys_and_local_settings(host_factory, tmp_path):
    app = tmp_path / "app"
    app.mkdir()
    shutil.copy(APPS / "http_classic" / "function_app.py", app / "function_app.py")
    (app / "host.json").write_text(json.dumps({"version": "2.0", "extensions": {"http": {"routePrefix": ""}}}))
    # Keys come from local.settings.json Values; a real environment variable wins over the file.
    (app / "local.settings.json").write_text(
        json.dumps(
            {
                "IsEncrypted": False,
                "Values": {
                    "FUNCTIONS_HOST_FUNCTION_KEYS": "hostkey, secure=securekey",
                    "FUNCTIONS_HOST_MASTER_KEY": "master-from-file",
                },
            }
        )
    )
    host = host_factory(app, env={"FUNCTIONS_HOST_MASTER_KEY": "master-from-env"}).start()
    host.wait_for_log(r"Skipping 'FUNCTIONS_HOST_MASTER_KEY' from local.settings.json")
    assert httpx.get(host.url("runs/r-9")).json()["route_params"] == {"run_id": "r-9"}  # no prefix
    assert httpx.get(host.url("api/runs/r-9")).status_code == 404
    # FUNCTION level: a key is now required, by header or ?code=
    assert httpx.get(host.url("secure")).status_code == 401
    assert httpx.get(host.url("secure"), headers={"x-functions-key": "wrong"}).status_code == 401
    assert httpx.get(host.url("secure"), headers={"x-functions-key": "hostkey"}).text == "secret"
    assert httpx.get(host.url("secure?code=securekey")).text == "secret"
    assert httpx.get(host.url("secure?code=master-from-env")).text == "secret"
    assert httpx.get(host.url("secure?code=master-from-file")).status_code == 401
    # ANONYMOUS never needs one
    assert httpx.get(host.url("runs/r-9")).status_code == 200
    # ADMIN: master key only; also for the admin API
    assert httpx.get(host.url("only-admin?code=hostkey")).status_code == 401
    assert httpx.get(host.url("only-admin?code=master-from-env")).text == "admin"
    assert httpx.get(host.url("admin/host/status")).status_code == 401
    status = httpx.get(host.url("admin/host/status"), headers={"x-functions-key": "master-from-env"})
    assert status.json()["state"] == "Running"


def test_fastapi_route_params_in_path_params(fastapi_host):
    r = httpx.get(fastapi_host.url("api/runs/r-7?x=1"))
    assert r.status_code == 200
    body = r.json()
    assert body["run_id"] == "r-7"
    assert body["path_params"] == {"run_id": "r-7"}  # only the route values, like the worker's synchronizer
    assert body["query"] == {"x": "1"} and body["path"] == "/api/runs/r-7"
    echo = httpx.post(fastapi_host.url("api/echo"), content=b"abc")
    assert echo.status_code == 201 and echo.content == b"cba"
    plain = httpx.get(fastapi_host.url("api/plain/bob")).json()  # sync handler, dict return -> JSON
    assert plain["hello"] == "bob" and plain["thread"].startswith("functions-sync")
    assert httpx.get(fastapi_host.url("api/fail")).status_code == 500
    assert httpx.get(fastapi_host.url("api/echo")).status_code == 404  # POST-only route


def test_fastapi_streaming_is_real(fastapi_host):
    """The first chunk arrives while the handler's generator is blocked on an event only a second
    request can set; if the host buffered the response, reading the first chunk would time out."""
    with httpx.Client(timeout=httpx.Timeout(10.0)) as client:
        with client.stream("GET", fastapi_host.url("api/stream/gate-1")) as response:
            assert response.status_code == 200
            chunks = response.iter_raw()
            assert next(chunks) == b"first chunk\n"
            assert httpx.post(fastapi_host.url("api/release/gate-1")).json() == {"released": "gate-1"}
            rest = b"".join(chunks)
    assert rest == b"second chunk\n"
