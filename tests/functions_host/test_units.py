"""Fast in-process checks of the host's building blocks (no Azurite, no subprocess)."""

import asyncio
import sys
from datetime import UTC, datetime

import aiohttp
import openai  # noqa: F401 - its lazy module proxies are what connection_pools() must not wake
import pytest

from local.functions_host.errors import StartupError
from local.functions_host.http import Keys, connection_pools
from local.functions_host.routing import compile_route
from local.functions_host.settings import load_host_json, parse_timespan, resolve_expression
from local.functions_host.timers import CronSchedule, parse_schedule


def test_route_templates():
    assert compile_route("runs/{run_id}").match("runs/abc") == {"run_id": "abc"}
    assert compile_route("runs/{run_id}").match("RUNS/abc") == {"run_id": "abc"}  # literals: case-insensitive
    assert compile_route("runs/{run_id}").match("runs/abc/x") is None
    assert compile_route("items/{id:int}").match("items/12") == {"id": "12"}
    assert compile_route("items/{id:int}").match("items/x") is None
    assert compile_route("files/{*rest}").match("files/a/b/c") == {"rest": "a/b/c"}
    assert compile_route("files/{*rest}").match("files") == {}
    assert compile_route("v/{id?}").match("v") == {}
    assert compile_route("v/{id=7}").match("v") == {"id": "7"}
    assert compile_route("{a}.{b}").match("x.json") == {"a": "x", "b": "json"}
    assert compile_route("c/{code:regex(^\\d{{3}}$)}").match("c/123") is not None
    # literal segments sort before parameters (runs/latest wins over runs/{run_id})
    assert compile_route("runs/latest").sort_key < compile_route("runs/{run_id}").sort_key
    assert compile_route("a/{x:int}").sort_key < compile_route("a/{x}").sort_key < compile_route("a/{*x}").sort_key
    with pytest.raises(StartupError):
        compile_route("a/{*rest}/b")
    with pytest.raises(StartupError):
        compile_route("a/{x:nosuchconstraint}")


def test_keys():
    none = Keys.parse(None, None)
    assert none.allows("function", "f", None) and none.allows("admin", None, None)
    keys = Keys.parse("mk", "hk, secure=fk")
    assert keys.allows("anonymous", "f", None)
    assert not keys.allows("function", "f", None)
    assert keys.allows("function", "f", "hk") and keys.allows("function", "f", "mk")
    assert keys.allows("function", "secure", "fk") and not keys.allows("function", "other", "fk")
    assert not keys.allows("admin", None, "hk") and keys.allows("admin", None, "mk")


def test_settings(tmp_path, monkeypatch):
    assert parse_timespan("00:00:02", what="x") == 2
    assert parse_timespan("1.00:00:00", what="x") == 86400
    assert parse_timespan("00:00:00.500", what="x") == 0.5
    assert parse_timespan("-1", what="x") is None
    assert resolve_expression("q-%N%", what="x", environ={"N": "abc"}) == "q-abc"
    with pytest.raises(StartupError, match="NOPE"):
        resolve_expression("%NOPE%", what="x", environ={})
    (tmp_path / "host.json").write_text('{"version": "2.0", "extensions": {"queues": {"batchSize": 8}}}')
    monkeypatch.setattr("os.cpu_count", lambda: 4)
    cfg = load_host_json(tmp_path, environ={})
    assert cfg.route_prefix == "api"
    assert cfg.queues.batch_size == 8 and cfg.queues.new_batch_threshold == 16  # (8 // 2) * 4 cores
    assert cfg.queues.max_polling_interval == 2.0 and cfg.queues.max_dequeue_count == 5
    assert cfg.queues.message_encoding == "base64" and cfg.function_timeout == 1800  # Flex default
    (tmp_path / "host.json").write_text('{"version": "2.0", "extensions": {"http": {"routePrefix": ""}}}')
    assert load_host_json(tmp_path, environ={}).route_prefix == ""


def test_ncrontab():
    t0 = datetime(2025, 1, 1, 0, 0, 0, tzinfo=UTC)
    every_second = CronSchedule.parse("* * * * * *")
    assert every_second.next_after(t0) == datetime(2025, 1, 1, 0, 0, 1, tzinfo=UTC)
    five_min = CronSchedule.parse("0 */5 * * * *")
    assert five_min.next_after(t0) == datetime(2025, 1, 1, 0, 5, 0, tzinfo=UTC)
    weekdays_9_30 = CronSchedule.parse("0 30 9 * * 1-5")  # 2025-01-04 is a Saturday
    assert weekdays_9_30.next_after(datetime(2025, 1, 3, 10, 0, tzinfo=UTC)) == datetime(2025, 1, 6, 9, 30, tzinfo=UTC)
    named = CronSchedule.parse("0 0 12 * Feb Mon")
    assert named.next_after(t0) == datetime(2025, 2, 3, 12, 0, tzinfo=UTC)
    assert parse_schedule("00:00:10").next_after(t0) == datetime(2025, 1, 1, 0, 0, 10, tzinfo=UTC)
    with pytest.raises(StartupError, match="6 fields"):
        CronSchedule.parse("*/5 * * * *")
    with pytest.raises(StartupError):
        CronSchedule.parse("0 61 * * * *")


async def test_function_timeout_cancels_async_invocation():
    import asyncio

    from local.functions_host.invoker import FunctionTimeoutError, Invoker
    from local.functions_host.loader import FunctionSpec

    state = {}

    async def slow(msg):
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            state["cancelled"] = True
            raise

    spec = FunctionSpec(
        name="slow",
        trigger_type="queueTrigger",
        trigger=None,
        user_function=slow,
        trigger_arg="msg",
        is_async=True,
        wants_context=False,
        directory=".",
    )
    invoker = Invoker(function_timeout=0.2)
    with pytest.raises(FunctionTimeoutError, match=r"Timeout value of 0\.2s exceeded"):
        await invoker.invoke(spec, object(), reason="test")
    await asyncio.wait_for(invoker.wait_idle(), 2)
    assert state == {"cancelled": True}
    invoker.shutdown()


async def test_identity_based_connection_settings():
    from azure.identity.aio import DefaultAzureCredential, ManagedIdentityCredential

    from local.functions_host.queues import make_service_client

    env = {
        "AgentQueue__queueServiceUri": "https://acct.queue.core.windows.net",
        "AgentQueue__credential": "managedidentity",
        "AgentQueue__clientId": "00000000-0000-0000-0000-000000000001",
    }
    client, cred = make_service_client("AgentQueue", env)
    assert client.url.startswith("https://acct.queue.core.windows.net") and isinstance(cred, ManagedIdentityCredential)
    await client.close(), await cred.close()
    client, cred = make_service_client("Other", {"Other__accountName": "acct2"})
    assert "acct2.queue.core.windows.net" in client.url and isinstance(cred, DefaultAzureCredential)
    await client.close(), await cred.close()
    with pytest.raises(StartupError, match="Storage connection 'Missing' is not configured"):
        make_service_client("Missing", {})


def test_init_indexing_rule_follows_the_worker():
    from local.functions_host.settings import check_init_indexing

    for true_like in ("1", "true", "True", " yes ", "t", "y"):
        check_init_indexing(True, {"PYTHON_ENABLE_INIT_INDEXING": true_like}, version=(3, 11))
    for missing in ({}, {"PYTHON_ENABLE_INIT_INDEXING": ""}, {"PYTHON_ENABLE_INIT_INDEXING": "0"}):
        with pytest.raises(StartupError, match="PYTHON_ENABLE_INIT_INDEXING=1"):
            check_init_indexing(True, missing, version=(3, 12))
        check_init_indexing(True, missing, version=(3, 13))  # the 3.13+ worker indexes at init anyway
        check_init_indexing(False, missing, version=(3, 11))  # classic HTTP types: not needed


def test_http_concurrency_values():
    from local.functions_host.settings import http_concurrency

    assert http_concurrency(None) is None and http_concurrency("") is None and http_concurrency(" ") is None
    assert http_concurrency("1") == 1 and http_concurrency(" 1000 ") == 1000 and http_concurrency(16) == 16
    for bad in ("0", "1001", "-3", "2.5", "ten"):
        with pytest.raises(StartupError, match="FUNCTIONS_HOST_HTTP_PER_INSTANCE_CONCURRENCY"):
            http_concurrency(bad)


def test_function_timeout_defaults_to_flex_and_minus_one_is_unbounded(tmp_path):
    import json

    (tmp_path / "host.json").write_text(json.dumps({"version": "2.0"}))
    assert load_host_json(tmp_path).function_timeout == 1800
    (tmp_path / "host.json").write_text(json.dumps({"version": "2.0", "functionTimeout": "-1"}))
    assert load_host_json(tmp_path).function_timeout is None
    (tmp_path / "host.json").write_text(json.dumps({"version": "2.0", "functionTimeout": "00:10:00"}))
    assert load_host_json(tmp_path).function_timeout == 600


def test_counting_connection_pools_finds_them_and_imports_nothing():
    """The soak asks for the pools once a minute: an isinstance() on every object would make openai's lazy
    proxies import ~1,600 modules (tens of MiB of RSS that the soak would then report as the worker's)."""

    async def with_a_connector() -> dict:
        connector = aiohttp.TCPConnector()
        try:
            return connection_pools()
        finally:
            await connector.close()

    before = set(sys.modules)
    pools = asyncio.run(with_a_connector())
    assert set(sys.modules) - before == set()
    assert pools["aiohttp"]["pools"] >= 1 and pools["aiohttp"]["in_use"] == 0
