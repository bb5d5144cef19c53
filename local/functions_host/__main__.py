"""`python -m local.functions_host [--app-dir DIR] [--port 7071] [--host 127.0.0.1] ...`"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from pathlib import Path

from .errors import StartupError
from .host import FunctionsHost, HostOptions


class _UtcFormatter(logging.Formatter):
    converter = time.gmtime

    def formatTime(self, record, datefmt=None):  # the logging API's name
        return time.strftime("%Y-%m-%dT%H:%M:%S", self.converter(record.created)) + f".{int(record.msecs):03d}Z"


def setup_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_UtcFormatter("[%(asctime)s] %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("azure", "uvicorn", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m local.functions_host", description="Local Azure Functions host for Python v2 apps (dev only)."
    )
    parser.add_argument("--app-dir", default=".", help="folder with function_app.py and host.json (default .)")
    parser.add_argument("--port", type=int, default=7071)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument(
        "--grace",
        type=float,
        default=None,
        help="seconds running invocations may take to finish on SIGINT/SIGTERM "
        "(default FUNCTIONS_HOST_GRACE_SECONDS or 30)",
    )
    parser.add_argument("--master-key", default=None, help="enables keys; also FUNCTIONS_HOST_MASTER_KEY")
    parser.add_argument(
        "--function-key",
        action="append",
        default=[],
        help="a key valid for every FUNCTION-level route (repeatable); enables keys; "
        "also FUNCTIONS_HOST_FUNCTION_KEYS='k1,k2,fn_name=k3'",
    )
    parser.add_argument(
        "--http-per-instance-concurrency",
        type=int,
        default=None,
        metavar="N",
        help="at most N HTTP invocations at once, the rest queue (Flex scaleAndConcurrency.triggers."
        "http.perInstanceConcurrency); also FUNCTIONS_HOST_HTTP_PER_INSTANCE_CONCURRENCY; "
        "default unlimited",
    )
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    setup_logging(args.log_level.upper())
    log = logging.getLogger("functions_host")
    app_dir = Path(args.app_dir).resolve()
    if not app_dir.is_dir():
        log.error("Host start-up failed: --app-dir %s is not a folder", app_dir)
        return 1
    os.chdir(app_dir)  # the worker's working directory is the app root (/home/site/wwwroot in Azure)
    host = FunctionsHost(
        HostOptions(
            app_dir=app_dir,
            host=args.host,
            port=args.port,
            grace_seconds=args.grace,
            master_key=args.master_key,
            function_keys=args.function_key,
            http_concurrency=args.http_per_instance_concurrency,
        )
    )
    try:
        host.load()
        return asyncio.run(host.run())
    except StartupError as exc:
        log.error("Host start-up failed: %s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
