"""Queue triggers against real Azurite: encoding, poison, retries, lease renewal, batch concurrency,
graceful stop and SIGKILL recovery."""

from __future__ import annotations

import signal
import time

import httpx
import pytest
from azure.storage.queue import QueueClient, TextBase64DecodePolicy, TextBase64EncodePolicy

from local.functions_host.process import HostProcess

from .conftest import APPS, read_results, unique, wait_until

LEASE = 2  # FUNCTIONS_HOST_QUEUE_LEASE_SECONDS for these hosts (the real host: 10 min)


def queue_env(conn: str, results, **names) -> dict:
    env = {"AzureWebJobsStorage": conn, "RESULTS_FILE": str(results), "FUNCTIONS_HOST_QUEUE_LEASE_SECONDS": str(LEASE)}
    for key in ("ECHO_QUEUE", "FAIL_QUEUE", "SLOW_QUEUE", "CONC_QUEUE"):
        env[key] = names.get(key) or unique(key.split("_")[0].lower())
    return env


def b64_client(conn: str, name: str) -> QueueClient:
    return QueueClient.from_connection_string(
        conn, name, message_encode_policy=TextBase64EncodePolicy(), message_decode_policy=TextBase64DecodePolicy()
    )


def raw_client(conn: str, name: str) -> QueueClient:
    return QueueClient.from_connection_string(conn, name)


def count(conn: str, name: str) -> int:
    return raw_client(conn, name).get_queue_properties().approximate_message_count


def poison_bodies(conn: str, name: str) -> list[str]:
    client = b64_client(conn, f"{name}-poison")
    try:
        return [m.content for m in client.peek_messages(max_messages=32)]
    except Exception:  # noqa: BLE001 - poison queue not created yet
        return []


@pytest.fixture(scope="module")
def qhost(storage_connection_string, tmp_path_factory):
    folder = tmp_path_factory.mktemp("queues")
    env = queue_env(storage_connection_string, folder / "results.jsonl")
    host = HostProcess(APPS / "queues", env=env, log_path=folder / "host.log").start()
    host.results = folder / "results.jsonl"
    yield host
    host.stop()


def test_base64_message_reaches_function_intact(qhost, storage_connection_string):
    conn, q = storage_connection_string, qhost.env["ECHO_QUEUE"]
    body = '{"run": "r1", "text": "héllo ✓"}'
    sent = b64_client(conn, q).send_message(body)
    rec = wait_until(
        lambda: next((r for r in read_results(qhost.results) if r.get("id") == sent.id), None),
        message="echo invocation",
    )
    assert rec["body"] == body and rec["dequeue_count"] == 1
    assert rec["type"] == "azure.functions.queue.QueueMessage" and rec["has_times"] and rec["has_pop_receipt"]
    wait_until(lambda: count(conn, q) == 0, message="message deleted after success")
    # the async queue function ran on the same event loop as the async HTTP function
    assert rec["loop"] == int(httpx.get(qhost.url("api/loop")).text)
    qhost.wait_for_log(rf"Executing 'Functions\.echo' \(Reason='New queue message detected on '{q}'\.', Id=")


def test_undecodable_message_goes_to_poison_without_invoking(qhost, storage_connection_string):
    conn, q = storage_connection_string, qhost.env["ECHO_QUEUE"]
    sent = raw_client(conn, q).send_message('{"not": "base64"}')  # default client: no encoding (the trap)
    wait_until(lambda: '{"not": "base64"}' in poison_bodies(conn, q), message="poison copy")
    wait_until(lambda: count(conn, q) == 0, message="original deleted")
    assert not [r for r in read_results(qhost.results) if r.get("id") == sent.id]
    qhost.wait_for_log(rf"Message decoding has failed! Check MessageEncoding settings\. MessageId={sent.id}")


def test_failing_function_retried_then_poisoned(qhost, storage_connection_string):
    conn, q = storage_connection_string, qhost.env["FAIL_QUEUE"]
    sent = b64_client(conn, q).send_message("poison me")
    wait_until(lambda: "poison me" in poison_bodies(conn, q), timeout=15, message="poison copy")
    attempts = [r for r in read_results(qhost.results) if r.get("id") == sent.id]
    assert [a["dequeue_count"] for a in attempts] == [1, 2, 3]  # host.json maxDequeueCount = 3
    assert all(a["thread"].startswith("functions-sync") for a in attempts)  # sync function: thread pool
    wait_until(lambda: count(conn, q) == 0, message="original deleted")
    qhost.wait_for_log(r"Message has reached MaxDequeueCount of 3\. Moving message to queue '" + q + "-poison'")
    qhost.wait_for_log(r"RuntimeError: always fails")


def test_long_invocation_is_not_delivered_twice(qhost, storage_connection_string):
    conn, q = storage_connection_string, qhost.env["SLOW_QUEUE"]
    sent = b64_client(conn, q).send_message(str(3 * LEASE + 0.5))  # runs three visibility periods
    wait_until(
        lambda: any(r.get("id") == sent.id and r["phase"] == "end" for r in read_results(qhost.results)),
        timeout=15,
        message="slow invocation end",
    )
    starts = [r for r in read_results(qhost.results) if r.get("id") == sent.id and r["phase"] == "start"]
    assert len(starts) == 1
    wait_until(lambda: count(conn, q) == 0, message="deleted with the renewed pop receipt")


def _over_dequeue(client: QueueClient, times: int) -> None:
    for _ in range(times):
        (m,) = list(client.receive_messages(max_messages=1, visibility_timeout=30))
        client.update_message(m.id, m.pop_receipt, visibility_timeout=0)


def test_batch_size_concurrency_and_premature_poison(host_factory, storage_connection_string, tmp_path):
    conn, results = storage_connection_string, tmp_path / "results.jsonl"
    env = queue_env(conn, results)
    conc = b64_client(conn, env["CONC_QUEUE"])
    conc.create_queue()
    for i in range(7):
        conc.send_message(f"c{i}")
    # A message already dequeued more than maxDequeueCount (3) times goes to poison without an invocation.
    echo = b64_client(conn, env["ECHO_QUEUE"])
    echo.create_queue()
    worn = echo.send_message("worn out")
    _over_dequeue(echo, 4)
    host = host_factory("queues", env=env).start()

    def started() -> list[dict]:
        return [r for r in read_results(results) if r["fn"] == "concurrent"]

    # batchSize 3 + newBatchThreshold 3: at most 6 run at once; they all block until the gate opens.
    wait_until(lambda: len(started()) >= 6, timeout=15, message="6 concurrent invocations")
    time.sleep(1.0)  # give a wrong host the chance to start a 7th
    assert len(started()) == 6
    assert max(r["active"] for r in started()) == 6
    (tmp_path / "results.jsonl.release").touch()
    wait_until(lambda: len(started()) == 7, timeout=15, message="the 7th after the gate opened")
    wait_until(lambda: count(conn, env["CONC_QUEUE"]) == 0, message="all 7 deleted")
    wait_until(lambda: "worn out" in poison_bodies(conn, env["ECHO_QUEUE"]), message="worn message in poison")
    assert not [r for r in read_results(results) if r.get("id") == worn.id]
    assert host.stop() == 0


def test_graceful_stop_lets_running_invocation_finish(host_factory, storage_connection_string, tmp_path):
    conn, results = storage_connection_string, tmp_path / "results.jsonl"
    env = queue_env(conn, results)
    host = host_factory("queues", env=env, grace_seconds=15).start()
    q = b64_client(conn, env["SLOW_QUEUE"])
    sent = q.send_message("1.5")
    wait_until(lambda: any(r.get("id") == sent.id for r in read_results(results)), message="invocation start")
    host.send_signal(signal.SIGTERM)
    host.wait_for_log(r"Received SIGTERM: stopping")
    late = q.send_message("0")  # arrives after the stop: must not be taken
    assert host.wait(timeout=20) == 0
    phases = [r["phase"] for r in read_results(results) if r.get("id") == sent.id]
    assert phases == ["start", "end"]
    assert not [r for r in read_results(results) if r.get("id") == late.id]
    assert [m.id for m in q.peek_messages(max_messages=5)] == [late.id]  # the finished one was deleted
    host.wait_for_log(r"Host stopped\.")


def test_sigkill_mid_invocation_then_restart_redelivers(host_factory, storage_connection_string, tmp_path):
    conn, results = storage_connection_string, tmp_path / "results.jsonl"
    env = queue_env(conn, results)
    host = host_factory("queues", env=env).start()
    sent = b64_client(conn, env["SLOW_QUEUE"]).send_message("kill")  # hangs on its first delivery
    wait_until(lambda: any(r.get("id") == sent.id for r in read_results(results)), message="first delivery")
    host.kill()
    host.restart()
    wait_until(
        lambda: any(r.get("id") == sent.id and r["phase"] == "end" for r in read_results(results)),
        timeout=15,
        message="redelivery after restart",
    )
    runs = [(r["phase"], r["dequeue_count"]) for r in read_results(results) if r.get("id") == sent.id]
    assert runs == [("start", 1), ("start", 2), ("end", 2)]
    wait_until(lambda: count(conn, env["SLOW_QUEUE"]) == 0, message="deleted after the second run")
    assert host.stop() == 0
