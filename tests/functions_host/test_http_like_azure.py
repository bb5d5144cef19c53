"""Where the local host used to be kinder than Azure: streamed invocations, client disconnects, per-instance
HTTP concurrency (Flex `scaleAndConcurrency.triggers.http.perInstanceConcurrency`)."""

from __future__ import annotations

import re
import threading
import time

import httpx
import pytest

from local.functions_host.process import HostStartError

from .conftest import wait_until

FASTAPI_ENV = {"PYTHON_ENABLE_INIT_INDEXING": "1"}
STREAM_DONE = r"Executed 'Functions\.stream' \((Succeeded|Failed), Id=[0-9a-f-]+, Duration=(\d+)ms\)"


def _http_status(host) -> dict:
    return httpx.get(host.url("admin/host/status")).json()["http"]


def test_a_streamed_invocation_lasts_until_the_stream_ends(host_factory):
    host = host_factory("http_fastapi", env=FASTAPI_ENV).start()
    with httpx.Client(timeout=10) as client, client.stream("GET", host.url("api/stream/slow")) as response:
        chunks = response.iter_raw()
        assert next(chunks) == b"first chunk\n"
        host.wait_for_log(r"stream slow: first chunk sent")
        # The handler returned its StreamingResponse before the first chunk; the invocation still runs.
        assert not re.search(STREAM_DONE, host.logs())
        assert _http_status(host) == {"perInstanceConcurrency": None, "active": 1, "queued": 0}
        time.sleep(0.5)  # held open: the logged duration must include this
        assert httpx.post(host.url("api/release/slow")).status_code == 200
        assert b"".join(chunks) == b"second chunk\n"
    ((outcome, duration),) = host.wait_for_log(STREAM_DONE)
    assert outcome == "Succeeded" and int(duration) >= 500


def test_a_client_disconnect_fails_the_streamed_invocation(host_factory):
    host = host_factory("http_fastapi", env=FASTAPI_ENV).start()
    with httpx.Client(timeout=10) as client:
        with client.stream("GET", host.url("api/stream/left")) as response:
            assert next(response.iter_raw()) == b"first chunk\n"
        # Leaving the block closes the connection in the middle of the stream.
    ((outcome, _),) = host.wait_for_log(STREAM_DONE)
    assert outcome == "Failed"
    host.wait_for_log(r"ClientDisconnectedError: The client disconnected before the response completed")
    assert httpx.get(host.url("api/runs/r-1")).status_code == 200  # the host carries on
    assert _http_status(host)["active"] == 0


def test_requests_beyond_the_concurrency_limit_wait_for_a_slot(host_factory):
    host = host_factory("http_fastapi", env={**FASTAPI_ENV, "FUNCTIONS_HOST_HTTP_PER_INSTANCE_CONCURRENCY": "1"})
    host.start()
    host.wait_for_log(r"per-instance concurrency 1\.")
    waiting: dict = {}

    def second_request() -> None:
        waiting["response"] = httpx.get(host.url("api/runs/r-2"), timeout=30)

    with httpx.Client(timeout=10) as client:
        with client.stream("GET", host.url("api/stream/holder")) as response:
            chunks = response.iter_raw()  # keep a reference: a dropped iterator closes the response
            assert next(chunks) == b"first chunk\n"
            thread = threading.Thread(target=second_request)
            thread.start()
            wait_until(lambda: _http_status(host)["queued"] == 1, message="the second request to queue")
            assert _http_status(host) == {"perInstanceConcurrency": 1, "active": 1, "queued": 1}
            assert "response" not in waiting  # it waits while the stream holds the only slot
        # The stream's client leaves: its slot frees and the queued request runs.
        thread.join(timeout=20)
    assert waiting["response"].status_code == 200 and waiting["response"].json()["run_id"] == "r-2"
    assert _http_status(host) == {"perInstanceConcurrency": 1, "active": 0, "queued": 0}


@pytest.mark.parametrize("value", ["0", "1001", "many"])
def test_an_invalid_concurrency_limit_is_refused(host_factory, value):
    host = host_factory("http_fastapi", env={**FASTAPI_ENV, "FUNCTIONS_HOST_HTTP_PER_INSTANCE_CONCURRENCY": value})
    with pytest.raises(HostStartError, match="FUNCTIONS_HOST_HTTP_PER_INSTANCE_CONCURRENCY"):
        host.start(timeout=20)
    assert host.wait() == 1


def test_a_stream_whose_generator_raises_fails_the_invocation_with_that_error(host_factory):
    host = host_factory("http_fastapi", env=FASTAPI_ENV).start()
    with httpx.Client(timeout=10) as client, client.stream("GET", host.url("api/broken-stream")) as response:
        assert response.status_code == 200  # the status line went out with the first chunk
        with pytest.raises(httpx.RemoteProtocolError):
            response.read()  # then the body is cut short
    host.wait_for_log(r"Executed 'Functions\.broken_stream' \(Failed, Id=[0-9a-f-]+, Duration=\d+ms\)")
    host.wait_for_log(r"RuntimeError: the stream's generator failed")
    assert "ClientDisconnectedError" not in host.logs()
