"""``python -m local.emulator [--host 127.0.0.1] [--port 7070] [--time-scale 1.0] [--db PATH] ...``

Every EmulatorConfig field is a flag (``--fault-429-rate 0.1``) and an env var (``EMULATOR_FAULT_429_RATE``);
host and port are also read from ``EMULATOR_HOST`` / ``EMULATOR_PORT``. ``--deployments`` (``EMULATOR_DEPLOYMENTS``)
serves several deployments, each on its own port: ``ptu,payg`` or ``{"ptu": {"port": 7080, "rpm_limit": 60}, ...}``
(the first one on ``--port``).
"""

from __future__ import annotations

import argparse
import os
import sys

from .config import EmulatorConfig, config_fields
from .server import EmulatorServer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m local.emulator", description="Local OpenAI Responses API emulator (dev only)."
    )
    parser.add_argument("--host", default=os.environ.get("EMULATOR_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("EMULATOR_PORT", "7070")))
    parser.add_argument("--log-level", default=os.environ.get("EMULATOR_LOG_LEVEL", "warning"))
    parser.add_argument(
        "--deployments",
        default=os.environ.get("EMULATOR_DEPLOYMENTS", ""),
        help='several deployments, each on its own port: "ptu,payg" or '
        '{"ptu": {"port": 7080, "rpm_limit": 60}, "payg": {}} (first one on --port)',
    )
    for f in config_fields():
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            default=None,
            help=f"(env EMULATOR_{f.name.upper()}; default {f.default!r})",
        )
    args = parser.parse_args(argv)
    overrides = {f.name: getattr(args, f.name) for f in config_fields() if getattr(args, f.name) is not None}
    try:
        config = EmulatorConfig.from_env(**overrides)
        server = EmulatorServer(
            args.host, args.port, config=config, log_level=args.log_level, deployments=args.deployments or None
        )
    except ValueError as exc:
        parser.error(str(exc))

    def announce() -> None:
        urls = "; ".join(f"{d.name} {d.base_url}" for d in server.deployments.values())
        print(
            f"responses emulator (also under /openai/v1): {urls}; time_scale={config.time_scale} db={config.db or '-'}",
            file=sys.stderr,
            flush=True,
        )

    server.serve_forever(announce)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
