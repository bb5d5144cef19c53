"""Load test of the local Responses API emulator.

Starts the emulator as a subprocess (so its RSS and CPU are measured alone), then
  phase "live":   N concurrent background+stream creates, each followed to its terminal event while the
                  emulator paces the events on its own clock;
  phase "replay": N concurrent GET ?stream=true replays of the now-finished responses (raw throughput).
Prints one JSON document (and writes it to --out if given): events/s per phase, peak RSS and CPU of the
emulator process, and how late each terminal event arrived relative to its due time (finished_at).

    .venv/bin/python -m bench.emulator_load [--n 500] [--time-scale 0.05] [--duration-ms 60000]
                                            [--output-chars 2000] [--out FILE]
The client uses raw aiohttp (not the SDK) so that client-side parsing does not cap the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import aiohttp
import psutil

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Sampler(threading.Thread):
    """Samples RSS and CPU of one process every 50 ms."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.proc = psutil.Process(pid)
        self.peak_rss = 0
        self.stop_flag = threading.Event()

    def run(self) -> None:
        while not self.stop_flag.is_set():
            try:
                self.peak_rss = max(self.peak_rss, self.proc.memory_info().rss)
            except psutil.Error:
                return
            time.sleep(0.05)

    def cpu_seconds(self) -> float:
        t = self.proc.cpu_times()
        return t.user + t.system


async def stream_events(session: aiohttp.ClientSession, method: str, url: str, **kw) -> tuple[int, str, float]:
    """Read one SSE stream; return (event count, last event type, arrival time of the last event)."""
    count, last_type, buf = 0, "", b""
    async with session.request(method, url, **kw) as r:
        r.raise_for_status()
        async for chunk in r.content.iter_any():
            buf += chunk
            end = buf.rfind(b"\n\n")
            if end < 0:
                continue
            complete, buf = buf[: end + 2], buf[end + 2 :]
            count += complete.count(b"\n\n")
            pos = complete.rfind(b"event: ")
            if pos >= 0:
                last_type = complete[pos + 7 : complete.index(b"\n", pos)].decode()
    return count, last_type, time.time()


async def run(args) -> dict:
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    command = [
        sys.executable,
        "-m",
        "local.emulator",
        "--port",
        str(port),
        "--time-scale",
        str(args.time_scale),
        "--max-deltas",
        "200",
    ]
    proc = subprocess.Popen(command, cwd=REPO, env=env, stderr=subprocess.DEVNULL)  # noqa: ASYNC220 - before the load
    base = f"http://127.0.0.1:{port}/v1"
    try:
        connector = aiohttp.TCPConnector(limit=args.n + 50)
        timeout = aiohttp.ClientTimeout(total=600)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as client:
            for _ in range(200):
                try:
                    async with client.get(f"http://127.0.0.1:{port}/healthz") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.05)
            sampler = Sampler(proc.pid)
            sampler.start()
            rss_idle = psutil.Process(proc.pid).memory_info().rss
            meta = {
                "emulator_duration_ms": str(args.duration_ms),
                "emulator_queue_ms": "500",
                "emulator_output_chars": str(args.output_chars),
                "bg_run_id": "bench",
            }

            # phase 1: live paced streams
            cpu0, t0 = sampler.cpu_seconds(), time.time()
            body = {"model": "bench", "background": True, "stream": True, "metadata": meta}
            live = await asyncio.gather(
                *(
                    stream_events(client, "POST", f"{base}/responses", json={**body, "input": f"job {i}"})
                    for i in range(args.n)
                )
            )
            t1, cpu1 = time.time(), sampler.cpu_seconds()
            async with client.get(f"{base}/_emulator/responses") as r:
                rows = (await r.json())["data"]
            by_id_finish = sorted(r["finished_at"] for r in rows)
            ok_live = sum(1 for c, last, _ in live if last == "response.completed")
            live_events = sum(c for c, _, _ in live)
            # lateness of terminal events: arrival - due time, matched by rank (both sorted)
            arrivals = sorted(a for _, _, a in live)
            lateness = [a - f for a, f in zip(arrivals, by_id_finish, strict=False)]  # a failed stream has no arrival

            # phase 2: replay of finished responses as fast as possible
            ids = [r["id"] for r in rows]
            cpu2, t2 = sampler.cpu_seconds(), time.time()
            replay = await asyncio.gather(
                *(stream_events(client, "GET", f"{base}/responses/{rid}", params={"stream": "true"}) for rid in ids)
            )
            t3, cpu3 = time.time(), sampler.cpu_seconds()
            ok_replay = sum(1 for c, last, _ in replay if last == "response.completed")
            replay_events = sum(c for c, _, _ in replay)
            async with client.get(f"{base}/_emulator/stats") as r:
                stats = await r.json()
            sampler.stop_flag.set()
            sampler.join()
            paced_s = args.duration_ms * args.time_scale / 1000.0
            return {
                "n": args.n,
                "time_scale": args.time_scale,
                "duration_ms": args.duration_ms,
                "paced_run_s": paced_s,
                "output_chars": args.output_chars,
                "events_per_response": live_events // max(1, args.n),
                "live": {
                    "completed": ok_live,
                    "events": live_events,
                    "wall_s": round(t1 - t0, 3),
                    "events_per_s": round(live_events / (t1 - t0)),
                    "emulator_cpu_s": round(cpu1 - cpu0, 3),
                    "terminal_lateness_ms": {
                        "p50": round(statistics.median(lateness) * 1000, 1),
                        "p99": round(sorted(lateness)[int(len(lateness) * 0.99) - 1] * 1000, 1),
                        "max": round(max(lateness) * 1000, 1),
                    },
                },
                "replay": {
                    "completed": ok_replay,
                    "events": replay_events,
                    "wall_s": round(t3 - t2, 3),
                    "events_per_s": round(replay_events / (t3 - t2)),
                    "emulator_cpu_s": round(cpu3 - cpu2, 3),
                },
                "emulator_rss_mb": {"idle": round(rss_idle / 2**20, 1), "peak": round(sampler.peak_rss / 2**20, 1)},
                "emulator_stats": {"events_sent": stats["events_sent"], "requests": stats["requests"]},
            }
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--time-scale", type=float, default=0.05)
    p.add_argument("--duration-ms", type=float, default=60000)
    p.add_argument("--output-chars", type=int, default=2000)
    p.add_argument("--out", default="")
    args = p.parse_args()
    result = asyncio.run(run(args))
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
