"""The local stack for benchmarks and chaos runs: Azurite, the emulator (a subprocess, so its CPU is
not shared with the load generator's GIL), the local Functions host running function_app.py, and a
recording webhook receiver whose log survives its own restarts (the chaos run takes it down).

Everything listens on 127.0.0.1 only. Nothing here changes shared/ or local/.
"""
from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from local.azurite import Azurite, connection_string, start_for_tests
from local.functions_host.process import HostProcess
from shared.webhooks import SignatureError, verify

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
TMP = RESULTS / "tmp"
PY = sys.executable


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def new_secrets() -> tuple[str, ...]:
    return tuple("whsec_" + base64.b64encode(os.urandom(32)).decode() for _ in range(2))


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def summary(values: list[float]) -> dict[str, Any]:
    values = [v for v in values if v is not None]
    if not values:
        return {"n": 0, "p50": None, "p95": None, "max": None, "mean": None}
    return {"n": len(values), "p50": pct(values, 0.5), "p95": pct(values, 0.95), "max": max(values),
            "mean": statistics.fmean(values)}


# -- the webhook receiver ----------------------------------------------------------------------------------
class RecordingReceiver:
    """A Standard Webhooks receiver (same verification as local/webhook_receiver.py) in a thread.

    Every request is recorded in `records`, which belongs to this object, so stopping and starting the
    server (a receiver outage) loses nothing. `down()` really closes the port (connection refused)."""

    def __init__(self, secrets_: tuple[str, ...], port: int | None = None) -> None:
        self.secrets = secrets_
        self.port = port or free_port()
        self.records: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _app(self):
        async def app(scope, receive, send):
            if scope["type"] != "http":
                return
            body = b""
            while True:
                message = await receive()
                body += message.get("body", b"")
                if not message.get("more_body"):
                    break
            headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
            try:
                verify(headers, body, self.secrets)
                verified = True
            except (SignatureError, ValueError):
                verified = False
            try:
                event = json.loads(body)
            except ValueError:
                event = None
            run_id = None
            if isinstance(event, dict):
                run_id = (event.get("data") or {}).get("id")
            status = 204 if verified else 401
            with self._lock:
                self.records.append({"path": scope["path"], "webhook_id": headers.get("webhook-id"),
                                     "verified": verified, "run_id": run_id, "at": time.time(),
                                     "status": status,
                                     "run_status": (event.get("data") or {}).get("status")
                                     if isinstance(event, dict) else None})
            await send({"type": "http.response.start", "status": status, "headers": []})
            await send({"type": "http.response.body", "body": b""})
        return app

    def up(self) -> "RecordingReceiver":
        config = uvicorn.Config(self._app(), host="127.0.0.1", port=self.port, log_level="error",
                                lifespan="off", access_log=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        return self

    def down(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
            self._thread.join(10)
            self._server = None

    def for_path(self, path: str) -> list[dict[str, Any]]:
        with self._lock:
            return [r for r in self.records if r["path"] == path]

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.records)


# -- the emulator (subprocess) ---------------------------------------------------------------------------
class EmulatorProcess:
    def __init__(self, log_path: Path, **config: Any) -> None:
        self.port = free_port()
        self.log_path = log_path
        self.config = config
        self.proc: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> "EmulatorProcess":
        args = [PY, "-m", "local.emulator", "--port", str(self.port)]
        for key, value in self.config.items():
            args += ["--" + key.replace("_", "-"), str(value)]
        env = dict(os.environ, PYTHONPATH=str(REPO))
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(args, cwd=str(REPO), env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.base_url}/_emulator/stats", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"emulator exited: see {self.log_path}")
            time.sleep(0.1)
        raise RuntimeError("emulator did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if getattr(self, "_log", None):
            self._log.close()

    def configure(self, **config: Any) -> None:
        httpx.post(f"{self.base_url}/_emulator/config", json=config, timeout=10).raise_for_status()

    def responses(self, **metadata: str) -> list[dict[str, Any]]:
        params = {f"metadata.{k}": v for k, v in metadata.items()}
        r = httpx.get(f"{self.base_url}/_emulator/responses", params=params, timeout=120)
        r.raise_for_status()
        return r.json()["data"]

    def stats(self) -> dict[str, Any]:
        return httpx.get(f"{self.base_url}/_emulator/stats", timeout=30).json()


# -- the service host ------------------------------------------------------------------------------------
def service_env(connection_string: str, emulator_url: str, webhook_secrets: tuple[str, ...],
                **overrides: str) -> dict[str, str]:
    env = {
        "AzureWebJobsStorage": connection_string,
        "MODEL_PROVIDER": "emulator",
        "EMULATOR_BASE_URL": emulator_url,
        "RUN_TOKEN_KEY": secrets.token_urlsafe(48),
        "WEBHOOK_SIGNING_SECRETS": " ".join(webhook_secrets),
        "WEBHOOK_ALLOW_HTTP": "true",
        "WEBHOOK_ALLOW_PRIVATE_ADDRESSES": "true",
        "PYTHON_ENABLE_INIT_INDEXING": "1",  # as in Azure: the host refuses the FastAPI types without it
    }
    env.update(overrides)
    return env


@dataclass
class LocalStack:
    """Azurite + emulator + host + receiver. `host_env` overrides the service settings."""

    name: str
    host_env: dict[str, str] = field(default_factory=dict)
    emulator_config: dict[str, Any] = field(default_factory=dict)
    azurite: Azurite | None = None
    emulator: EmulatorProcess | None = None
    host: HostProcess | None = None
    receiver: RecordingReceiver | None = None
    secrets: tuple[str, ...] = field(default_factory=new_secrets)
    use_proxy: bool = False
    proxy: subprocess.Popen | None = None
    proxy_control: int = 0
    proxy_connection_string: str = ""
    idle_receive_rate: float = 0.0

    def start(self) -> "LocalStack":
        try:
            return self._start()
        except BaseException:
            self.stop()  # nothing half-started is left running
            raise

    def _start(self) -> "LocalStack":
        TMP.mkdir(parents=True, exist_ok=True)
        self.azurite = start_for_tests(f"{self.name}-{os.getpid()}")
        self._start_proxy()
        self.emulator = EmulatorProcess(TMP / f"{self.name}-emulator.log", **self.emulator_config).start()
        self.receiver = RecordingReceiver(self.secrets).up()
        conn = self.proxy_connection_string if self.use_proxy else self.azurite.connection_string
        env = service_env(conn, self.emulator.base_url, self.secrets, **self.host_env)
        self.host = HostProcess(REPO, env=env, log_path=TMP / f"{self.name}-{os.getpid()}-host.log",
                                grace_seconds=3)
        self.host.start(timeout=60)
        wait_healthy(self.host.base_url, 60)
        return self

    def _start_proxy(self) -> None:
        ports = [free_port() for _ in range(4)]
        a = self.azurite
        args = [PY, "-m", "bench.storage_proxy", "--blob", f"{ports[0]}:{a.blob_port}",
                "--queue", f"{ports[1]}:{a.queue_port}", "--table", f"{ports[2]}:{a.table_port}",
                "--control", str(ports[3])]
        self._proxy_log = open(TMP / f"{self.name}-proxy.log", "ab")
        self.proxy = subprocess.Popen(args, cwd=str(REPO), env=dict(os.environ, PYTHONPATH=str(REPO)),
                                      stdout=self._proxy_log, stderr=subprocess.STDOUT, start_new_session=True)
        self.proxy_control = ports[3]
        self.proxy_connection_string = connection_string(ports[0], ports[1], ports[2])
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                httpx.get(f"http://127.0.0.1:{self.proxy_control}/counts", timeout=1)
                return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("storage proxy did not start")

    def storage_counts(self) -> dict[str, int]:
        return httpx.get(f"http://127.0.0.1:{self.proxy_control}/counts", timeout=10).json()

    def switch_storage(self, proxied: bool) -> None:
        """Restart the host with its storage through the counting proxy or straight to Azurite."""
        self.host.stop()
        self.host.env["AzureWebJobsStorage"] = (self.proxy_connection_string if proxied
                                                else self.azurite.connection_string)
        self.use_proxy = proxied
        self.host.start(timeout=60)
        wait_healthy(self.host.base_url, 60)

    def stop(self) -> None:
        for step in (lambda: self.host and self.host.kill(), lambda: self.receiver and self.receiver.down(),
                     lambda: self.proxy and (self.proxy.kill(), self.proxy.wait(5)),
                     lambda: self.emulator and self.emulator.stop(), lambda: self.azurite and self.azurite.stop(),
                     lambda: self.azurite and shutil.rmtree(self.azurite.data_dir, ignore_errors=True)):
            try:
                step()
            except Exception as error:  # noqa: BLE001 - best effort teardown
                print(f"teardown: {type(error).__name__}: {error}", file=sys.stderr)

    @property
    def api(self) -> str:
        return self.host.base_url

    def metrics(self) -> dict[str, Any]:
        return httpx.get(f"{self.api}/api/metrics", timeout=30).json()


def wait_healthy(base_url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            r = httpx.get(f"{base_url}/api/health", timeout=5)
            if r.status_code == 200:
                return
            last = r.text
        except httpx.HTTPError as error:
            last = repr(error)
        time.sleep(0.25)
    raise RuntimeError(f"service not healthy after {timeout}s: {last}")


def metrics_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    keys = set(before["storage_requests"]) | set(after["storage_requests"])
    by = {k: after["storage_requests"].get(k, 0) - before["storage_requests"].get(k, 0) for k in sorted(keys)}
    return {"storage_requests": {k: v for k, v in by.items() if v},
            "storage_total": sum(by.values()),
            "cpu_seconds": after["cpu_seconds"] - before["cpu_seconds"],
            "max_rss_kib": after["max_rss_kib"]}


def dump_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


async def gather_limited(limit: int, coros) -> list[Any]:
    sem = asyncio.Semaphore(limit)

    async def one(coro):
        async with sem:
            return await coro
    return await asyncio.gather(*(one(c) for c in coros), return_exceptions=True)
