"""Start and stop a real Azurite (from node_modules) for the local stack and the tests.

Dev-only. Azurite listens on loopback; its data lives in a folder inside the repo (ignored by git).
`python -m local.azurite --check-node` says when the Node.js on PATH is older than the pinned Azurite declares
(standard library only, so the Makefile runs it before any venv exists).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
AZURITE_BIN = REPO_ROOT / "node_modules" / ".bin" / "azurite"
AZURITE_PACKAGE = REPO_ROOT / "node_modules" / "azurite" / "package.json"
ACCOUNT = "devstoreaccount1"
# Azurite's well-known development key (public, documented by Microsoft; not a secret).
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def connection_string(blob_port: int, queue_port: int, table_port: int) -> str:
    base = "http://127.0.0.1"
    return (
        f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
        f"BlobEndpoint={base}:{blob_port}/{ACCOUNT};QueueEndpoint={base}:{queue_port}/{ACCOUNT};"
        f"TableEndpoint={base}:{table_port}/{ACCOUNT};"
    )


def _wait_for_port(port: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"Azurite did not open port {port}")


@dataclass
class Azurite:
    """One Azurite process (blob, queue and table) on the given ports."""

    data_dir: Path
    blob_port: int = 10000
    queue_port: int = 10001
    table_port: int = 10002
    process: subprocess.Popen | None = None
    # The stack whose host (and emulator) serves this storage account now (local.stack.LocalStack), if any.
    serving_stack: str | None = None

    @property
    def connection_string(self) -> str:
        return connection_string(self.blob_port, self.queue_port, self.table_port)

    def start(self, *, fresh: bool = False, timeout: float = 30.0) -> Azurite:
        if not AZURITE_BIN.exists():
            raise RuntimeError(f"{AZURITE_BIN} is missing: run `npm ci` (make does it for you)")
        if fresh and self.data_dir.exists():
            shutil.rmtree(self.data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.data_dir / "azurite.log", "ab")
        self.process = subprocess.Popen(
            [
                str(AZURITE_BIN),
                "--silent",
                "--disableTelemetry",
                "--skipApiVersionCheck",
                "--loose",
                "--location",
                str(self.data_dir),
                "--blobHost",
                "127.0.0.1",
                "--blobPort",
                str(self.blob_port),
                "--queueHost",
                "127.0.0.1",
                "--queuePort",
                str(self.queue_port),
                "--tableHost",
                "127.0.0.1",
                "--tablePort",
                str(self.table_port),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        for port in (self.blob_port, self.queue_port, self.table_port):
            _wait_for_port(port, deadline)
        return self

    def stop(self, *, kill: bool = False, timeout: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGKILL if kill else signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout)

    def restart(self) -> None:
        """Stop and start again on the same ports and data (used by chaos tests)."""
        self.stop()
        self.start()


def start_for_tests(name: str) -> Azurite:
    """A fresh Azurite on free ports with its data under .azurite/<name>."""
    return Azurite(
        data_dir=REPO_ROOT / ".azurite" / name,
        blob_port=free_port(),
        queue_port=free_port(),
        table_port=free_port(),
    ).start(fresh=True)


# -- the Node.js that runs Azurite ---------------------------------------------------------------------------------
def engine_problem(declared: str, node_version: str) -> str | None:
    """Why `node_version` (`node --version`, e.g. v20.20.2) falls short of an `engines.node` range, or None.

    Only lower bounds (`>=22`, `>=22.0.0`) are judged; any other range is left to npm."""
    bound = re.fullmatch(r"\s*>=\s*v?(\d+)(?:\.(\d+))?(?:\.(\d+))?\s*", declared)
    have = re.fullmatch(r"\s*v?(\d+)\.(\d+)\.(\d+)\S*\s*", node_version)
    if not bound or not have:
        return None
    need = tuple(int(part or 0) for part in bound.groups())
    if tuple(int(part) for part in have.groups()) >= need:
        return None
    return f"Node.js {node_version.strip()} is older than {'.'.join(map(str, need))}"


def node_engine_warning() -> str | None:
    """A warning when the Node.js on PATH is older than the installed Azurite declares (None when it is not, or
    when Azurite is not installed yet). A warning, not a refusal: an older Node may still run Azurite today."""
    try:
        package = json.loads(AZURITE_PACKAGE.read_text(encoding="utf-8"))
        declared = package["engines"]["node"]
    except (OSError, KeyError, TypeError, ValueError):
        return None
    node = shutil.which("node")
    if node is None:
        return f"Node.js is not on PATH; Azurite {package.get('version')} needs Node.js {declared}"
    version = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30).stdout
    problem = engine_problem(declared, version)
    if problem is None:
        return None
    return (
        f"{problem}, the oldest that Azurite {package.get('version')} supports (engines.node {declared}). It may "
        'still run, but a later Azurite may refuse it: install a newer Node.js (README.md, "Two commands").'
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Azurite helpers for the local stack.")
    parser.add_argument("--check-node", action="store_true", help="warn when Node.js is older than Azurite declares")
    if parser.parse_args().check_node and (warning := node_engine_warning()):
        print(f"warning: {warning}", flush=True)
