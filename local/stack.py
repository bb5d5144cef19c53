"""`make run`: the whole local stack on 127.0.0.1 with embedded defaults.

Azurite (blob 10000, queue 10001, table 10002), the Responses API emulator (7070), the Functions app
on the local host (7071; `func start` instead when Azure Functions Core Tools is on PATH) and a webhook
receiver that prints verified events (7072). Dev secrets are generated once into .local/secrets.env
(ignored by git). Ctrl-C stops everything.
"""
from __future__ import annotations

import argparse
import base64
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from local.azurite import REPO_ROOT, Azurite
from local.functions_host.process import HostProcess

LOCAL_DIR = REPO_ROOT / ".local"
SECRETS_FILE = LOCAL_DIR / "secrets.env"


def dev_secrets() -> dict[str, str]:
    """Random dev-only secrets, made once and kept so tokens survive restarts of the stack."""
    LOCAL_DIR.mkdir(exist_ok=True)
    if not SECRETS_FILE.exists():
        SECRETS_FILE.write_text(
            f"RUN_TOKEN_KEY={secrets.token_urlsafe(48)}\n"
            f"WEBHOOK_SIGNING_SECRETS=whsec_{base64.b64encode(os.urandom(32)).decode()}\n")
        SECRETS_FILE.chmod(0o600)
    pairs = (line.split("=", 1) for line in SECRETS_FILE.read_text().splitlines() if "=" in line)
    return {key: value for key, value in pairs}


def stack_env(storage: str, emulator_url: str) -> dict[str, str]:
    return {
        "AzureWebJobsStorage": storage,
        "EMULATOR_BASE_URL": emulator_url,
        "MODEL_PROVIDER": os.environ.get("MODEL_PROVIDER", ""),
        # `RUN_BACKEND=executor make run`: the app runs every model call itself (Chat Completions on the emulator).
        "RUN_BACKEND": os.environ.get("RUN_BACKEND", ""),
        # Local development only: the receiver runs on loopback over plain http.
        "WEBHOOK_ALLOW_HTTP": "true",
        "WEBHOOK_ALLOW_PRIVATE_ADDRESSES": "true",
        "SWEEP_SCHEDULE": os.environ.get("SWEEP_SCHEDULE", "*/30 * * * * *"),
        "PYTHON_ENABLE_INIT_INDEXING": "1",
        **dev_secrets(),
    }


def _python_module(module: str, *args: str, log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", module, *args], cwd=REPO_ROOT, stdout=open(log, "ab"),
                            stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, **(env or {})})


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def _print_banner(env: dict[str, str]) -> None:
    print("""
Local stack is up:
  API            http://127.0.0.1:7071/api        (no function key needed locally)
  emulator       http://127.0.0.1:7070/v1         (stats: /v1/_emulator/stats)
  webhooks       http://127.0.0.1:7072/           (prints verified events; GET /_received)
  logs           .local/*.log

Try it:
  curl -s -i -X POST http://127.0.0.1:7071/api/runs -H 'content-type: application/json' \\
       -d '{"input": "Write a haiku about queues", "webhook_url": "http://127.0.0.1:7072/hook"}'
  curl -s http://127.0.0.1:7071/api/runs/<id>
  curl -s -N -X POST http://127.0.0.1:7071/api/runs -H 'content-type: application/json' \\
       -d '{"input": "Stream me something", "stream": true}'
  page: http://127.0.0.1:7071/api/ui

Ctrl-C stops everything.""", flush=True)


STACK_PORTS = {10000: "Azurite blob", 10001: "Azurite queue", 10002: "Azurite table", 7070: "emulator",
               7071: "Functions host", 7072: "webhook receiver"}


def _ports_in_use() -> list[str]:
    busy = []
    for port, what in STACK_PORTS.items():
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                busy.append(f"{port} ({what})")
    return busy


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the whole local stack.")
    parser.add_argument("--fresh", action="store_true", help="start with empty Azurite and emulator data")
    args = parser.parse_args()
    busy = _ports_in_use()
    if busy:
        raise SystemExit(f"these ports are already in use (another `make run`?): {', '.join(busy)}")
    LOCAL_DIR.mkdir(exist_ok=True)
    azurite = Azurite(REPO_ROOT / ".azurite" / "stack").start(fresh=args.fresh)
    emulator_db = LOCAL_DIR / "emulator.sqlite"
    if args.fresh and emulator_db.exists():
        emulator_db.unlink()
    env = stack_env("UseDevelopmentStorage=true", "http://127.0.0.1:7070/v1")
    children = [
        _python_module("local.emulator", "--port", "7070", "--db", str(emulator_db), log=LOCAL_DIR / "emulator.log"),
        _python_module("local.webhook_receiver", "--port", "7072", log=LOCAL_DIR / "webhooks.log", env=env),
    ]
    func = shutil.which("func")
    host = None
    if func:
        children.append(subprocess.Popen([func, "start", "--port", "7071"], cwd=REPO_ROOT, env={**os.environ, **env},
                                         start_new_session=True))
    else:
        host = HostProcess(REPO_ROOT, port=7071, env=env, log_path=LOCAL_DIR / "host.log").start(timeout=60)
    _print_banner(env)
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    try:
        with open(LOCAL_DIR / "host.log", "rb") as log:
            log.seek(0, os.SEEK_END)
            while not stopping:
                chunk = log.read()
                if chunk:
                    sys.stdout.write(chunk.decode("utf-8", "replace"))
                    sys.stdout.flush()
                time.sleep(0.3)
    except KeyboardInterrupt:
        pass
    finally:
        print("\nstopping...", flush=True)
        if host:
            host.stop()
        for child in children:
            _stop(child)
        azurite.stop()


if __name__ == "__main__":
    main()
