"""Response records: in memory, bounded, with TTL expiry and optional SQLite persistence.

A record is a plain JSON-able dict. Only ``cancelled_at`` and the request counters change after
creation, so persistence is an upsert on create/cancel plus a periodic flush of counters.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections import OrderedDict

from .timeline import TERMINAL, Plan, build_plan, finished_at, status_at


class PlanCache:
    """LRU of built plans (a plan holds the full text, so bound it by characters too)."""

    def __init__(self, max_entries: int = 4096, max_chars: int = 256_000_000):
        self._data: OrderedDict[str, Plan] = OrderedDict()
        self._chars = 0
        self.max_entries = max_entries
        self.max_chars = max_chars

    def get(self, rec: dict) -> Plan:
        key = rec["id"]
        plan = self._data.get(key)
        if plan is not None:
            self._data.move_to_end(key)
            return plan
        plan = build_plan(rec)
        self._data[key] = plan
        self._chars += plan.output_chars
        while len(self._data) > 1 and (len(self._data) > self.max_entries or self._chars > self.max_chars):
            _, old = self._data.popitem(last=False)
            self._chars -= old.output_chars
        return plan

    def drop(self, resp_id: str) -> None:
        plan = self._data.pop(resp_id, None)
        if plan is not None:
            self._chars -= plan.output_chars

    def clear(self) -> None:
        self._data.clear()
        self._chars = 0


class Store:
    def __init__(self, db_path: str = ""):
        self.records: dict[str, dict] = {}
        self.plans = PlanCache()
        self._dirty: set[str] = set()
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        if db_path:
            self._db = sqlite3.connect(db_path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS responses (id TEXT PRIMARY KEY, created_at REAL, data TEXT NOT NULL)"
            )
            self._db.execute("CREATE TABLE IF NOT EXISTS webhook_endpoints (id TEXT PRIMARY KEY, data TEXT NOT NULL)")
            for (data,) in self._db.execute("SELECT data FROM responses ORDER BY created_at"):
                rec = json.loads(data)
                self.records[rec["id"]] = rec

    # -- webhook endpoints (few, written through) -------------------------------------------------------
    def load_endpoints(self) -> list[dict]:
        if self._db is None:
            return []
        with self._lock:
            return [json.loads(d) for (d,) in self._db.execute("SELECT data FROM webhook_endpoints")]

    def save_endpoint(self, ep: dict) -> None:
        if self._db is not None:
            with self._lock:
                self._db.execute(
                    "INSERT OR REPLACE INTO webhook_endpoints (id, data) VALUES (?, ?)", (ep["id"], json.dumps(ep))
                )

    def delete_endpoint(self, ep_id: str) -> None:
        if self._db is not None:
            with self._lock:
                self._db.execute("DELETE FROM webhook_endpoints WHERE id = ?", (ep_id,))

    # -- access --------------------------------------------------------------------------------------
    def plan(self, rec: dict) -> Plan:
        return self.plans.get(rec)

    def get(self, resp_id: str) -> dict | None:
        return self.records.get(resp_id)

    def put(self, rec: dict) -> None:
        self.records[rec["id"]] = rec
        self._write(rec)

    def save(self, rec: dict) -> None:
        """Persist a changed record now (cancel)."""
        self._write(rec)

    def touch(self, rec: dict) -> None:
        """Counters changed; persisted by the next flush."""
        if self._db is not None:
            self._dirty.add(rec["id"])

    def delete(self, resp_id: str) -> None:
        self.records.pop(resp_id, None)
        self.plans.drop(resp_id)
        self._dirty.discard(resp_id)
        if self._db is not None:
            with self._lock:
                self._db.execute("DELETE FROM responses WHERE id = ?", (resp_id,))

    def clear(self) -> None:
        self.records.clear()
        self.plans.clear()
        self._dirty.clear()
        if self._db is not None:
            with self._lock:
                self._db.execute("DELETE FROM responses")

    def _write(self, rec: dict) -> None:
        if self._db is None:
            return
        self._dirty.discard(rec["id"])
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO responses (id, created_at, data) VALUES (?, ?, ?)",
                (rec["id"], rec["created_at"], json.dumps(rec, separators=(",", ":"))),
            )

    def flush(self) -> None:
        if self._db is None or not self._dirty:
            return
        ids, self._dirty = self._dirty, set()
        rows = [
            (r["id"], r["created_at"], json.dumps(r, separators=(",", ":")))
            for r in (self.records.get(i) for i in ids)
            if r is not None
        ]
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT OR REPLACE INTO responses (id, created_at, data) VALUES (?, ?, ?)", rows)
            self._db.execute("COMMIT")

    def close(self) -> None:
        if self._db is not None:
            self.flush()
            with self._lock:
                self._db.close()
            self._db = None

    # -- retention -----------------------------------------------------------------------------------
    def _timing(self, rec: dict) -> tuple[float, bool]:
        """(finished_at, terminal-by-now?) without building the text: timings only need the knobs."""
        k = rec["knobs"]
        t_end = rec["created_at"] + k["duration_ms"] * k["scale"] / 1000.0
        c = rec.get("cancelled_at")
        return (c if c is not None and c < t_end else t_end), True

    def is_expired(self, rec: dict, now: float, ttl_s: float, ttl_store_false_s: float) -> bool:
        fin, _ = self._timing(rec)
        ttl = ttl_s if rec.get("store", True) else ttl_store_false_s
        return fin <= now and now - fin > ttl

    def sweep(self, now: float, ttl_s: float, ttl_store_false_s: float, max_responses: int) -> int:
        expired = [i for i, r in self.records.items() if self.is_expired(r, now, ttl_s, ttl_store_false_s)]
        for resp_id in expired:
            self.delete(resp_id)
        over = len(self.records) - max_responses
        if over > 0:
            finished = sorted(
                (r for r in self.records.values() if self._timing(r)[0] <= now), key=lambda r: r["created_at"]
            )
            victims = [r["id"] for r in finished[:over]]
            if len(victims) < over:
                rest = sorted(self.records.values(), key=lambda r: r["created_at"])
                victims += [r["id"] for r in rest if r["id"] not in set(victims)][: over - len(victims)]
            for resp_id in victims:
                self.delete(resp_id)
            return len(expired) + len(victims)
        return len(expired)


__all__ = ["TERMINAL", "PlanCache", "Store", "finished_at", "status_at"]
