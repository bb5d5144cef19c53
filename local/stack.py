"""The local stack, assembled in one place for `make run`, the test fixtures and the benchmarks. Dev-only.

Azurite (blob, queue, table), the Responses API emulator (in a thread, or a subprocess so that its CPU does not
share a load generator's GIL), the webhook receiver (local/webhook_receiver.py, in a thread) and the local
Functions host running function_app.py (local/functions_host), optionally with its storage traffic through the
counting proxy (local/storage_proxy.py). Everything listens on 127.0.0.1: on fixed ports for `make run`, on
free ports otherwise, so several stacks can run side by side.

    stack = LocalStack("e2e", env={"SWEEP_SCHEDULE": "*/2 * * * * *"}).start()
    stack.host.base_url; stack.emulator.base_url; stack.receiver.url; stack.azurite.connection_string
    second = stack.start_host("rotation", STREAM_MAX_SECONDS="2")   # another instance of the app
    stack.stop()

`make run` (local/make_run.py) is this stack on fixed ports, configured from the developer's environment.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from local.azurite import REPO_ROOT, Azurite, connection_string, free_port
from local.emulator import EmulatorServer
from local.emulator.control import EmulatorControl
from local.emulator.server import parse_deployments
from local.functions_host.process import HostProcess
from local.webhook_receiver import WebhookReceiver


@dataclass(frozen=True)
class Ports:
    blob: int
    queue: int
    table: int
    emulator: int
    host: int
    receiver: int

    @classmethod
    def free(cls) -> Ports:
        return cls(*(free_port() for _ in range(6)))


def new_webhook_secrets(count: int = 2) -> tuple[str, ...]:
    """Standard Webhooks secrets; two, so that every delivery is signed the way a key rotation signs it."""
    return tuple("whsec_" + base64.b64encode(os.urandom(32)).decode() for _ in range(count))


# -- the emulator, in a thread or a subprocess -----------------------------------------------------------------------
# Both are an EmulatorControl (local/emulator/control.py): configure(), responses(), stats(), and per deployment
# deployment_url(name), set_quota(...), take_down(name, ...)/bring_up(name). `deployments` in the emulator config
# (e.g. {"ptu": {"rpm_limit": 60}, "payg": {}}) serves several, each on its own port; base_url is the first's.
class EmulatorThread(EmulatorControl):
    def __init__(self, port: int = 0, **config: Any) -> None:
        super().__init__()
        self.server = EmulatorServer(port=port, **config)

    @property
    def base_url(self) -> str:
        return self.server.base_url

    def deployment_urls(self) -> dict[str, str]:
        return {name: dep.base_url for name, dep in self.server.deployments.items()}

    def start(self) -> EmulatorThread:
        self.server.start_in_thread()
        return self

    def stop(self) -> None:
        self.server.stop()


class EmulatorProcess(EmulatorControl):
    def __init__(self, log_path: Path, port: int = 0, **config: Any) -> None:
        super().__init__()
        self.port = port or free_port()
        self.log_path = log_path
        self.config = dict(config)
        # Every deployment's port is chosen here, so that their URLs are known before the process runs.
        specs = parse_deployments(self.config.pop("deployments", None))
        self.deployment_specs = {
            name: {**settings, "port": settings.get("port") or (self.port if n == 0 else free_port())}
            for n, (name, settings) in enumerate(specs)
        }
        self.port = self.deployment_specs[specs[0][0]]["port"]
        self.proc: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def deployment_urls(self) -> dict[str, str]:
        return {name: f"http://127.0.0.1:{spec['port']}/v1" for name, spec in self.deployment_specs.items()}

    def start(self) -> EmulatorProcess:
        args = [sys.executable, "-m", "local.emulator", "--port", str(self.port)]
        if list(self.deployment_specs) != ["default"]:
            args += ["--deployments", json.dumps(self.deployment_specs)]
        for key, value in self.config.items():
            args += ["--" + key.replace("_", "-"), json.dumps(value) if isinstance(value, dict) else str(value)]
        self.proc = _python_process(args, self.log_path)
        _wait_until(
            lambda: httpx.get(f"{self.base_url}/_emulator/stats", timeout=1).status_code == 200,
            self.proc,
            30,
            f"the emulator did not start (see {self.log_path})",
        )
        return self

    def stop(self) -> None:
        _stop_process(self.proc)


# -- the counting storage proxy --------------------------------------------------------------------------------------
class StorageProxy:
    """local/storage_proxy.py in front of an Azurite, as a subprocess; `counts()` by storage operation."""

    def __init__(self, azurite: Azurite, log_path: Path) -> None:
        self.azurite = azurite
        self.log_path = log_path
        self.blob_port, self.queue_port, self.table_port, self.control_port = (free_port() for _ in range(4))
        self.proc: subprocess.Popen | None = None

    @property
    def connection_string(self) -> str:
        return connection_string(self.blob_port, self.queue_port, self.table_port)

    def start(self) -> StorageProxy:
        a = self.azurite
        args = [
            sys.executable,
            "-m",
            "local.storage_proxy",
            "--blob",
            f"{self.blob_port}:{a.blob_port}",
            "--queue",
            f"{self.queue_port}:{a.queue_port}",
            "--table",
            f"{self.table_port}:{a.table_port}",
            "--control",
            str(self.control_port),
        ]
        self.proc = _python_process(args, self.log_path)
        _wait_until(lambda: self.counts() is not None, self.proc, 20, "the storage proxy did not start")
        return self

    def counts(self) -> dict[str, int]:
        return httpx.get(f"http://127.0.0.1:{self.control_port}/counts", timeout=10).json()

    def stop(self) -> None:
        _stop_process(self.proc)


# -- the whole stack -------------------------------------------------------------------------------------------------
class LocalStack:
    """Azurite + emulator + webhook receiver + the local Functions host running function_app.py.

    `function_key` and `master_key` switch the host's key checks on (clients send `x-functions-key`).
    `env` overrides the service settings (and the host's FUNCTIONS_HOST_* settings). `storage_proxy` starts
    the counting proxy; `through_proxy` says whether the host starts behind it (default: when it is started).
    An `azurite` that is passed in is shared and left running by stop(); otherwise the stack starts a fresh one
    and removes its data at the end (unless `keep_data`, as `make run` does)."""

    def __init__(
        self,
        name: str,
        *,
        env: dict[str, str] | None = None,
        ports: Ports | None = None,
        azurite: Azurite | None = None,
        emulator_in_thread: bool = True,
        emulator_config: dict[str, Any] | None = None,
        storage_proxy: bool = False,
        through_proxy: bool | None = None,
        webhook_secrets: tuple[str, ...] | None = None,
        log_dir: Path | None = None,
        host_grace_seconds: float = 5,
        keep_data: bool = False,
        receiver_echo: Callable[[str], None] | None = None,
        function_key: str | None = None,
        master_key: str | None = None,
    ) -> None:
        self.name = name
        self.env_overrides = dict(env or {})
        self.ports = ports or Ports.free()
        self.emulator_in_thread = emulator_in_thread
        self.emulator_config = dict(emulator_config or {})
        self.with_proxy = storage_proxy or bool(through_proxy)
        self.use_proxy = storage_proxy if through_proxy is None else through_proxy
        self.webhook_secrets = webhook_secrets or new_webhook_secrets()
        self.log_dir = log_dir or REPO_ROOT / ".azurite"
        self.host_grace_seconds = host_grace_seconds
        self.keep_data = keep_data
        self.receiver_echo = receiver_echo
        self.function_key = function_key
        self.master_key = master_key
        self._owns_azurite = azurite is None
        self.azurite = azurite
        self.proxy: StorageProxy | None = None
        self.emulator: EmulatorThread | EmulatorProcess | None = None
        self.receiver: WebhookReceiver | None = None
        self.host: HostProcess | None = None
        self.env: dict[str, str] = {}
        self._extra_hosts: list[HostProcess] = []

    # -- start and stop -----------------------------------------------------------------------------------------
    def start(self, *, with_host: bool = True, fresh: bool = True, wait_healthy: bool = True) -> LocalStack:
        """Start every piece; on any failure whatever was started is stopped again."""
        try:
            return self._start(with_host, fresh, wait_healthy)
        except BaseException:
            self.stop()
            raise

    def _start(self, with_host: bool, fresh: bool, wait_healthy: bool) -> LocalStack:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        if self.azurite is None:
            self.azurite = Azurite(
                REPO_ROOT / ".azurite" / self._instance_name(), self.ports.blob, self.ports.queue, self.ports.table
            ).start(fresh=fresh)
        if with_host:
            self._claim_storage()
        if self.with_proxy:
            self.proxy = StorageProxy(self.azurite, self._log("proxy")).start()
        if self.emulator_in_thread:
            self.emulator = EmulatorThread(self.ports.emulator, **self.emulator_config).start()
        else:
            self.emulator = EmulatorProcess(self._log("emulator"), self.ports.emulator, **self.emulator_config).start()
        self.receiver = WebhookReceiver(self.webhook_secrets, port=self.ports.receiver, echo=self.receiver_echo).up()
        self.env = self.service_env()
        if with_host:
            # kept before it starts: a host that never got ready is still stopped by stop()
            self.host = HostProcess(
                REPO_ROOT,
                port=self.ports.host,
                env=self.env,
                log_path=self._log("host"),
                grace_seconds=self.host_grace_seconds,
            )
            self.host.start(timeout=60)
            if wait_healthy:
                wait_until_healthy(self.host.base_url, 60)
        return self

    def _claim_storage(self) -> None:
        """One storage account, one emulator: hosts on one account share its queues and tables, so a second
        stack's host would take this stack's poll messages and ask its own emulator about responses it never
        made (404: the run fails). A stack with a host of its own needs an Azurite of its own."""
        serving = self.azurite.serving_stack
        if serving is not None and serving != self.name:
            raise RuntimeError(
                f"stack {self.name!r}: Azurite at {self.azurite.queue_port} already serves stack {serving!r}; "
                "hosts with different emulators must not share a storage account (start another Azurite)"
            )
        self.azurite.serving_stack = self.name

    def _release_storage(self) -> None:
        if self.azurite is not None and self.azurite.serving_stack == self.name:
            self.azurite.serving_stack = None

    def stop(self) -> None:
        """Stop everything this stack started, each step on its own (a failing step does not skip the rest)."""
        steps = [host.stop for host in self._extra_hosts]
        steps += [
            lambda: self.host and self.host.stop(),
            self._release_storage,
            lambda: self.receiver and self.receiver.down(),
            lambda: self.proxy and self.proxy.stop(),
            lambda: self.emulator and self.emulator.stop(),
        ]
        if self._owns_azurite:
            steps.append(lambda: self.azurite and self.azurite.stop())
            if not self.keep_data:
                steps.append(lambda: self.azurite and shutil.rmtree(self.azurite.data_dir, ignore_errors=True))
        for step in steps:
            try:
                step()
            except Exception as error:  # noqa: BLE001 - best-effort teardown
                print(f"teardown of {self.name}: {type(error).__name__}: {error}", file=sys.stderr)

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- the service's settings and more hosts --------------------------------------------------------------------
    @property
    def key_headers(self) -> dict[str, str]:
        """The header a client sends to call FUNCTION routes ({} when keys are off)."""
        return {"x-functions-key": self.function_key} if self.function_key else {}

    @property
    def storage_connection_string(self) -> str:
        """What the host talks to: the proxy when it is in the path, else Azurite itself."""
        return self.proxy.connection_string if self.use_proxy else self.azurite.connection_string

    def service_env(self, **overrides: str) -> dict[str, str]:
        env = {
            "AzureWebJobsStorage": self.storage_connection_string,
            "MODEL_PROVIDER": "emulator",
            "EMULATOR_BASE_URL": self.emulator.base_url,
            "RUN_TOKEN_KEY": secrets.token_urlsafe(48),
            "WEBHOOK_SIGNING_SECRETS": " ".join(self.webhook_secrets),
            # The receiver runs on loopback over plain http.
            "WEBHOOK_ALLOW_HTTP": "true",
            "WEBHOOK_ALLOW_PRIVATE_ADDRESSES": "true",
            # The worker serves streaming HTTP only with init indexing; Azure refuses to start without it.
            "PYTHON_ENABLE_INIT_INDEXING": "1",
        }
        # With a key configured the local host enforces keys the way Azure always does (FUNCTION routes
        # need a function or the master key, ADMIN routes the master key); without one, no key is needed.
        if self.master_key:
            env["FUNCTIONS_HOST_MASTER_KEY"] = self.master_key
        if self.function_key:
            env["FUNCTIONS_HOST_FUNCTION_KEYS"] = self.function_key
        env.update(self.env_overrides)
        env.update(overrides)
        return env

    def start_host(self, name: str, **overrides: str) -> HostProcess:
        """Another instance of the app on a free port: the same storage, emulator, secrets and keys, plus
        `overrides`. Stopped by the caller, or at the latest by stop()."""
        host = HostProcess(
            REPO_ROOT, env={**self.env, **overrides}, log_path=self._log(name), grace_seconds=self.host_grace_seconds
        )
        self._extra_hosts.append(host)  # before it starts: one that never got ready is still stopped by stop()
        return host.start(timeout=60)

    def switch_storage(self, proxied: bool) -> None:
        """Restart the host with its storage through the counting proxy or straight to Azurite."""
        self.host.stop()
        self.use_proxy = proxied
        self.env["AzureWebJobsStorage"] = self.host.env["AzureWebJobsStorage"] = self.storage_connection_string
        self.host.start(timeout=60)
        wait_until_healthy(self.host.base_url, 60)

    def storage_counts(self) -> dict[str, int]:
        return self.proxy.counts()

    # -- the receiver ------------------------------------------------------------------------------------------------
    def hook_url(self, name: str, **query: Any) -> str:
        """A receiver URL whose requests are listed by received(name); `query` sets its misbehaviour knobs."""
        qs = "&".join(f"{k}={v}" for k, v in query.items())
        return f"{self.receiver.url}/{name}" + (f"?{qs}" if qs else "")

    def received(self, name: str) -> list[dict[str, Any]]:
        return self.receiver.for_path(f"/{name}")

    def _instance_name(self) -> str:
        return self.name if self.keep_data else f"{self.name}-{os.getpid()}"

    def _log(self, what: str) -> Path:
        return self.log_dir / f"{self._instance_name()}-{what}.log"


def wait_until_healthy(base_url: str, timeout: float) -> None:
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        try:
            response = httpx.get(f"{base_url}/api/health", timeout=5)
            if response.status_code == 200:
                return
            last = response.text
        except httpx.HTTPError as error:
            last = repr(error)
        time.sleep(0.25)
    raise RuntimeError(f"service not healthy after {timeout}s: {last}")


# -- subprocess helpers ----------------------------------------------------------------------------------------------
def _python_process(args: list[str], log_path: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    log = open(log_path, "ab")
    try:
        return subprocess.Popen(
            args,
            cwd=REPO_ROOT,
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT), **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    finally:
        log.close()  # the child has its own copy


def _wait_until(ready, proc: subprocess.Popen, timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if ready():
                return
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"{message}: exited with code {proc.returncode}")
        time.sleep(0.1)
    raise RuntimeError(message)


def _stop_process(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
    except ProcessLookupError:
        pass
