"""A counting reverse proxy in front of Azurite (loopback only; dev and benchmarks, never deployed): every
Table/Queue/Blob request the host makes - the service's own calls AND the Functions host's trigger
receives/deletes/lease renewals, i.e. every billable storage transaction - is counted by service and operation.

Why: GET /api/metrics counts only the service's own storage requests (its clients' `raw_request_hook`), never the
trigger's receives, deletes and lease renewals, which are billed too (bench/README.md, "The figures", figure 3).

    python -m local.storage_proxy --blob 11000:10000 --queue 11001:10001 --table 11002:10002 --control 11003
    GET http://127.0.0.1:<control>/counts  -> {"table.get_entity": 12, "queue.receive": 40, ...}
"""

from __future__ import annotations

import argparse
import asyncio
import re
from collections import Counter

from aiohttp import ClientSession, ClientTimeout, TCPConnector, web
from yarl import URL

COUNTS: Counter = Counter()
# Fault rules for repro scripts: POST /rules [{"op": "table.insert", "path_contains": "/runs", "hang_s": 10}]
RULES: list[dict] = []
_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "upgrade", "proxy-connection", "host", "content-length"}


def classify(service: str, method: str, path: str, query: str) -> str:
    if service == "queue":
        if re.search(r"/messages/[^/]+$", path):
            return {"DELETE": "queue.delete_message", "PUT": "queue.update_message"}.get(method, f"queue.{method}")
        if path.endswith("/messages"):
            if method == "GET":
                return "queue.peek" if "peekonly=true" in query.lower() else "queue.receive"
            return {"POST": "queue.send", "DELETE": "queue.clear"}.get(method, f"queue.{method}")
        return f"queue.admin_{method}"
    if service == "table":
        if "(" in path and "PartitionKey" in path:
            return {
                "GET": "table.get_entity",
                "PUT": "table.update_entity",
                "MERGE": "table.merge_entity",
                "PATCH": "table.merge_entity",
                "DELETE": "table.delete_entity",
            }.get(method, f"table.{method}")
        if method == "GET":
            return "table.query"
        if method == "POST" and path.rstrip("/").endswith("Tables"):
            return "table.admin_create"
        if method == "POST" and "$batch" in path:
            return "table.batch"
        return {"POST": "table.insert"}.get(method, f"table.{method}")
    return f"blob.{method}"


def make_app(service: str, upstream: str, session_box: list) -> web.Application:
    async def handle(request: web.Request) -> web.StreamResponse:
        op = classify(service, request.method, request.path, request.query_string)
        COUNTS[op] += 1
        for rule in RULES:
            if rule.get("op") == op and rule.get("path_contains", "") in request.path:
                await asyncio.sleep(float(rule.get("hang_s", 0)))
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        session: ClientSession = session_box[0]
        if body and "content-type" not in {k.lower() for k in headers}:
            headers["Content-Type"] = ""  # keep aiohttp from adding one: it is part of the SharedKey signature
        url = URL(upstream + request.raw_path, encoded=True)
        async with session.request(
            request.method,
            url,
            headers=headers,
            data=body or None,
            allow_redirects=False,
            auto_decompress=False,
            skip_auto_headers=("Content-Type", "Accept-Encoding", "User-Agent"),
        ) as up:
            payload = await up.read()
            out_headers = {k: v for k, v in up.headers.items() if k.lower() not in _HOP}
            return web.Response(status=up.status, body=payload, headers=out_headers)

    app = web.Application(client_max_size=256 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


async def serve(mapping: dict[str, tuple[int, int]], control: int) -> None:
    session_box: list = [ClientSession(connector=TCPConnector(limit=256), timeout=ClientTimeout(total=120))]
    runners = []
    for service, (listen, target) in mapping.items():
        runner = web.AppRunner(make_app(service, f"http://127.0.0.1:{target}", session_box), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", listen, backlog=1024).start()
        runners.append(runner)

    async def counts(request: web.Request) -> web.Response:
        return web.json_response(dict(COUNTS))

    async def rules(request: web.Request) -> web.Response:
        RULES[:] = await request.json()
        return web.json_response(RULES)

    ctl = web.Application()
    ctl.router.add_get("/counts", counts)
    ctl.router.add_post("/rules", rules)
    runner = web.AppRunner(ctl, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", control).start()
    print("storage proxy ready", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("blob", "queue", "table"):
        parser.add_argument(f"--{name}", required=True, help="LISTEN:TARGET")
    parser.add_argument("--control", type=int, required=True)
    args = parser.parse_args()
    mapping = {n: tuple(int(x) for x in getattr(args, n).split(":")) for n in ("blob", "queue", "table")}
    asyncio.run(serve(mapping, args.control))


if __name__ == "__main__":
    main()
