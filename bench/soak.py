"""`python -m bench.soak --minutes N`: a steady, realistic load on the local stack for N minutes; what could grow
is sampled each minute and must stay flat.

The stack (bench.common.LocalStack, with the counting storage proxy in the path): Azurite, the emulator (its
provider webhooks on, 10 % lost and 5 % sent twice, light provider faults), the webhook receiver, and two
instances of the app on the same storage: the **worker** (RUN_BACKEND=background, COMPLETION_STRATEGY=push:
every function, production defaults: sweeper once a minute, poll and webhook schedules as shipped) and a
**front** with RUN_BACKEND=executor serving HTTP only (its queue and timer functions disabled), so its executor
runs are executed by the worker, as on Flex Consumption, where HTTP and queue functions scale apart.
The load is bench/soak_mix.py (the chaos scenarios, long runs, the facade through the openai SDK).

Sampled each minute (bench/results/soak-<N>min.json; the trends and verdicts: bench/soak_trend.py):
- each app process: RSS now (psutil), CPU per poll step and per start (the process's CPU over the minute
  divided by the poll steps / the starts in it; the local host counts invocations per function), file
  descriptors, threads, asyncio tasks and Python's allocated blocks (the local host's /admin/host/status);
- storage requests per run (the proxy's count of every request, triggers included, over the runs started in
  the minute), the open-work index (rows of the `open` partition of `runindex`), runs not yet ended, queue
  lengths (poison queues included), rows added per run started in every table and index partition kind, blobs;
- client latency of starts and reads; Azurite's, the emulator's and the proxy's RSS and CPU, the machine's CPU
  and what other processes used of it (the machine is shared): shown, not judged.

After the window the load stops, the runs in flight are left to end, and the run checks that every run ended,
every webhook arrived, no answer was a 500, the open-work index is empty again and no poison message exists;
then the stack stops and no process of it may be left. Ctrl-C or SIGTERM stop it early, cleanly, and still
write what was sampled.

    .venv/bin/python -m bench.soak --minutes 60            # ~66 min wall: start, 60 min, drain, stop
    .venv/bin/python -m bench.soak --minutes 3 --sample-seconds 20 --warmup-minutes 1 --out bench/results/tmp
    .venv/bin/python -m bench.soak_trend bench/results/soak-60min.json   # verdicts and plot again
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import secrets
import signal
import statistics
import sys
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import openai
import psutil

from shared.settings import declared_settings

from .chaos_client import TERMINAL, ApiClient
from .common import RESULTS, LocalStack, dump_json, new_secrets, pct
from .soak_mix import (
    EXECUTOR_MS,
    LONG_MS,
    PLAIN_MS,
    RATES,
    SoakMix,
    TimedTransport,
    http_client,
    plan,
    run_jobs,
    runs_per_minute,
)
from .soak_trend import Metric, Tolerance, Verdict, judge_all, summary_lines

KEY = secrets.token_urlsafe(32)
POISON = ("runs-poll-poison", "runs-webhook-poison", "runs-execute-poison")
# The two app instances: what each changes from the production defaults.
FRONT_ONLY_HTTP = {
    f"AzureWebJobs.{fn}.Disabled": "true"
    for fn in ("poll_run", "deliver_webhook", "execute_run", "sweep_runs", "purge_expired")
}
EMULATOR_PUSH = {"webhook_drop_rate": 0.10, "webhook_duplicate_rate": 0.05, "webhook_delay_ms": 200}
EMULATOR_FAULTS = {"fault_429_rate": 0.01, "fault_500_rate": 0.005, "fault_503_rate": 0.005, "stream_cut_rate": 0.02}

# -- what must stay flat ------------------------------------------------------------------------------------------
_MEMORY = Tolerance(0.05, 8.0)
_CPU = Tolerance(0.10, 0.0)
_COUNT = Tolerance(0.10, 5.0)


def _app_process(name: str, *, queue_functions: bool) -> tuple[Metric, ...]:
    """What one app process must keep flat (the worker also runs the poll chain and the thread pool)."""
    per_step = (
        (
            Metric(
                f"{name}.cpu_ms_per_poll_step",
                f"{name} CPU per poll step",
                "ms",
                _CPU,
                "10 %/h: CPU per operation must not creep (a growing scan or list)",
            ),
        )
        if queue_functions
        else ()
    )
    threads = (
        (Metric(f"{name}.threads", f"{name} threads", "", Tolerance(0.0, 2.0), "2/h: no thread per request"),)
        if queue_functions
        else ()
    )
    return (
        Metric(
            f"{name}.rss_mib",
            f"{name} RSS",
            "MiB",
            _MEMORY,
            "5 %/h (or 8 MiB/h): a leak of a few KB per run shows as tens of MiB per hour at this rate",
        ),
        *per_step,
        Metric(f"{name}.cpu_ms_per_start", f"{name} CPU per start", "ms", _CPU, "10 %/h, as above"),
        Metric(
            f"{name}.fds_but_idle_sockets",
            f"{name} file descriptors but idle keep-alive",
            "",
            _COUNT,
            "10 %/h or 5/h: files, pipes and sockets in use must be given back",
        ),
        Metric(
            f"{name}.sockets_in_use",
            f"{name} connections in use",
            "",
            _COUNT,
            "10 %/h or 5/h: a connection never given back to its pool is a leak",
        ),
        *threads,
        Metric(f"{name}.asyncio_tasks", f"{name} asyncio tasks", "", _COUNT, "10 %/h or 5/h: no task left behind"),
        Metric(f"{name}.allocated_kblocks", f"{name} Python allocated blocks", "k", _MEMORY, "as RSS, finer"),
    )


METRICS: tuple[Metric, ...] = (
    *_app_process("worker", queue_functions=True),
    *_app_process("front", queue_functions=False),
    Metric(
        "storage.requests_per_run",
        "storage requests per run (all)",
        "",
        Tolerance(0.05, 0.0),
        "5 %/h: every request counts on the bill",
    ),
    Metric(
        "storage.service_requests_per_run",
        "storage requests per run (service's own)",
        "",
        Tolerance(0.05, 0.0),
        "as above, without the triggers' idle polling",
    ),
    Metric("index.open", "open-work index rows", "", _COUNT, "10 %/h or 5/h: follows the runs in flight"),
    Metric("runs.active", "runs not ended", "", _COUNT, "as above: a backlog shows here"),
    Metric("queue.runs-poll", "runs-poll messages", "", _COUNT, "one chain per run in flight"),
    Metric("queue.runs-webhook", "runs-webhook messages", "", _COUNT, "one per delivery in flight"),
    Metric("queue.runs-execute", "runs-execute messages", "", _COUNT, "one per executor run waiting"),
    Metric("queue.poison", "poison messages", "", Tolerance(0.0, 0.5), "none may appear"),
    Metric(
        "rows_per_run.runs",
        "runs rows added per run",
        "",
        Tolerance(0.10, 0.0),
        "10 %/h: what a run leaves behind is the same for the 1st and the 3,000th",
    ),
    Metric("rows_per_run.runindex", "runindex rows added per run", "", Tolerance(0.10, 0.0), "as above"),
    Metric("rows_per_run.runevents", "runevents rows added per run", "", Tolerance(0.10, 0.0), "as above"),
    Metric("rows_per_run.idempotency", "idempotency rows added per run", "", Tolerance(0.10, 0.0), "as above"),
    Metric(
        "client.start_ms_p50",
        "start latency p50",
        "ms",
        Tolerance(0.25, 5.0),
        "25 %/h: wall time on a shared machine is noisy; a growing scan would still show",
    ),
    Metric("client.read_ms_p50", "GET /api/runs/{id} latency p50", "ms", Tolerance(0.25, 5.0), "as above"),
    Metric(
        "worker.fds",
        "worker file descriptors",
        "",
        None,
        "not judged: the idle keep-alive connections in it keep the pools' high-water mark (README, soak)",
    ),
    Metric("worker.sockets_idle", "worker idle keep-alive connections", "", None, "as above"),
    Metric("runs.started", "runs started per minute", "", None, "the load itself"),
    Metric("worker.poll_steps", "worker poll steps per minute", "", None, "the load itself"),
    Metric("worker.cpu_percent", "worker CPU, % of one core", "%", None, "absolute time (the machine is shared)"),
    Metric("front.cpu_percent", "front CPU, % of one core", "%", None, "absolute time"),
    Metric(
        "azurite.rss_mib",
        "Azurite RSS",
        "MiB",
        None,
        "Azurite keeps every table in memory: it grows with the runs kept (retention), by design",
    ),
    Metric(
        "azurite.cpu_percent",
        "Azurite CPU, % of one core",
        "%",
        None,
        "Azurite serves a point read by scanning the runs table (bench/README.md, sweeper section)",
    ),
    Metric("emulator.rss_mib", "emulator RSS", "MiB", None, "keeps responses for an hour"),
    Metric(
        "machine.others_cpu_percent",
        "other processes' CPU, % of one core",
        "%",
        None,
        "neighbours on the shared machine",
    ),
)


def _default(name: str) -> str:
    return next(s.default for s in declared_settings() if s.name == name)


# -- the processes ----------------------------------------------------------------------------------------------
class Proc:
    """A process (and its children, unless `alone`) read with psutil: CPU seconds so far, RSS now, descriptors
    and threads (of the process itself)."""

    def __init__(self, pid: int | None, *, alone: bool = False) -> None:
        self.process = psutil.Process(pid) if pid else None
        self.alone = alone

    def read(self, peers: dict[int, str] | None = None) -> dict[str, Any] | None:
        """With `peers` (port -> name), also its TCP connections by the peer they go to."""
        if self.process is None:
            return None
        try:
            procs = [self.process, *([] if self.alone else self.process.children(recursive=True))]
            cpu = rss = 0.0
            for proc in procs:
                times = proc.cpu_times()
                cpu += times.user + times.system
                rss += proc.memory_info().rss
            out = {
                "cpu_s": cpu,
                "rss_mib": rss / 2**20,
                "fds": self.process.num_fds(),
                "threads": self.process.num_threads(),
            }
            if peers is not None:
                connections = self.process.net_connections(kind="tcp")
                listening = {c.laddr.port for c in connections if not c.raddr}
                out["connections"] = dict(
                    Counter(
                        c.status.lower()
                        if not c.raddr
                        else "inbound"
                        if c.laddr.port in listening
                        else peers.get(c.raddr.port, "other")
                        for c in connections
                    )
                )
            return out
        except psutil.Error:
            return None


class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.stack: LocalStack | None = None
        self.front = None
        self.samples: list[dict[str, Any]] = []  # derived, one per interval
        self.raw: list[dict[str, Any]] = []
        self.events: list[str] = []
        self.t0 = 0.0
        self.t0_epoch = 0.0
        self.outcome: dict[str, Any] = {}  # filled as the run goes: what an interrupted run still reports
        self.interrupted = False

    def say(self, text: str) -> None:
        elapsed = time.monotonic() - self.t0 if self.t0 else 0.0
        line = f"[soak +{elapsed / 60:5.1f} min] {text}"
        self.events.append(line)
        print(line, flush=True)

    # -- the stack ----------------------------------------------------------------------------------------------
    def start_stack(self) -> None:
        push_secret = new_secrets(1)[0]
        env = {
            "RESPONSES_API_KEYS": f"soak:{KEY}:operator",
            "COMPLETION_STRATEGY": self.args.completion,
            # the host needs it as an app setting (it is bound as %SWEEP_SCHEDULE%): the shipped default
            "SWEEP_SCHEDULE": _default("SWEEP_SCHEDULE"),
        }
        emulator: dict[str, Any] = {"seed": self.args.seed}
        if self.args.completion == "push":
            env["PROVIDER_WEBHOOK_SECRETS"] = push_secret
            emulator.update(webhook_secret=push_secret, **EMULATOR_PUSH)
        self.stack = LocalStack("soak", host_env=env, emulator_config=emulator, use_proxy=True)
        if self.args.completion == "push":
            self.stack.emulator_config["webhook_url"] = (
                f"http://127.0.0.1:{self.stack.ports.host}/api/provider/webhooks"
            )
        self.stack.start()
        if not self.args.no_faults:
            self.stack.emulator.configure(**EMULATOR_FAULTS)
        if not self.args.no_executor:
            self.front = self.stack.start_host("soak-front", RUN_BACKEND="executor", **FRONT_ONLY_HTTP)
        stack = self.stack
        self.procs = {
            "worker": Proc(stack.host.pid),
            "front": Proc(self.front.pid if self.front else None),
            "azurite": Proc(stack.azurite.process.pid),
            "emulator": Proc(stack.emulator.proc.pid),
            "proxy": Proc(stack.proxy.proc.pid),
            "bench": Proc(os.getpid(), alone=True),
        }  # its children are the stack
        self.hosts = {"worker": stack.host.base_url, **({"front": self.front.base_url} if self.front else {})}
        proxy, ports = stack.proxy, stack.ports
        self.peers = {
            proxy.blob_port: "blob",
            proxy.queue_port: "queue",
            proxy.table_port: "table",
            proxy.control_port: "proxy control",
            ports.emulator: "emulator",
            stack.receiver.port: "receiver",
            ports.host: "worker",
            **({self.front.port: "front"} if self.front else {}),
        }

    def stop_stack(self) -> list[str]:
        """Stop everything; the processes this run started still alive afterwards (none, or a bug)."""
        started = psutil.Process().children(recursive=True)
        if self.stack is not None:
            self.stack.stop()
        left = []
        for proc in started:
            try:
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    left.append(f"{proc.pid} {' '.join(proc.cmdline()[:4])}")
            except psutil.NoSuchProcess:
                pass
        return left

    # -- sampling -------------------------------------------------------------------------------------------------
    async def sample(
        self, http: httpx.AsyncClient, mixes: list[SoakMix], transports: list[TimedTransport], minute: float
    ) -> dict[str, Any]:
        raw: dict[str, Any] = {"minute": minute, "at": time.time(), "procs": {}, "hosts": {}}
        for name, proc in self.procs.items():
            raw["procs"][name] = await asyncio.to_thread(proc.read, self.peers if name in self.hosts else None)
        for name, base in self.hosts.items():
            status = (await http.get(f"{base}/admin/host/status")).json()
            metrics = (await http.get(f"{base}/api/metrics")).json()
            pools = (await http.get(f"{base}/admin/host/pools")).json()
            raw["hosts"][name] = {
                "invocations": status.get("invocations", {}),
                "process": status.get("process", {}),
                "pools": pools,
                "storage_requests": metrics.get("storage_requests_total", 0),
                "storage_by_function": metrics.get("storage_requests_by_function", {}),
            }
        raw["proxy"] = await asyncio.to_thread(self.stack.storage_counts)
        raw["storage"] = await asyncio.to_thread(storage_snapshot, self.stack.azurite.connection_string)
        times = psutil.cpu_times()
        raw["machine"] = {
            "busy_s": times.user + times.system + times.nice + getattr(times, "irq", 0) + getattr(times, "softirq", 0),
            "load1": os.getloadavg()[0],
        }
        raw["starts"] = {mix.host: len(mix.api.records) + len(mix.facade_runs) for mix in mixes}
        raw["webhook_requests"] = len(self.stack.receiver.requests)
        raw["server_errors"] = sum(len(mix.api.server_errors) for mix in mixes)
        timed = [item for transport in transports for item in transport.take()]
        raw["latency"] = {kind: [s for k, s in timed if k == kind] for kind in ("start", "start_stream", "read")}
        return raw

    async def sampling(self, mixes: list[SoakMix], transports: list[TimedTransport], stop: asyncio.Event) -> None:
        interval = self.args.sample_seconds
        async with httpx.AsyncClient(timeout=60) as http:
            self.raw.append(await self.sample(http, mixes, transports, 0.0))
            k = 1
            while not stop.is_set():
                due = self.t0 + k * interval
                try:
                    await asyncio.wait_for(stop.wait(), max(0.0, due - time.monotonic()))
                    break
                except TimeoutError:
                    pass
                try:
                    raw = await self.sample(http, mixes, transports, k * interval / 60)
                except Exception as error:  # noqa: BLE001 - a missed sample is noted, the soak goes on
                    self.say(f"sample {k} failed: {type(error).__name__}: {error}")
                    k += 1
                    continue
                derived = derive(self.raw[-1], raw)
                raw.pop("latency")  # every request's time: the percentiles are in the derived sample
                self.raw.append(raw)
                self.samples.append(derived)
                self.say(progress_line(derived))
                k += 1

    # -- the run ---------------------------------------------------------------------------------------------------
    async def run_until_done(self) -> None:
        """run(), with SIGTERM cancelling it like Ctrl-C does."""
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, asyncio.current_task().cancel)
        try:
            await self.run()
        except asyncio.CancelledError:
            self.interrupted = True
            self.say("interrupted: stopping")
        finally:
            loop.remove_signal_handler(signal.SIGTERM)
            signal.signal(signal.SIGTERM, _interrupt)

    async def run(self) -> None:
        args = self.args
        jobs = plan(args.minutes, args.rate, self.rng)
        transports = [
            TimedTransport(limits=httpx.Limits(max_connections=64, max_keepalive_connections=16)) for _ in self.hosts
        ]
        clients = [
            http_client(base, transport) for base, transport in zip(self.hosts.values(), transports, strict=True)
        ]
        facades = [
            openai.AsyncOpenAI(base_url=f"{base}/api/v1", api_key=KEY, max_retries=3, timeout=300)
            for base in self.hosts.values()
        ]
        mixes = []
        for (name, _), client, facade in zip(self.hosts.items(), clients, facades, strict=True):
            durations = EXECUTOR_MS if name == "front" else PLAIN_MS
            mixes.append(
                SoakMix(
                    ApiClient(client, self.rng, 60.0),
                    self.stack.receiver.url,
                    self.rng,
                    host=name,
                    facade=facade,
                    durations_ms=durations,
                    wait_timeout=420.0,
                )
            )
        by_host = {"A": mixes[0], **({"B": mixes[1]} if len(mixes) > 1 else {})}
        if len(mixes) == 1:
            jobs = [job for job in jobs if not job.scenario.startswith("B:")]
        stop_load, stop_sampling = asyncio.Event(), asyncio.Event()
        self.t0, self.t0_epoch = time.monotonic(), time.time()
        self.say(
            f"load: {len(jobs)} jobs, ~{runs_per_minute(args.rate, executor=bool(self.front)):.0f} runs/min "
            f"({'with' if self.front else 'without'} the executor front), {args.minutes:g} min"
        )
        sampler = asyncio.create_task(self.sampling(mixes, transports, stop_sampling))
        planner: asyncio.Task | None = None
        tasks: list[asyncio.Task] = []  # one per job started
        outcome = self.outcome
        outcome["completed_window"] = False
        try:
            planner = asyncio.create_task(run_jobs(jobs, by_host, self.t0, stop_load, tasks))
            try:
                await asyncio.wait_for(asyncio.shield(planner), args.minutes * 60)
            except TimeoutError:
                stop_load.set()
                await planner
            remaining = self.t0 + args.minutes * 60 - time.monotonic()
            if remaining > 0:
                await asyncio.sleep(remaining)
            outcome["completed_window"] = True
            await asyncio.sleep(max(0.0, self.t0 + args.minutes * 60 + 1 - time.monotonic()))
            stop_sampling.set()
            await sampler
            self.say(f"window over; {sum(not t.done() for t in tasks)} clients still waiting for their runs")
            drained = await self.drain(tasks)
            outcome.update(drained)
            outcome["invariants"] = await self.invariants(mixes, drained)
        finally:
            stop_load.set()
            stop_sampling.set()
            running = [task for task in (sampler, planner, *tasks) if task is not None]
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
            for client in clients:
                await client.aclose()
            for facade in facades:
                await facade.close()
            outcome["load"] = {
                "jobs": dict(Counter(job.scenario for job in jobs)),
                "runs_accepted": sum(len(m.api.records) + len(m.facade_runs) for m in mixes),
                "answers": dict(sum((m.api.answers for m in mixes), Counter())),
                "flaky_webhooks": sum(m.flaky["fail_first"] for m in mixes),
            }

    async def drain(self, tasks: list[asyncio.Task]) -> dict[str, Any]:
        """Let the clients see their runs end, then wait for the open-work index to empty (follow-ups, webhooks)."""
        started = time.monotonic()
        if tasks:
            await asyncio.wait(tasks, timeout=self.args.drain_seconds)
        conn = self.stack.azurite.connection_string
        snapshot = await asyncio.to_thread(storage_snapshot, conn)
        deadline = time.monotonic() + 240
        while (
            snapshot["index"].get("open", 0) or snapshot["queues"].get("runs-webhook", 0)
        ) and time.monotonic() < deadline:
            await asyncio.sleep(5)
            snapshot = await asyncio.to_thread(storage_snapshot, conn)
        procs = {name: await asyncio.to_thread(proc.read) for name, proc in self.procs.items()}
        unfinished = sum(not task.done() for task in tasks)
        self.say(
            f"drained in {time.monotonic() - started:.0f} s: {unfinished} clients unfinished, "
            f"open index {snapshot['index'].get('open', 0)}, queues {snapshot['queues']}"
        )
        return {
            "drain_seconds": round(time.monotonic() - started, 1),
            "clients_unfinished": unfinished,
            "after_drain": {"storage": snapshot, "procs": procs},
        }

    async def invariants(self, mixes: list[SoakMix], drained: dict[str, Any]) -> dict[str, Any]:
        """What must hold once the load is over: each an observed figure and whether it is as it must be."""
        deleted = {rid for mix in mixes for rid, run in mix.facade_runs.items() if run.deleted}
        run_ids = [rid for mix in mixes for rid in [*mix.api.records, *mix.facade_runs] if rid not in deleted]
        views: dict[str, Any] = {}
        sem = asyncio.Semaphore(8)
        async with httpx.AsyncClient(base_url=self.stack.host.base_url, timeout=60) as http:

            async def look(rid: str) -> None:
                async with sem:
                    response = await http.get(f"/api/runs/{rid}")
                    views[rid] = response.json().get("status") if response.status_code == 200 else response.status_code

            await asyncio.gather(*(look(rid) for rid in run_ids))
        delivered = {
            r.get("run_id") for r in self.stack.receiver.snapshot() if r.get("verified") and r["status"] == 204
        }
        not_ended = sorted(rid for rid, status in views.items() if status not in TERMINAL)
        no_webhook = sorted(rid for rid in run_ids if rid not in delivered)
        storage = drained["after_drain"]["storage"]
        poison = sum(storage["queues"].get(name, 0) for name in POISON)
        errors = [e for mix in mixes for e in (*mix.api.server_errors, *mix.job_errors, *mix.facade_errors)]
        not_accepted = [n for mix in mixes for n in mix.api.not_accepted]
        by_status = Counter(status for status in views.values())
        checks = {
            "every run ended": (len(run_ids) - len(not_ended), len(run_ids), not not_ended, not_ended[:10]),
            "every webhook delivered": (len(run_ids) - len(no_webhook), len(run_ids), not no_webhook, no_webhook[:10]),
            "no 500 and no client error": (len(errors), 0, not errors, errors[:10]),
            "every start accepted": (len(not_accepted), 0, not not_accepted, not_accepted[:5]),
            "open-work index empty after the drain": (
                storage["index"].get("open", 0),
                0,
                storage["index"].get("open", 0) == 0,
                [],
            ),
            "no poison message": (poison, 0, poison == 0, []),
        }
        return {
            "by_status": dict(by_status),
            "deleted": len(deleted),
            "checks": {
                name: {"observed": observed, "expected": expected, "ok": ok, "examples": examples}
                for name, (observed, expected, ok, examples) in checks.items()
            },
        }


# -- storage, read straight from Azurite (not through the counting proxy) ---------------------------------------------
def storage_snapshot(conn: str) -> dict[str, Any]:
    from azure.data.tables import TableServiceClient
    from azure.storage.blob import BlobServiceClient
    from azure.storage.queue import QueueServiceClient

    out: dict[str, Any] = {"tables": {}, "index": Counter(), "runs_active": 0, "queues": {}, "blobs": {}}
    with TableServiceClient.from_connection_string(conn) as tables:
        for table in tables.list_tables():
            client = tables.get_table_client(table.name)
            select = ["PartitionKey", "status"] if table.name == "runs" else ["PartitionKey"]
            count = 0
            for row in client.list_entities(select=select, results_per_page=1000):
                count += 1
                if table.name == "runindex":
                    out["index"][_partition_kind(row["PartitionKey"])] += 1
                elif table.name == "runs" and row.get("status") not in TERMINAL:
                    out["runs_active"] += 1
            out["tables"][table.name] = count
    out["index"] = dict(out["index"])
    with QueueServiceClient.from_connection_string(conn) as queues:
        for queue in queues.list_queues():
            props = queues.get_queue_client(queue.name).get_queue_properties()
            out["queues"][queue.name] = props.approximate_message_count
    with BlobServiceClient.from_connection_string(conn) as blobs:
        for container in blobs.list_containers():
            out["blobs"][container.name] = sum(1 for _ in blobs.get_container_client(container.name).list_blobs())
    return out


def _partition_kind(partition: str) -> str:
    """`open`, `list-all` ... as they are; a partition per response, day or session by its prefix."""
    for prefix in ("response-", "expires-", "seen-", "list-owner-", "list-session-"):
        if partition.startswith(prefix):
            return prefix.rstrip("-")
    return partition


# -- per-minute figures ----------------------------------------------------------------------------------------------
def derive(prev: dict[str, Any], cur: dict[str, Any]) -> dict[str, Any]:
    """The figures of one interval, from two raw samples: flat keys (METRICS) plus the raw detail."""
    seconds = cur["at"] - prev["at"]
    d: dict[str, Any] = {"minute": round(cur["minute"], 3)}
    starts = {host: cur["starts"].get(host, 0) - prev["starts"].get(host, 0) for host in cur["starts"]}
    all_starts = sum(starts.values())
    d["runs.started"] = all_starts * 60 / seconds
    ours = 0.0
    for name, proc in cur["procs"].items():
        before = prev["procs"].get(name)
        if not proc or not before:
            continue
        cpu = proc["cpu_s"] - before["cpu_s"]
        ours += cpu
        d[f"{name}.cpu_percent"] = 100 * cpu / seconds
        d[f"{name}.rss_mib"] = proc["rss_mib"]
        if name in cur["hosts"]:
            host, host_before = cur["hosts"][name], prev["hosts"][name]
            steps = _invocations(host, "poll_run") - _invocations(host_before, "poll_run")
            d[f"{name}.poll_steps"] = steps
            d[f"{name}.starts"] = starts.get(name, 0)
            d[f"{name}.cpu_ms_per_poll_step"] = 1000 * cpu / steps if steps else None
            d[f"{name}.cpu_ms_per_start"] = 1000 * cpu / starts[name] if starts.get(name) else None
            d[f"{name}.fds"] = proc["fds"]
            pools = host.get("pools", {}).values()
            d[f"{name}.sockets_in_use"] = sum(p["in_use"] for p in pools)
            d[f"{name}.sockets_idle"] = sum(p["idle"] for p in pools)
            d[f"{name}.fds_but_idle_sockets"] = proc["fds"] - d[f"{name}.sockets_idle"]
            d[f"{name}.threads"] = proc["threads"]
            d[f"{name}.connections"] = proc.get("connections")
            d[f"{name}.asyncio_tasks"] = host["process"].get("asyncio_tasks")
            d[f"{name}.allocated_kblocks"] = (host["process"].get("allocated_blocks") or 0) / 1000
            d[f"{name}.invocations"] = {
                fn: _invocations(host, fn) - _invocations(host_before, fn) for fn in host["invocations"]
            }
    busy = cur["machine"]["busy_s"] - prev["machine"]["busy_s"]
    d["machine.cpu_percent"] = 100 * busy / seconds
    d["machine.others_cpu_percent"] = max(0.0, 100 * (busy - ours) / seconds)
    d["machine.load1"] = cur["machine"]["load1"]
    proxy = sum(cur["proxy"].values()) - sum(prev["proxy"].values())
    service = sum(h["storage_requests"] - prev["hosts"][n]["storage_requests"] for n, h in cur["hosts"].items())
    d["storage.requests"] = proxy
    d["storage.requests_per_run"] = proxy / all_starts if all_starts else None
    d["storage.service_requests_per_run"] = service / all_starts if all_starts else None
    d["storage.by_operation"] = {
        op: n - prev["proxy"].get(op, 0) for op, n in cur["proxy"].items() if n - prev["proxy"].get(op, 0)
    }
    storage, before = cur["storage"], prev["storage"]
    d["index.open"] = storage["index"].get("open", 0)
    d["runs.active"] = storage["runs_active"]
    for name, count in storage["queues"].items():
        d[f"queue.{name}"] = count
    d["queue.poison"] = sum(storage["queues"].get(name, 0) for name in POISON)
    for table, rows in storage["tables"].items():
        d[f"rows_per_run.{table}"] = (rows - before["tables"].get(table, 0)) / all_starts if all_starts else None
    d["rows.total"] = dict(storage["tables"])
    d["index.by_kind"] = dict(storage["index"])
    d["blobs"] = dict(storage["blobs"])
    for kind, values in cur["latency"].items():
        d[f"client.{kind}_ms_p50"] = 1000 * pct(values, 0.5) if values else None
        d[f"client.{kind}_ms_p95"] = 1000 * pct(values, 0.95) if values else None
    d["webhooks.requests"] = cur["webhook_requests"] - prev["webhook_requests"]
    d["client.server_errors"] = cur["server_errors"] - prev["server_errors"]
    return d


def _invocations(host: dict[str, Any], fn: str) -> int:
    counts = host["invocations"].get(fn) or {}
    return counts.get("succeeded", 0) + counts.get("failed", 0)


def progress_line(d: dict[str, Any]) -> str:
    def f(key: str, fmt: str = "{:.1f}") -> str:
        value = d.get(key)
        return "-" if value is None else fmt.format(value)

    return (
        f"min {d['minute']:g}: {f('runs.started', '{:.0f}')} runs/min; worker RSS {f('worker.rss_mib')} MiB, "
        f"CPU {f('worker.cpu_percent', '{:.0f}')} % ({f('worker.cpu_ms_per_poll_step')} ms/poll step, "
        f"{f('worker.cpu_ms_per_start')} ms/start), fds {f('worker.fds', '{:.0f}')} "
        f"({f('worker.sockets_in_use', '{:.0f}')} connections in use, {f('worker.sockets_idle', '{:.0f}')} idle), "
        f"tasks {f('worker.asyncio_tasks', '{:.0f}')}; storage {f('storage.requests_per_run')}/run; "
        f"open {f('index.open', '{:.0f}')}, active {f('runs.active', '{:.0f}')}; start p50 "
        f"{f('client.start_ms_p50', '{:.0f}')} ms; others' CPU {f('machine.others_cpu_percent', '{:.0f}')} %"
    )


# -- the plot ---------------------------------------------------------------------------------------------------------
def plot(samples: list[dict[str, Any]], verdicts: list[Verdict], warmup_minutes: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [v for v in verdicts if any(s.get(v.key) is not None for s in samples)]
    cols = 4
    rows = (len(shown) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.5 * rows), squeeze=False)
    for ax, verdict in zip(axes.flat, shown, strict=False):  # the last row may have spare axes
        points = [(s["minute"], s.get(verdict.key)) for s in samples if s.get(verdict.key) is not None]
        ax.plot([t for t, _ in points], [v for _, v in points], ".-", lw=1, ms=3, color="tab:blue")
        ax.axvspan(0, warmup_minutes, color="0.92")
        if verdict.level is not None and verdict.slope_per_hour is not None:
            half = [t for t, _ in points if t > warmup_minutes]
            half = half[len(half) // 2 :]
            if half:
                mid_t = statistics.median(half)
                mid_v = statistics.median(v for t, v in points if t in half)
                slope = verdict.slope_per_hour / 60
                ax.plot(
                    [half[0], half[-1]],
                    [mid_v + slope * (half[0] - mid_t), mid_v + slope * (half[-1] - mid_t)],
                    color="tab:red" if verdict.passed is False else "tab:green",
                    lw=1.5,
                )
            if verdict.allowed_per_hour is not None:
                end = points[-1][0]
                ax.plot(
                    [warmup_minutes, end],
                    [verdict.level, verdict.level + verdict.allowed_per_hour / 60 * (end - warmup_minutes)],
                    ":",
                    color="0.5",
                    lw=1,
                )
        mark = {True: "flat", False: "GROWS", None: "not judged"}[verdict.passed]
        ax.set_title(f"{verdict.label} ({mark})" if verdict.judged else verdict.label, fontsize=8)
        ax.set_ylabel(verdict.unit, fontsize=7)
        ax.tick_params(labelsize=7)
        if verdict.unit not in ("MiB", "k"):  # memory is drawn around its level, so a drift of a few MiB shows
            ax.set_ylim(bottom=0)
    for ax in list(axes.flat)[len(shown) :]:
        ax.axis("off")
    fig.suptitle(
        "Soak: per-minute samples (grey: warm-up; line: trend over the second half; dotted: the "
        "tolerance from the level)",
        fontsize=9,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=72)
    plt.close(fig)


# -- main --------------------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=15, help="length of the load window (default 15)")
    parser.add_argument(
        "--rate",
        type=float,
        default=1.0,
        help=f"load multiplier (1 = ~{runs_per_minute(1):.0f} runs/min, bench/soak_mix.py RATES)",
    )
    parser.add_argument(
        "--warmup-minutes",
        type=float,
        default=None,
        help="samples left out of the trends (default: a third of the window, at most 5)",
    )
    parser.add_argument("--sample-seconds", type=float, default=60)
    parser.add_argument("--drain-seconds", type=float, default=420, help="how long the clients may wait at the end")
    parser.add_argument("--completion", choices=("push", "poll"), default="push")
    parser.add_argument("--no-executor", action="store_true", help="no executor front (one app process)")
    parser.add_argument("--no-faults", action="store_true", help="no provider faults")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--name", default=None, help="file stem (default soak-<minutes>min)")
    args = parser.parse_args(argv)
    if args.warmup_minutes is None:
        args.warmup_minutes = min(5.0, args.minutes / 3)
    args.name = args.name or f"soak-{args.minutes:g}min"
    return args


def main(argv: list[str] | None = None) -> int:
    """Start the stack, run the soak, and whatever happens (Ctrl-C, SIGTERM, a failure) stop every process of the
    stack and write what was sampled."""
    args = parse_args(argv)
    soak = Soak(args)
    signal.signal(signal.SIGTERM, _interrupt)  # outside the event loop: as Ctrl-C
    started = time.monotonic()
    try:
        soak.start_stack()
        soak.say(
            f"stack up in {time.monotonic() - started:.0f} s: worker {soak.stack.host.base_url}"
            + (f", front {soak.front.base_url}" if soak.front else "")
        )
        asyncio.run(soak.run_until_done())
    except KeyboardInterrupt:
        soak.interrupted = True
        soak.say("interrupted: stopping")
    except Exception:  # noqa: BLE001 - reported below (with what was sampled) after the stack is stopped
        soak.interrupted = True
        soak.say("failed:\n" + traceback.format_exc())
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second signal must not cut the teardown short
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        left = soak.stop_stack()
    return report(args, soak, left, time.monotonic() - started)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def report(args: argparse.Namespace, soak: Soak, left: list[str], wall: float) -> int:
    outcome, interrupted = soak.outcome, soak.interrupted
    verdicts = judge_all(METRICS, soak.samples, args.warmup_minutes)
    invariants = (outcome.get("invariants") or {}).get("checks", {})
    lines = [
        "",
        f"Soak, {args.minutes:g} min at ~{runs_per_minute(args.rate, executor=not args.no_executor):.0f} runs/min "
        f"({len(soak.samples)} samples, warm-up {args.warmup_minutes:g} min), wall {wall / 60:.1f} min"
        + (" - INTERRUPTED" if interrupted else ""),
        *summary_lines(verdicts),
        "",
    ]
    for name, check in invariants.items():
        lines.append(
            f"{'PASS' if check['ok'] else 'FAIL'}  {name}: {check['observed']}"
            + (f" of {check['expected']}" if check["expected"] else "")
            + (f"  e.g. {check['examples'][:3]}" if check["examples"] else "")
        )
    lines.append(f"{'PASS' if not left else 'FAIL'}  no process of the stack left: {left or 'none'}")
    failed = [v for v in verdicts if v.passed is False] + [c for c in invariants.values() if not c["ok"]]
    ok = not failed and not left and not interrupted and bool(invariants)
    lines.append(f"soak {'passed' if ok else 'FAILED'}; results: {args.out / (args.name + '.json')}")
    machine = {
        "cpus": os.cpu_count(),
        "cpu": _cpu_model(),
        "python": platform.python_version(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
    }
    config = {
        **{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "runs_per_minute": runs_per_minute(args.rate, executor=not args.no_executor),
        "rates_per_minute": RATES,
        "long_ms": LONG_MS,
        "plain_ms": PLAIN_MS,
        "executor_ms": EXECUTOR_MS,
        "emulator_push": EMULATOR_PUSH,
        "emulator_faults": {} if args.no_faults else EMULATOR_FAULTS,
    }
    data = {
        "config": config,
        "machine": machine,
        "wall_seconds": round(wall, 1),
        "interrupted": interrupted,
        "verdicts": [{**v.__dict__, "why": m.why} for v, m in zip(verdicts, METRICS, strict=True)],
        "outcome": outcome,
        "leftover_processes": left,
        "passed": ok,
        "events": soak.events,
        "samples": soak.samples,
        "raw_samples": soak.raw,
    }
    dump_json(args.out / f"{args.name}.json", data)
    if soak.samples:
        plot(soak.samples, verdicts, args.warmup_minutes, args.out / f"{args.name}.png")
    print("\n".join(lines), flush=True)
    return 0 if ok else 1


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    sys.exit(main())
