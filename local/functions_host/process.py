"""Run the local Functions host as a subprocess (for end-to-end tests, SIGKILL tests and scripts).

    from local.functions_host.process import HostProcess
    with HostProcess("path/to/app", env={"AzureWebJobsStorage": conn}) as host:   # start(wait_ready=True)
        requests.get(host.url("api/runs/1"))
        host.kill(); host.restart()

The host runs in its own process group (start_new_session), so stop()/kill() reach any child it spawned.
Its stdout+stderr go to a log file (`log_path`, default a temp file); `logs()` and `wait_for_log()` read it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


class HostStartError(RuntimeError):
    """The host exited or did not become ready; the message ends with the tail of its log."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class HostProcess:
    def __init__(
        self,
        app_dir: str | os.PathLike,
        port: int | None = None,
        env: Mapping[str, str] | None = None,
        *,
        host: str = "127.0.0.1",
        log_path: str | os.PathLike | None = None,
        grace_seconds: float | None = None,
        extra_args: list[str] | None = None,
        inherit_env: bool = True,
        python: str = sys.executable,
    ) -> None:
        self.app_dir = Path(app_dir).resolve()
        self.port = port or free_port()
        self.host = host
        self.env = dict(env or {})
        self.inherit_env = inherit_env
        self.grace_seconds = grace_seconds
        self.extra_args = list(extra_args or [])
        self.python = python
        if log_path is None:
            fd, name = tempfile.mkstemp(prefix="functions-host-", suffix=".log")
            os.close(fd)
            log_path = name
        self.log_path = Path(log_path)
        self.proc: subprocess.Popen | None = None
        self._log_file = None

    # -- URLs ---------------------------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def url(self, path: str = "") -> str:
        return f"{self.base_url}/{path.lstrip('/')}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- lifecycle ------------------------------------------------------------------------------------------
    def start(self, wait_ready: bool = True, timeout: float = 30.0) -> HostProcess:
        if self.is_running():
            raise RuntimeError("host already running")
        env = dict(os.environ) if self.inherit_env else {}
        env.update(self.env)
        env["PYTHONPATH"] = os.pathsep.join(p for p in [str(REPO_ROOT), env.get("PYTHONPATH", "")] if p)
        env.setdefault("PYTHONUNBUFFERED", "1")
        args = [
            self.python,
            "-m",
            "local.functions_host",
            "--app-dir",
            str(self.app_dir),
            "--port",
            str(self.port),
            "--host",
            self.host,
        ]
        if self.grace_seconds is not None:
            args += ["--grace", str(self.grace_seconds)]
        args += self.extra_args
        self._log_file = open(self.log_path, "ab")
        self._log_file.write(f"\n===== start {time.strftime('%H:%M:%S')} {' '.join(args)}\n".encode())
        self._log_file.flush()
        self.proc = subprocess.Popen(
            args,
            cwd=str(self.app_dir),
            env=env,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        if wait_ready:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 30.0) -> dict:
        """Poll GET /admin/host/status until state == Running (sends the master key if one is configured)."""
        deadline = time.monotonic() + timeout
        key = self.env.get("FUNCTIONS_HOST_MASTER_KEY") or os.environ.get("FUNCTIONS_HOST_MASTER_KEY")
        if "--master-key" in self.extra_args:
            key = self.extra_args[self.extra_args.index("--master-key") + 1]
        headers = {"x-functions-key": key} if key else {}
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise HostStartError(
                    f"host exited with code {self.returncode} before it was ready\n" + self.logs(tail=4000)
                )
            try:
                req = urllib.request.Request(self.url("admin/host/status"), headers=headers)
                with urllib.request.urlopen(req, timeout=1) as resp:
                    status = json.loads(resp.read())
                    if status.get("state") == "Running":
                        return status
            except (urllib.error.URLError, ConnectionError, OSError, ValueError):
                pass
            time.sleep(0.1)
        raise HostStartError(f"host not ready after {timeout}s\n" + self.logs(tail=4000))

    def stop(self, timeout: float | None = None) -> int | None:
        """SIGTERM (graceful: running invocations may finish), then SIGKILL the group after `timeout`."""
        if self.proc is None:
            return None
        if timeout is None:
            timeout = (self.grace_seconds if self.grace_seconds is not None else 30.0) + 10.0
        if self.proc.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.proc.wait(10)
        self._reap_group()
        self._close_log()
        return self.proc.returncode

    def kill(self) -> int | None:
        """SIGKILL the whole process group (no cleanup: unfinished messages reappear after their lease)."""
        if self.proc is None:
            return None
        self._signal(signal.SIGKILL)
        self.proc.wait(10)
        self._close_log()
        return self.proc.returncode

    def restart(self, wait_ready: bool = True, timeout: float = 30.0) -> HostProcess:
        if self.is_running():
            self.stop()
        return self.start(wait_ready=wait_ready, timeout=timeout)

    def send_signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def wait(self, timeout: float | None = None) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def _signal(self, sig: int) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def _reap_group(self) -> None:
        # Anything the host left in its group (it should not leave anything) is killed.
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    # -- logs ------------------------------------------------------------------------------------------------
    def logs(self, tail: int | None = None) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""
        return text[-tail:] if tail else text

    def wait_for_log(self, pattern: str, timeout: float = 10.0, count: int = 1) -> list[str]:
        """Wait until the regex `pattern` matches at least `count` times in the log; return the matches."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            found = rx.findall(self.logs())
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"log pattern {pattern!r} seen {len(found)}/{count} times in {timeout}s\n" + self.logs(tail=4000)
                )
            if self.proc is not None and self.proc.poll() is not None:
                found = rx.findall(self.logs())
                if len(found) >= count:
                    return found
                raise HostStartError(
                    f"host exited (code {self.proc.returncode}) while waiting for {pattern!r}\n" + self.logs(tail=4000)
                )
            time.sleep(0.05)

    # -- context manager -----------------------------------------------------------------------------------
    def __enter__(self) -> HostProcess:
        if not self.is_running():
            self.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.is_running():
            self.stop()
        elif self.proc is not None:
            self._reap_group()
            self._close_log()
