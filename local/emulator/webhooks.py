"""Provider webhooks: endpoint registry, Standard Webhooks signing, and a scheduler that delivers
``response.<terminal>`` events to registered endpoints when background responses end.

A response's end time is a pure function of its record, so nothing runs per response: creating (or
cancelling) a background response pushes its end time on one heap, and a single scheduler task sleeps
until the earliest due time. When an end fires, the event and one delivery per subscribed endpoint are
written into the record (``rec["webhook"]``), which is what persistence and ``/_emulator`` expose. Attempts
are heap entries too; a failed attempt (non-2xx, timeout, connection error) is pushed again after the next
step of the retry schedule, until the schedule is exhausted.

Timings here are wall-clock (not the response time scale): they emulate the provider's network and retry
behaviour, which a receiver measures in real time. ``webhook_time_scale`` shrinks them all for tests.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import heapq
import hmac
import itertools
import json
import secrets
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .timeline import TERMINAL, light_status

if TYPE_CHECKING:
    import aiohttp

    from .app import Emulator

EVENT_TYPES = (
    "batch.completed",
    "batch.failed",
    "batch.expired",
    "batch.cancelled",
    "response.completed",
    "response.failed",
    "response.cancelled",
    "response.incomplete",
    "eval.run.succeeded",
    "eval.run.failed",
    "eval.run.canceled",
    "fine_tuning.job.succeeded",
    "fine_tuning.job.failed",
    "fine_tuning.job.cancelled",
    "realtime.call.incoming",
    "video.completed",
    "video.failed",
)
USER_AGENT = "OpenAI/1.0 (+https://platform.openai.com/docs/webhooks)"
# How the endpoint object is named in each flavour of the management API (the only difference).
OBJECT_NAMES = {"openai": "webhook_endpoint", "azure": "webhook.endpoint"}
_OLD_SECRET_GRACE_S = 24 * 3600.0


class EndpointError(ValueError):
    """Bad input to the management API (answered as a 400 naming the problem)."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


# ------------------------------------------------------------------------------------------------
# Signing (Standard Webhooks, as the openai SDK verifies it)
# ------------------------------------------------------------------------------------------------


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def secret_hint(secret: str) -> str:
    return "whsec_..." + secret[-4:]


def sign(secret: str, msg_id: str, timestamp: int, body: str) -> str:
    key = base64.b64decode(secret[len("whsec_") :]) if secret.startswith("whsec_") else secret.encode()
    digest = hmac.new(key, f"{msg_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signed_headers(secrets_: list[str], msg_id: str, body: str, timestamp: int | None = None) -> dict[str, str]:
    ts = int(time.time()) if timestamp is None else timestamp
    return {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": msg_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": " ".join(sign(s, msg_id, ts, body) for s in secrets_),
    }


# ------------------------------------------------------------------------------------------------
# Endpoint registry
# ------------------------------------------------------------------------------------------------


class Endpoints:
    """Registered webhook endpoints (one registry behind both the OpenAI and the Azure routes)."""

    def __init__(self, store) -> None:
        self.store = store
        self.items: dict[str, dict] = {ep["id"]: ep for ep in store.load_endpoints()}

    def create(self, body: Any) -> dict:
        fields = _endpoint_fields(body, partial=False)
        now = int(time.time())
        ep = {
            "id": "we_" + secrets.token_hex(16),
            "created_at": now,
            "updated_at": now,
            "name": fields.get("name", ""),
            "url": fields["url"],
            "event_types": fields["event_types"],
            "secret": new_secret(),
            "old_secret": None,
            "old_secret_until": None,
        }
        self.items[ep["id"]] = ep
        self.store.save_endpoint(ep)
        return ep

    def update(self, ep: dict, body: Any) -> dict:
        changed = {k: v for k, v in _endpoint_fields(body, partial=True).items() if ep.get(k) != v}
        if changed:
            ep.update(changed, updated_at=int(time.time()))
            self.store.save_endpoint(ep)
        return ep

    def rotate(self, ep: dict, keep_old: bool) -> dict:
        ep["old_secret"] = ep["secret"] if keep_old else None
        ep["old_secret_until"] = time.time() + _OLD_SECRET_GRACE_S if keep_old else None
        ep["secret"] = new_secret()
        ep["updated_at"] = int(time.time())
        self.store.save_endpoint(ep)
        return ep

    def delete(self, ep_id: str) -> None:
        self.items.pop(ep_id, None)
        self.store.delete_endpoint(ep_id)

    def clear(self) -> None:
        for ep_id in list(self.items):
            self.delete(ep_id)

    def subscribed(self, event_type: str) -> list[dict]:
        return [ep for ep in self.items.values() if event_type in ep["event_types"]]

    def ensure(self, url: str, secret: str, event_types: list[str]) -> dict:
        """Start-up registration (``--webhook-url``): reuse the endpoint with that url, else create one."""
        for ep in self.items.values():
            if ep["url"] == url:
                break
        else:
            ep = self.create({"name": "startup", "url": url, "event_types": event_types})
        if secret:
            ep["secret"] = secret
        ep["event_types"] = event_types
        self.store.save_endpoint(ep)
        return ep

    @staticmethod
    def signing_secrets(ep: dict) -> list[str]:
        out = [ep["secret"]]
        if ep.get("old_secret") and (ep.get("old_secret_until") or 0) > time.time():
            out.append(ep["old_secret"])
        return out

    @staticmethod
    def public(ep: dict, flavour: str, *, with_secret: bool = False) -> dict:
        out = {
            "id": ep["id"],
            "object": OBJECT_NAMES[flavour],
            "created_at": ep["created_at"],
            "updated_at": ep["updated_at"],
            "name": ep["name"],
            "url": ep["url"],
            "event_types": list(ep["event_types"]),
            "signing_secret_hint": secret_hint(ep["secret"]),
        }
        if with_secret:
            out["signing_secret"] = ep["secret"]
        return out


def _endpoint_fields(body: Any, *, partial: bool) -> dict:
    if not isinstance(body, dict):
        raise EndpointError("Expected a JSON object body.")
    out: dict[str, Any] = {}
    unknown = set(body) - {"name", "url", "event_types"}
    if unknown:
        raise EndpointError(f"Unrecognized request argument supplied: {sorted(unknown)[0]}", sorted(unknown)[0])
    if "name" in body or not partial:
        name = body.get("name", "")
        if not isinstance(name, str) or len(name) > 256:
            raise EndpointError("Invalid 'name': expected a string of at most 256 characters.", "name")
        if "name" in body:
            out["name"] = name
    if "url" in body or not partial:
        url = body.get("url")
        if not isinstance(url, str) or not url:
            raise EndpointError("Missing required parameter: 'url'.", "url")
        parsed = urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise EndpointError(f"Invalid 'url': expected an absolute http(s) URL, got {url!r}.", "url")
        out["url"] = url
    if "event_types" in body or not partial:
        types = body.get("event_types")
        if not isinstance(types, list) or not types or not all(isinstance(t, str) for t in types):
            raise EndpointError(
                "Invalid 'event_types': expected a non-empty array of event type strings.", "event_types"
            )
        bad = [t for t in types if t not in EVENT_TYPES]
        if bad:
            raise EndpointError(f"Invalid 'event_types': unknown event type {bad[0]!r}.", "event_types")
        out["event_types"] = list(dict.fromkeys(types))
    return out


# ------------------------------------------------------------------------------------------------
# Delivery scheduler
# ------------------------------------------------------------------------------------------------


def _unit(*parts: Any) -> float:
    """A deterministic number in [0, 1) from its inputs (drop/duplicate decisions survive restarts)."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _schedule_ms(spec: str) -> list[float]:
    return [float(p) for p in spec.split(",") if p.strip()]


class Dispatcher:
    """One heap of due times (response ends and delivery attempts) served by one task."""

    def __init__(self, emu: Emulator) -> None:
        self.emu = emu
        self._heap: list[tuple[float, int, str, Any]] = []
        self._order = itertools.count()
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._inflight: set[asyncio.Task] = set()
        self._http: aiohttp.ClientSession | None = None
        self._sem: asyncio.Semaphore | None = None
        self.reset_stats()

    def reset_stats(self) -> None:
        self.stats = {
            "events": 0,
            "deliveries": 0,
            "attempts": 0,
            "delivered": 0,
            "failed_attempts": 0,
            "retries_scheduled": 0,
            "gave_up": 0,
            "dropped": 0,
            "duplicates_sent": 0,
            "endpoint_gone": 0,
            "test_deliveries": 0,
        }

    # -- scheduling ------------------------------------------------------------------------------------
    def _push(self, due: float, kind: str, key: Any) -> None:
        first = not self._heap or due < self._heap[0][0]
        heapq.heappush(self._heap, (due, next(self._order), kind, key))
        if first and self._wake is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    def schedule_end(self, rec: dict) -> None:
        """Fire this background response's webhook when it ends (again after a cancel moves the end)."""
        if rec["background"] and rec.get("webhook") is None:
            _status, _started, finished = light_status(rec, float("inf"))
            self._push(finished, "end", rec["id"])

    def resume(self) -> None:
        """After a restart: responses not yet announced, and deliveries not yet finished."""
        for rec in self.emu.store.records.values():
            hook = rec.get("webhook")
            if hook is None:
                self.schedule_end(rec)
                continue
            for n, delivery in enumerate(hook["deliveries"]):
                if delivery["state"] in ("pending", "sending"):
                    delivery["state"] = "pending"
                    self._push(delivery.get("next_at") or time.time(), "attempt", (rec["id"], n, hook))

    def poke(self) -> None:
        """Look at the heap again now (the deployment came back from an outage)."""
        if self._wake is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    @property
    def pending(self) -> int:
        return sum(1 for entry in self._heap if entry[2] == "attempt") + len(self._inflight)

    # -- the task --------------------------------------------------------------------------------------
    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._sem = asyncio.Semaphore(self.emu.config.webhook_concurrency)
        self.resume()
        try:
            while True:
                now = time.time()
                # a resource that is down sends nothing; what fell due meanwhile goes out when it is back (poke)
                while self.emu.outage is None and self._heap and self._heap[0][0] <= now:
                    _due, _n, kind, key = heapq.heappop(self._heap)
                    if kind == "end":
                        self._fire(key, now)
                    else:
                        self._start_attempt(*key)
                self._wake.clear()
                delay = (self._heap[0][0] - now) if self._heap and self.emu.outage is None else 3600.0
                handle = self._loop.call_later(max(0.0, min(delay, 3600.0)), self._wake.set)
                try:
                    await self._wake.wait()
                finally:
                    handle.cancel()
        finally:
            for task in list(self._inflight):
                task.cancel()
            if self._inflight:
                await asyncio.gather(*self._inflight, return_exceptions=True)
            if self._http is not None:
                await self._http.close()

    # -- firing an event -------------------------------------------------------------------------------
    def _fire(self, resp_id: str, now: float) -> None:
        rec = self.emu.store.get(resp_id)
        if rec is None or rec.get("webhook") is not None or rec.get("deleted"):
            return
        status, _started, finished = light_status(rec, now)
        if status not in TERMINAL or finished is None:
            self._push(light_status(rec, float("inf"))[2], "end", resp_id)  # not yet (clock skew): later
            return
        if finished > now + 1e-6:
            self._push(finished, "end", resp_id)
            return
        event_type = "response." + status
        self.stats["events"] += 1
        endpoints = self.emu.endpoints.subscribed(event_type)
        if not endpoints:  # the common case without push: keep it cheap, many responses end together
            rec["webhook"] = {
                "event_id": None,
                "type": event_type,
                "created_at": int(finished),
                "fired_at": now,
                "deliveries": [],
            }
            self.emu.store.touch(rec)
            return
        event_id = "evt_" + hashlib.sha256(f"{resp_id}:{status}".encode()).hexdigest()[:32]
        body = json.dumps(
            {
                "object": "event",
                "id": event_id,
                "type": event_type,
                "created_at": int(finished),
                "data": {"id": resp_id},
            },
            separators=(",", ":"),
        )
        cfg = self.emu.config
        knobs = rec["knobs"]
        delay_ms = knobs.get("webhook_delay_ms")
        delay_s = (cfg.webhook_delay_ms if delay_ms is None else delay_ms) * cfg.webhook_time_scale / 1000.0
        deliveries = []
        for ep in endpoints:
            drop = knobs.get("webhook_drop")
            dup = knobs.get("webhook_duplicate")
            dropped = drop if drop is not None else _unit(cfg.seed, "drop", event_id, ep["id"]) < cfg.webhook_drop_rate
            copies = (
                2
                if (dup if dup is not None else _unit(cfg.seed, "dup", event_id, ep["id"]) < cfg.webhook_duplicate_rate)
                else 1
            )
            deliveries.append(
                {
                    "endpoint_id": ep["id"],
                    "url": ep["url"],
                    "webhook_id": "wh_" + hashlib.sha256(f"{event_id}:{ep['id']}".encode()).hexdigest()[:32],
                    "state": "dropped" if dropped else "pending",
                    "copies": copies,
                    "next_at": None if dropped else finished + delay_s,
                    "attempts": [],
                    "delivered_at": None,
                }
            )
        rec["webhook"] = {
            "event_id": event_id,
            "type": event_type,
            "created_at": int(finished),
            "fired_at": now,
            "body": body,
            "deliveries": deliveries,
        }
        self.emu.store.touch(rec)
        self.stats["deliveries"] += len(deliveries)
        for n, delivery in enumerate(deliveries):
            if delivery["state"] == "dropped":
                self.stats["dropped"] += 1
            else:
                self._push(delivery["next_at"], "attempt", (resp_id, n, rec["webhook"]))

    # -- attempts --------------------------------------------------------------------------------------
    def _start_attempt(self, resp_id: str, n: int, hook: dict) -> None:
        task = asyncio.ensure_future(self._attempt(resp_id, hook, hook["deliveries"][n]))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def _attempt(self, resp_id: str, hook: dict, delivery: dict) -> None:
        ep = self.emu.endpoints.items.get(delivery["endpoint_id"])
        if ep is None:  # deleted since the event fired: nothing to deliver to
            delivery.update(state="endpoint_deleted", next_at=None)
            self.stats["endpoint_gone"] += 1
            self._touch(resp_id)
            return
        delivery["url"] = ep["url"]  # an update may have moved it since the event fired
        duplicate = delivery["state"] == "delivered"
        delivery["state"] = "sending" if not duplicate else "delivered"
        assert self._sem is not None
        async with self._sem:
            status, error, took = await self.post(
                ep["url"], Endpoints.signing_secrets(ep), delivery["webhook_id"], hook["body"]
            )
        self.stats["attempts"] += 1
        delivery["attempts"].append(
            {"at": time.time(), "status": status, "error": error, "ms": round(took * 1000, 1), "duplicate": duplicate}
        )
        ok = status is not None and 200 <= status < 300
        if duplicate:
            self.stats["duplicates_sent"] += 1
        elif ok:
            delivery.update(state="delivered", delivered_at=time.time(), next_at=None)
            self.stats["delivered"] += 1
            if delivery["copies"] > 1:  # the same webhook-id once more (at-least-once delivery)
                self._push(time.time(), "attempt", (resp_id, hook["deliveries"].index(delivery), hook))
        else:
            self.stats["failed_attempts"] += 1
            schedule = _schedule_ms(self.emu.config.webhook_retry_schedule_ms)
            tries = sum(1 for a in delivery["attempts"] if not a["duplicate"])
            if tries <= len(schedule):
                wait = schedule[tries - 1] * self.emu.config.webhook_time_scale / 1000.0
                delivery.update(state="pending", next_at=time.time() + wait)
                self.stats["retries_scheduled"] += 1
                self._push(delivery["next_at"], "attempt", (resp_id, hook["deliveries"].index(delivery), hook))
            else:
                delivery.update(state="failed", next_at=None)
                self.stats["gave_up"] += 1
        self._touch(resp_id)

    async def post(self, url: str, secrets_: list[str], msg_id: str, body: str) -> tuple[int | None, str | None, float]:
        """One signed POST; (status or None, error text or None, seconds taken)."""
        # imported on first use: an emulator without endpoints does not pay aiohttp's ~8 MB
        import aiohttp

        if self._http is None:
            # aiohttp rather than httpx: with 500 deliveries due at once its pool answered in ~40 ms p50, httpx ~250 ms
            self._http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.emu.config.webhook_concurrency), trust_env=False
            )
        t0 = time.monotonic()
        timeout = aiohttp.ClientTimeout(total=self.emu.config.webhook_timeout_ms / 1000.0)
        try:
            async with self._http.post(
                url,
                data=body.encode(),
                headers=signed_headers(secrets_, msg_id, body),
                timeout=timeout,
                allow_redirects=False,
            ) as r:
                await r.read()
                return r.status, None if r.status < 300 else f"HTTP {r.status}", time.monotonic() - t0
        except (TimeoutError, aiohttp.ClientError) as exc:
            return None, f"{type(exc).__name__}: {exc}"[:300], time.monotonic() - t0

    async def send_test(self, ep: dict, event_type: str) -> tuple[int | None, str | None]:
        """``POST /webhook_endpoints/{id}/test``: one sample event, no retries."""
        sample = "resp_test_" + secrets.token_hex(12)
        event_id = "evt_test_" + secrets.token_hex(12)
        body = json.dumps(
            {
                "object": "event",
                "id": event_id,
                "type": event_type,
                "created_at": int(time.time()),
                "data": {"id": sample},
            },
            separators=(",", ":"),
        )
        self.stats["test_deliveries"] += 1
        status, error, _took = await self.post(
            ep["url"], Endpoints.signing_secrets(ep), "wh_" + secrets.token_hex(16), body
        )
        return status, error

    def _touch(self, resp_id: str) -> None:
        rec = self.emu.store.get(resp_id)
        if rec is not None:
            self.emu.store.touch(rec)


def describe_deliveries(rec: dict) -> dict | None:
    """The record's webhook state without the raw body (for /_emulator listings)."""
    hook = rec.get("webhook")
    if hook is None:
        return None
    return {k: v for k, v in hook.items() if k != "body"}
