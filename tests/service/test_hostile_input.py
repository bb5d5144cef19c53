"""Hostile bodies at every JSON entry, end to end (issue 21): each is a 4xx in the route's own error format naming the
problem (and the field, where there is one), and leaves nothing behind: no run, no index row, no session, no
Idempotency-Key, no blob, no queued message, no webhook.

The service under test runs on storage of its own (a fresh Azurite), so "nothing" is literal: after every request
every table, queue and blob container is still empty. It has provider webhooks on (push), so the provider's
route parses what it is sent; those bodies are signed with its secret, as the provider would sign them.
Before issue 21, 12 of 13 of these answered 500, and four left runs that later failed and fired the webhook.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
import pytest
from azure.data.tables import TableServiceClient
from azure.storage.blob import BlobServiceClient
from azure.storage.queue import QueueServiceClient

from local.azurite import start_for_tests
from local.stack import new_webhook_secrets
from shared.strict_json import MAX_DEPTH

from ..stack import FACADE_KEYS

PROVIDER_SECRET = new_webhook_secrets(1)[0]
HOOK_NAME = f"hostile-{time.time_ns()}"


def deep(depth: int, inner: str = "1") -> str:
    return "[" * depth + inner + "]" * depth


def schema(depth: int) -> str:
    """A function tool's parameters schema nested `depth` objects deep (what an SDK user can send by accident)."""
    return '{"type": "object", "properties": {"a": ' * depth + '{"type": "string"}' + "}}" * depth


@dataclass(frozen=True)
class Body:
    name: str
    raw: bytes
    param: str | None  # the field the refusal names (on the runs and facade routes)
    says: str  # what the message says
    json_level: bool = True  # refused by the strict parser, so on every route alike


def body(name: str, text: str, param: str | None, says: str, json_level: bool = True) -> Body:
    return Body(name, text.encode("utf-8", "surrogatepass"), param, says, json_level)


HOSTILE = [
    body("nan", '{"input": "x", "temperature": NaN}', "temperature", "NaN"),
    body(
        "nan-in-an-item",
        '{"input": [{"role": "user", "content": [{"type": "input_text", "text": "x", "weight": NaN}]}]}',
        "input[0].content[0].weight",
        "NaN",
    ),
    body("infinity", '{"input": "x", "max_output_tokens": Infinity}', "max_output_tokens", "Infinity"),
    body("minus-infinity", '{"input": "x", "metadata": {"a": -Infinity}}', "metadata.a", "-Infinity"),
    body("1e400", '{"input": "x", "max_output_tokens": 1e400}', "max_output_tokens", "1e400"),
    body("5000-deep", '{"input": "x", "metadata": ' + deep(5000) + "}", "metadata", "nested deeper"),
    body("5000-deep-body", deep(5000), None, "nested deeper"),
    body("just-past-the-limit", '{"input": "x", "metadata": ' + deep(MAX_DEPTH) + "}", "metadata", "nested deeper"),
    body(
        "tool-schema-970-deep",
        '{"input": "x", "tools": [{"type": "function", "name": "f", "parameters": ' + schema(485) + "}]}",
        "tools",
        "nested deeper",
    ),
    body("surrogate-input", '{"input": "\\ud800"}', "input", "surrogate"),
    body("surrogate-instructions", '{"input": "x", "instructions": "a\\udfffb"}', "instructions", "surrogate"),
    body("surrogate-metadata-key", '{"input": "x", "metadata": {"\\ud800": "v"}}', "metadata.\\ud800", "surrogate"),
    body(
        "surrogate-in-an-item",
        '{"input": [{"role": "user", "content": [{"type": "input_text", "text": "\\udc00"}]}]}',
        "input[0].content[0].text",
        "surrogate",
    ),
    body("duplicate-key", '{"input": "a", "input": "b"}', "input", "more than once"),
    Body("not-utf-8", b'{"input": "\xff\xfe"}', None, "not UTF-8"),
    Body("latin-1", b'{"input": "caf\xe9"}', None, "not UTF-8"),
    Body("utf-16", '{"input": "x"}'.encode("utf-16"), None, "not UTF-8"),
    Body("bom", b'\xef\xbb\xbf{"input": "x"}', None, "byte order mark"),
    body("5000-digit-integer", '{"input": "x", "max_output_tokens": 1' + "0" * 5000 + "}", None, "not valid JSON"),
    body("trailing-garbage", '{"input": "x"} {}', None, "not valid JSON"),
    # Well-formed JSON of the wrong shape: refused by the runs and facade parsers, by their field.
    body("content-7", '{"input": [{"role": "user", "content": 7}]}', "input[0].content", "content", False),
    body("role-list", '{"input": [{"role": ["x"], "content": "hi"}]}', "input[0].role", "role", False),
    body(
        "text-7",
        '{"input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": 7}]}]}',
        "input[0].content[0].text",
        "string",
        False,
    ),
    body(
        "arguments-object",
        '{"input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": {}}]}',
        "input[0].arguments",
        "string",
        False,
    ),
    body(
        "tool-parameters-string",
        '{"input": "x", "tools": [{"type": "function", "name": "f", "parameters": "x"}]}',
        "tools[0].parameters",
        "schema",
        False,
    ),
]


@pytest.fixture(scope="module")
def hostile_host(stack):
    azurite = start_for_tests(f"hostile-{time.time_ns()}")
    host = stack.start_host(
        "hostile", AzureWebJobsStorage=azurite.connection_string, PROVIDER_WEBHOOK_SECRETS=PROVIDER_SECRET
    )
    try:
        yield host, azurite.connection_string
    finally:
        host.stop()
        azurite.stop()


@pytest.fixture(scope="module")
def clients(stack, hostile_host):
    host, _ = hostile_host
    native = httpx.Client(base_url=host.base_url, timeout=60, headers=stack.key_headers)
    facade = httpx.Client(base_url=host.base_url, timeout=60, headers={"authorization": f"Bearer {FACADE_KEYS['ops']}"})
    anonymous = httpx.Client(base_url=host.base_url, timeout=60)
    yield {"native": native, "facade": facade, "anonymous": anonymous}
    for client in (native, facade, anonymous):
        client.close()


def leftovers(connection_string: str) -> list[str]:
    """Everything the service keeps, listed: [] when nothing was written."""
    found = []
    tables = TableServiceClient.from_connection_string(connection_string)
    for table in tables.list_tables():
        found += [
            f"{table.name}: {e['PartitionKey']}/{e['RowKey']}"
            for e in tables.get_table_client(table.name).list_entities(select=["PartitionKey", "RowKey"])
        ]
    queues = QueueServiceClient.from_connection_string(connection_string)
    for queue in queues.list_queues():
        found += [f"queue {queue.name}: {m.content}" for m in queues.get_queue_client(queue.name).peek_messages(32)]
    blobs = BlobServiceClient.from_connection_string(connection_string)
    for container in blobs.list_containers():
        found += [f"blob {container.name}/{b.name}" for b in blobs.get_container_client(container.name).list_blobs()]
    return found


def signed(raw: bytes) -> dict[str, str]:
    """Standard Webhooks headers for `raw`, signed with the provider's secret (as OpenAI signs its events)."""
    webhook_id, timestamp = f"wh_{time.time_ns()}", str(int(time.time()))
    key = base64.b64decode(PROVIDER_SECRET.removeprefix("whsec_"))
    mac = hmac.new(key, f"{webhook_id}.{timestamp}.".encode() + raw, hashlib.sha256).digest()
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": timestamp,
        "webhook-signature": "v1," + base64.b64encode(mac).decode(),
        "content-type": "application/json",
    }


def with_webhook(stack, raw: bytes) -> bytes:
    """The body with a webhook_url in front when it is an object (a run left behind would call it); the key is
    written first so the rest of the body, whatever it holds, stays byte for byte what the case sends."""
    if not raw.startswith(b"{") or raw.startswith(b"{}"):
        return raw
    return b'{"webhook_url": ' + json.dumps(stack.hook_url(HOOK_NAME)).encode() + b", " + raw[1:]


ROUTES = [
    "/api/runs",
    "/api/sessions",
    "/api/v1/responses",
    "/api/openai/v1/responses",
    "/api/openai/responses",
    "/api/provider/webhooks",
]


@pytest.mark.parametrize("case", HOSTILE, ids=[case.name for case in HOSTILE])
def test_a_hostile_body_is_a_4xx_naming_the_problem_on_every_route_and_leaves_nothing(
    stack, hostile_host, clients, case
):
    _, storage = hostile_host
    for route in ROUTES:
        raw = with_webhook(stack, case.raw) if route != "/api/provider/webhooks" else case.raw
        if route == "/api/provider/webhooks":
            response = clients["anonymous"].post(route, content=raw, headers=signed(raw))
        else:
            client = clients["facade" if "responses" in route else "native"]
            response = client.post(
                route,
                content=raw,
                headers={"content-type": "application/json", "idempotency-key": f"{case.name}-{route}"},
            )
        where = f"{case.name} on {route}"
        assert 400 <= response.status_code < 500, (where, response.status_code, response.text)
        error = response.json()["error"]
        assert error["message"], where
        if "responses" in route:  # OpenAI's format
            assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
        else:
            assert set(error) == {"code", "message", "param"}, where
        json_route = route != "/api/provider/webhooks" and (case.json_level or route != "/api/sessions")
        if json_route:
            assert case.says in error["message"] and error["param"] == case.param, (where, error)
        elif case.json_level:  # the provider's route says what is wrong with the body, in its own words
            assert case.says in error["message"] or "not UTF-8" in error["message"], (where, error)
    assert leftovers(storage) == [], case.name
    assert stack.received(HOOK_NAME) == []


def raw_request(base_url: str, head: bytes, body_parts: list[bytes], timeout: float = 15.0) -> tuple[int, float]:
    """Send a request by hand (a declared length the body never reaches, or a chunked body without its end);
    the status line of the answer and how long it took. A server that waits for the whole body would time out."""
    url = urlsplit(base_url)
    started = time.monotonic()
    with socket.create_connection((url.hostname, url.port), timeout=timeout) as sock:
        sock.sendall(head)
        for part in body_parts:
            try:
                sock.sendall(part)
            except OSError:  # the server answered and closed: what we want
                break
        reply = sock.recv(4096)
    return int(reply.split(b" ", 2)[1]), time.monotonic() - started


@pytest.mark.parametrize("route, limit", [("/api/provider/webhooks", 64 * 1024), ("/api/runs", 1024 * 1024)])
def test_an_oversized_body_is_refused_before_it_is_read(stack, hostile_host, route, limit):
    # The defect: the anonymous provider route read a whole 30 MB body before its 64 KiB check.
    host, storage = hostile_host
    netloc = urlsplit(host.base_url).netloc
    keys = "".join(f"{k}: {v}\r\n" for k, v in stack.key_headers.items())
    declared = (
        f"POST {route} HTTP/1.1\r\nHost: {netloc}\r\n{keys}content-type: application/json\r\n"
        f"content-length: {30 * 1024 * 1024}\r\n\r\n"
    ).encode()
    status, took = raw_request(host.base_url, declared, [b'{"input": "'])  # 11 of the 30 MB declared
    assert status == 413 and took < 10
    chunked = (
        f"POST {route} HTTP/1.1\r\nHost: {netloc}\r\n{keys}content-type: application/json\r\n"
        "transfer-encoding: chunked\r\n\r\n"
    ).encode()
    chunk = b"x" * 16384
    parts = [b"%x\r\n%s\r\n" % (len(chunk), chunk)] * (limit // len(chunk) + 4)  # past the limit; never ended
    status, took = raw_request(host.base_url, chunked, parts)
    assert status == 413 and took < 10
    assert leftovers(storage) == []


@pytest.mark.parametrize(
    "header, value",
    [("webhook-signature", b"v1,\xff\xfe=="), ("webhook-id", b"wh_\xe9t\xe9"), ("webhook-timestamp", b"\xff")],
)
def test_a_non_ascii_signature_header_on_the_anonymous_provider_route_is_a_clean_400(
    clients, hostile_host, header, value
):
    # The defect: hmac.compare_digest raised TypeError on the non-ASCII text, and the route answered 500.
    raw = b'{"type": "response.completed", "data": {"id": "resp_x"}}'
    headers = {**signed(raw), header: value}
    response = clients["anonymous"].post("/api/provider/webhooks", content=raw, headers=headers)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_provider_event" and "malformed" in error["message"]
    assert value.decode("latin-1") not in response.text  # nothing of what was sent is echoed
    assert leftovers(hostile_host[1]) == []


@pytest.mark.parametrize("fault", ["fault_500_rate"])
def test_a_start_refused_after_its_run_was_recorded_leaves_nothing_end_to_end(stack, hostile_host, clients, fault):
    # The run, its index rows, its session's row and reservation and the Idempotency-Key are written before the
    # provider is asked; when it refuses, all of it goes, so the caller's retry is a clean new start. (A 500: a
    # 429/503 proves nothing was created and queues the run instead: runs.admission.)
    _, storage = hostile_host
    session = clients["native"].post("/api/sessions").json()["id"]
    before = leftovers(storage)
    stack.emulator_config(**{fault: 1.0}, fault_endpoints="create")
    try:
        response = clients["native"].post(
            "/api/runs",
            json={"input": "x", "session_id": session, "webhook_url": stack.hook_url(HOOK_NAME)},
            headers={"idempotency-key": f"refused-{fault}"},
        )
    finally:
        stack.emulator_config(**{fault: 0.0}, fault_endpoints="create,retrieve,stream,cancel,delete,input_items,chat")
    assert response.status_code in (502, 503), response.text
    assert leftovers(storage) == before
    state = clients["native"].get(f"/api/sessions/{session}").json()
    assert state["active_run_id"] is None and state["runs"] == []
    retried = clients["native"].post(
        "/api/runs", json={"input": "x", "session_id": session}, headers={"idempotency-key": f"refused-{fault}"}
    )
    assert retried.status_code == 202, retried.text  # the key was released and the session given back
    assert stack.received(HOOK_NAME) == []
