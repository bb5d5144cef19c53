"""The pure timeline of one emulated response.

A response's whole life is a function of its immutable record (created_at, request, knobs, time scale)
plus an optional cancel time. Nothing runs per response: status, output and the SSE event list "up to
now" are computed on demand, and a stream reader just sleeps until the next event's due time. That is
why persistence is trivial and a restarted emulator continues every in-flight response exactly.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
import random
import re
from dataclasses import dataclass, field
from typing import Any

TERMINAL = frozenset({"completed", "failed", "cancelled", "incomplete"})

_WORDS = (
    "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa "
    "quebec romeo sierra tango uniform victor whiskey xray yankee zulu the a of and to in is it that "
    "background response stream event token queue poll cancel resume emulated synthetic deterministic "
    "cloud function worker table blob signal retry latency budget window cursor ledger"
).split()


# ------------------------------------------------------------------------------------------------
# Knobs
# ------------------------------------------------------------------------------------------------


def _num(meta: dict, key: str, default: float, lo: float = 0.0, hi: float = 1e12) -> float:
    raw = meta.get(key)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise KnobError(f"metadata '{key}' must be a number, got {raw!r}") from None
    if not math.isfinite(value) or value < lo or value > hi:
        raise KnobError(f"metadata '{key}' out of range [{lo}, {hi}]: {raw!r}")
    return value


class KnobError(ValueError):
    pass


def _flag(meta: dict, key: str) -> bool | None:
    raw = meta.get(key)
    if raw is None or raw == "":
        return None
    text = str(raw).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise KnobError(f"metadata '{key}' must be true or false, got {raw!r}")


def parse_http_errors(spec: str) -> list[tuple[int, int]]:
    """'429:3' / '500' / '429:1,503:2' -> [(429, 3)] / [(500, 1)] / [(429, 1), (503, 2)]."""
    out: list[tuple[int, int]] = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        code, _, count = part.partition(":")
        try:
            status, n = int(code), int(count or 1)
        except ValueError:
            raise KnobError(f"metadata 'emulator_http_errors' must look like '429:3', got {spec!r}") from None
        if status < 400 or status > 599 or n < 0:
            raise KnobError(f"metadata 'emulator_http_errors' bad entry {part!r}")
        out.append((status, n))
    return out


def resolve_knobs(meta: dict, cfg, *, background: bool) -> dict[str, Any]:
    """Read the emulator_* metadata keys (falling back to the global config) into a plain dict."""
    duration = _num(meta, "emulator_duration_ms", cfg.default_duration_ms)
    queue = _num(meta, "emulator_queue_ms", min(cfg.default_queue_ms, duration))
    chars = int(_num(meta, "emulator_output_chars", cfg.default_output_chars, 0, 50_000_000))
    default_deltas = max(1, min(math.ceil(chars / 8), cfg.max_deltas)) if chars else 0
    deltas = int(_num(meta, "emulator_deltas", default_deltas, 1, 100_000)) if chars else 0
    deltas = min(deltas, chars)
    outcome = meta.get("emulator_outcome") or "completed"
    if outcome not in ("completed", "failed", "incomplete"):
        raise KnobError("metadata 'emulator_outcome' must be completed, failed or incomplete")
    cut = meta.get("emulator_stream_cut_after")
    cut_after = int(_num(meta, "emulator_stream_cut_after", 0, 1, 1e9)) if cut not in (None, "") else None
    return {
        "duration_ms": max(duration, queue),
        "queue_ms": queue if background else 0.0,
        "output_chars": chars,
        "deltas": deltas,
        "outcome": outcome,
        "http_errors": parse_http_errors(meta.get("emulator_http_errors") or ""),
        "retry_after_ms": _num(meta, "emulator_retry_after_ms", cfg.retry_after_ms, 0, 600_000),
        "stream_cut_after": cut_after,
        # chat only: cut just the first N sends of the same body (a retry or a new attempt then succeeds)
        "stream_cut_sends": (
            int(_num(meta, "emulator_stream_cut_sends", 0, 0, 1e9))
            if meta.get("emulator_stream_cut_sends") not in (None, "")
            else None
        ),
        "first_byte_ms": _num(meta, "emulator_first_byte_ms", 0.0, 0, 600_000),
        "scale": float(cfg.time_scale),
        # webhooks (None = the global setting decides when the event fires)
        "webhook_delay_ms": (
            _num(meta, "emulator_webhook_delay_ms", 0.0, 0, 86_400_000)
            if meta.get("emulator_webhook_delay_ms") not in (None, "")
            else None
        ),
        "webhook_drop": _flag(meta, "emulator_webhook_drop"),
        "webhook_duplicate": _flag(meta, "emulator_webhook_duplicate"),
    }


# ------------------------------------------------------------------------------------------------
# Input analysis (done once at creation; the result is stored in the record)
# ------------------------------------------------------------------------------------------------


def normalize_input(raw: Any) -> list[dict]:
    if raw is None:
        return []
    if isinstance(raw, str):
        return [{"type": "message", "role": "user", "content": raw}]
    if isinstance(raw, list):
        out = []
        for item in raw:
            if not isinstance(item, dict):
                raise KnobError("each input item must be an object")
            item = dict(item)
            if "type" not in item and "role" in item:
                item["type"] = "message"
            out.append(item)
        return out
    raise KnobError("input must be a string or a list of items")


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
            elif isinstance(part, str):
                parts.append(part)
        return "\n".join(parts)
    return ""


def message_texts(items: list[dict]) -> list[str]:
    return [_content_text(i.get("content")) for i in items if i.get("type") == "message"]


_CALL_RE = re.compile(r"call:([A-Za-z_][A-Za-z0-9_\-\.]*)")


def find_call_triggers(text: str) -> list[tuple[str, str | None]]:
    """``call:name`` or ``call:name({json})`` anywhere in text -> [(name, arguments-json-or-None)]."""
    found = []
    decoder = json.JSONDecoder()
    for m in _CALL_RE.finditer(text):
        args = None
        rest = m.end()
        if text.startswith("(", rest):
            try:
                value, end = decoder.raw_decode(text, rest + 1)
                if text.startswith(")", end) and isinstance(value, dict):
                    args = json.dumps(value, separators=(",", ":"))
            except ValueError:
                pass
        found.append((m.group(1), args))
    return found


def _default_args(tool: dict) -> str:
    params = tool.get("parameters") or {}
    props = params.get("properties") or {}
    required = params.get("required") or list(props)
    out: dict[str, Any] = {}
    for name in required:
        kind = (props.get(name) or {}).get("type")
        out[name] = {"integer": 1, "number": 1.5, "boolean": True, "array": [], "object": {}}.get(kind, "emulated")
    return json.dumps(out, separators=(",", ":"))


def estimate_tokens(chars: int) -> int:
    return math.ceil(chars / 4) if chars > 0 else 0


def build_content_spec(
    *,
    resp_id: str,
    items: list[dict],
    instructions: str | None,
    tools: list,
    meta: dict,
    previous: dict | None,
    model: str,
    call_names: dict[str, str] | None = None,
) -> dict:
    """Decide once what the response will say: function calls or text (with a deterministic prefix).

    ``call_names`` maps call ids issued earlier to function names when there is no ``previous`` response
    (Chat Completions carries its history in the request)."""
    function_tools = {t.get("name"): t for t in tools or [] if isinstance(t, dict) and t.get("type") == "function"}
    tool_outputs = [i for i in items if i.get("type") == "function_call_output"]
    texts = message_texts(items)
    all_text = "\n".join(texts)
    input_chars = len(all_text) + len(instructions or "") + sum(len(str(o.get("output", ""))) for o in tool_outputs)

    calls: list[dict] = []
    if function_tools and not tool_outputs:
        triggers = find_call_triggers(all_text)
        if not triggers and meta.get("emulator_function_call"):
            for name in str(meta["emulator_function_call"]).split(","):
                triggers.append((name.strip(), meta.get("emulator_function_args") or None))
        for idx, (name, args) in enumerate(triggers):
            if name in function_tools:
                digest = hashlib.sha256(f"{resp_id}:{idx}".encode()).hexdigest()
                calls.append(
                    {
                        "name": name,
                        "arguments": args if args is not None else _default_args(function_tools[name]),
                        "id": "fc_" + digest[:40],
                        "call_id": "call_" + digest[40:64],
                    }
                )
    if calls:
        return {"kind": "function_calls", "calls": calls, "input_tokens": estimate_tokens(input_chars)}

    # text: a readable deterministic prefix, then filler derived from a seed of the input
    prev_calls = dict(call_names or {})
    if previous:
        for item in previous.get("calls", []):
            prev_calls[item["call_id"]] = item["name"]
    pieces = []
    for o in tool_outputs:
        out = o.get("output")
        out_text = out if isinstance(out, str) else json.dumps(out, separators=(",", ":"))
        name = prev_calls.get(o.get("call_id"), "tool")
        pieces.append(f"Tool {name} ({o.get('call_id')}) returned {out_text[:300]}.")
    last = texts[-1] if texts else ""
    if last:
        snippet = " ".join(last.split())[:80]
        pieces.append(f'Emulated reply to "{snippet}".')
    if previous:
        pieces.append(f"Continuing from {previous['id']}.")
    if not pieces:
        pieces.append("Emulated reply.")
    prefix = " ".join(pieces)
    seed_src = json.dumps([model, instructions or "", items, prefix], sort_keys=True, default=str)
    seed = hashlib.sha256(seed_src.encode()).hexdigest()[:16]
    return {"kind": "text", "prefix": prefix, "seed": seed, "input_tokens": estimate_tokens(input_chars)}


def synth_text(prefix: str, seed: str, chars: int) -> str:
    """Deterministic text of exactly ``chars`` characters."""
    if chars <= 0:
        return ""
    if len(prefix) + 1 >= chars:
        return prefix[:chars]
    rng = random.Random(seed)
    block_len = min(chars - len(prefix), 65536)
    words: list[str] = []
    size = 0
    while size < block_len:
        w = rng.choice(_WORDS)
        words.append(w)
        size += len(w) + 1
    block = " " + " ".join(words)
    body = block
    need = chars - len(prefix)
    if len(body) < need:
        body = block * (need // len(block) + 1)
    return prefix + body[:need]


# ------------------------------------------------------------------------------------------------
# Light timing (no text needed): used for listings, stats and expiry
# ------------------------------------------------------------------------------------------------


def timing(rec: dict) -> tuple[float, float, float, str]:
    """(t0, t_start, t_end, terminal_status) straight from the record's knobs."""
    k = rec["knobs"]
    t0 = rec["created_at"]
    t_start = t0 + k["queue_ms"] * k["scale"] / 1000.0
    t_end = t0 + k["duration_ms"] * k["scale"] / 1000.0
    outcome = k["outcome"]
    spec = rec["content"]
    if spec["kind"] == "function_calls":
        if outcome == "incomplete":
            outcome = "completed"
    elif outcome == "completed":
        max_tokens = rec["request"].get("max_output_tokens")
        if max_tokens is not None and estimate_tokens(k["output_chars"]) > max_tokens:
            outcome = "incomplete"
    return t0, t_start, t_end, outcome


def light_status(rec: dict, t: float) -> tuple[str, float | None, float | None]:
    """(status, started_at, finished_at) at time t; started/finished are None until they happen."""
    _t0, t_start, t_end, outcome = timing(rec)
    c = rec.get("cancelled_at")
    if c is not None and c < t_end:
        if t >= c:
            return "cancelled", (t_start if t_start <= c else None), c
    if t >= t_end:
        return outcome, t_start, t_end
    if t >= t_start:
        return "in_progress", t_start, None
    return "queued", None, None


# ------------------------------------------------------------------------------------------------
# The plan: every SSE event with its due time, plus the final Response
# ------------------------------------------------------------------------------------------------


@dataclass
class ItemPlan:
    kind: str  # "message" | "function_call"
    id: str
    full: str  # full text or full arguments
    final_status: str  # status in the final output
    added_idx: int = -1
    done_idx: int = 10**12  # index of output_item.done (never, for failed)
    delta_idx: list[int] = field(default_factory=list)
    delta_end: list[int] = field(default_factory=list)
    call_id: str = ""
    name: str = ""


@dataclass
class Plan:
    t0: float
    t_start: float
    t_end: float
    terminal_status: str
    events: list[tuple[float, str, int, int, int]]  # (due, type, item, start, end)
    dues: list[float]
    items: list[ItemPlan]
    output_chars: int
    usage: dict | None
    error: dict | None
    incomplete_details: dict | None


def build_plan(rec: dict) -> Plan:
    knobs = rec["knobs"]
    spec = rec["content"]
    scale = knobs["scale"]
    t0 = rec["created_at"]
    t_start = t0 + knobs["queue_ms"] * scale / 1000.0
    t_end = t0 + knobs["duration_ms"] * scale / 1000.0
    outcome = knobs["outcome"]
    background = rec["background"]

    items: list[ItemPlan] = []
    digest = hashlib.sha256(rec["id"].encode()).hexdigest()
    incomplete_details = None
    error = None
    if spec["kind"] == "function_calls":
        for c in spec["calls"]:
            items.append(
                ItemPlan("function_call", c["id"], c["arguments"], "completed", call_id=c["call_id"], name=c["name"])
            )
        n_out_chars = sum(len(c["arguments"]) + len(c["name"]) for c in spec["calls"])
        if outcome == "incomplete":
            outcome = "completed"  # no sensible truncation of a call; keep it simple
    else:
        text = synth_text(spec["prefix"], spec["seed"], knobs["output_chars"])
        max_tokens = rec["request"].get("max_output_tokens")
        if outcome == "completed" and max_tokens is not None and estimate_tokens(len(text)) > max_tokens:
            outcome = "incomplete"
        if outcome == "incomplete":
            limit = max_tokens * 4 if max_tokens is not None else len(text) // 2
            text = text[: max(0, min(limit, len(text)))]
            incomplete_details = {"reason": "max_output_tokens"}
        items.append(
            ItemPlan("message", "msg_" + digest[:48], text, "incomplete" if outcome == "incomplete" else "completed")
        )
        n_out_chars = len(text)
    if outcome == "failed":
        error = {"code": "server_error", "message": "The emulated model failed (emulator_outcome=failed)."}

    # deltas per item
    total_deltas = max(1, knobs["deltas"]) if spec["kind"] == "text" else 0
    splits: list[list[int]] = []
    for it in items:
        if it.kind == "message":
            n = min(total_deltas, len(it.full))
            if outcome == "failed":
                n = n // 2
                ends = [len(it.full) * (i + 1) // max(1, min(total_deltas, len(it.full))) for i in range(n)]
            else:
                ends = [len(it.full) * (i + 1) // n for i in range(n)] if n else []
        else:
            n = min(4, len(it.full)) if it.full else 0
            ends = [len(it.full) * (i + 1) // n for i in range(n)] if n else []
        splits.append(ends)
    n_deltas = sum(len(s) for s in splits)

    events: list[tuple[float, str, int, int, int]] = []
    events.append((t0, "response.created", -1, 0, 0))
    if background:
        events.append((t0, "response.queued", -1, 0, 0))
    events.append((t_start, "response.in_progress", -1, 0, 0))
    span = max(0.0, t_end - t_start)
    slot = 0
    cur = t_start
    for idx, (it, ends) in enumerate(zip(items, splits, strict=True)):
        it.added_idx = len(events)
        events.append((cur, "response.output_item.added", idx, 0, 0))
        if it.kind == "message":
            events.append((cur, "response.content_part.added", idx, 0, 0))
        start = 0
        for end in ends:
            slot += 1
            cur = t_start + span * slot / (n_deltas + 1)
            it.delta_idx.append(len(events))
            it.delta_end.append(end)
            etype = "response.output_text.delta" if it.kind == "message" else "response.function_call_arguments.delta"
            events.append((cur, etype, idx, start, end))
            start = end
        if outcome == "failed":
            continue
        if it.kind == "message":
            events.append((cur, "response.output_text.done", idx, 0, 0))
            events.append((cur, "response.content_part.done", idx, 0, 0))
        else:
            events.append((cur, "response.function_call_arguments.done", idx, 0, 0))
        it.done_idx = len(events)
        events.append((cur, "response.output_item.done", idx, 0, 0))
    terminal_type = {
        "completed": "response.completed",
        "failed": "response.failed",
        "incomplete": "response.incomplete",
    }[outcome]
    events.append((t_end, terminal_type, -1, 0, 0))
    # due times must never decrease (t_end >= every delta slot by construction)
    usage = None
    if outcome != "failed":
        out_tokens = estimate_tokens(n_out_chars)
        in_tokens = spec.get("input_tokens", 0)
        usage = {
            "input_tokens": in_tokens,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": out_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": in_tokens + out_tokens,
        }
    return Plan(
        t0,
        t_start,
        t_end,
        outcome,
        events,
        [e[0] for e in events],
        items,
        n_out_chars,
        usage,
        error,
        incomplete_details,
    )


# ------------------------------------------------------------------------------------------------
# Views
# ------------------------------------------------------------------------------------------------


def status_at(rec: dict, plan: Plan, t: float) -> str:
    cancelled_at = rec.get("cancelled_at")
    if cancelled_at is not None and cancelled_at < plan.t_end and t >= cancelled_at:
        return "cancelled"
    if t >= plan.t_end:
        return plan.terminal_status
    if t >= plan.t_start:
        return "in_progress"
    return "queued"


def finished_at(rec: dict, plan: Plan) -> float:
    """When the response becomes (or became) terminal on the emulator clock."""
    cancelled_at = rec.get("cancelled_at")
    if cancelled_at is not None and cancelled_at < plan.t_end:
        return cancelled_at
    return plan.t_end


def visible_event_count(rec: dict, plan: Plan, t: float) -> int:
    """How many events exist at time t (cancel freezes the log)."""
    cancelled_at = rec.get("cancelled_at")
    if cancelled_at is not None and cancelled_at < plan.t_end:
        t = min(t, cancelled_at)
        # never expose the terminal event of a cancelled response
        return min(bisect.bisect_right(plan.dues, t), len(plan.events) - 1)
    return bisect.bisect_right(plan.dues, t)


def _item_view(it: ItemPlan, k: int, final: bool, cancelled: bool) -> dict | None:
    """The item as it stands after the first k events (None = not yet added)."""
    if k <= it.added_idx:
        return None
    n = bisect.bisect_left(it.delta_idx, k)  # deltas with index < k
    text = it.full if final else (it.full[: it.delta_end[n - 1]] if n else "")
    done = final or k > it.done_idx
    status = it.final_status if done else ("incomplete" if cancelled else "in_progress")
    if it.kind == "message":
        content = []
        if final or k > it.added_idx + 1:
            content.append({"type": "output_text", "text": text, "annotations": [], "logprobs": []})
        return {"id": it.id, "type": "message", "status": status, "role": "assistant", "content": content}
    return {
        "id": it.id,
        "type": "function_call",
        "status": status,
        "arguments": text,
        "call_id": it.call_id,
        "name": it.name,
    }


def output_at(plan: Plan, k: int, *, final: bool = False, cancelled: bool = False) -> list[dict]:
    out = []
    for it in plan.items:
        view = _item_view(it, k, final, cancelled)
        if view is not None:
            out.append(view)
    return out


def response_object(rec: dict, plan: Plan, status: str, k: int) -> dict:
    """The Response JSON in the given status, with output as after the first k events."""
    terminal_ok = status == plan.terminal_status and status in TERMINAL
    if status in ("queued", "failed"):
        output: list[dict] = []
        output = []
    elif terminal_ok:
        output = output_at(plan, len(plan.events), final=True)
    else:
        output = output_at(plan, k, cancelled=(status == "cancelled"))
    req = rec["request"]
    return {
        "id": rec["id"],
        "object": "response",
        "created_at": int(rec["created_at"]),
        "status": status,
        "background": rec["background"],
        "completed_at": int(plan.t_end) if status == "completed" else None,
        "error": plan.error if status == "failed" else None,
        "incomplete_details": plan.incomplete_details if status == "incomplete" else None,
        "instructions": req.get("instructions"),
        "max_output_tokens": req.get("max_output_tokens"),
        "max_tool_calls": req.get("max_tool_calls"),
        "model": req.get("model"),
        "output": output,
        "parallel_tool_calls": req.get("parallel_tool_calls", True),
        "previous_response_id": req.get("previous_response_id"),
        "reasoning": req.get("reasoning") or {"effort": None, "summary": None},
        "safety_identifier": req.get("safety_identifier"),
        "service_tier": req.get("service_tier") or "default",
        "store": rec["store"],
        "temperature": req.get("temperature", 1.0),
        "text": req.get("text") or {"format": {"type": "text"}, "verbosity": "medium"},
        "tool_choice": req.get("tool_choice", "auto"),
        "tools": echo_tools(req.get("tools")),
        "top_logprobs": req.get("top_logprobs", 0),
        "top_p": req.get("top_p", 1.0),
        "truncation": req.get("truncation") or "disabled",
        "usage": plan.usage if status in ("completed", "incomplete") else None,
        "user": req.get("user"),
        "metadata": rec["metadata"],
        "prompt_cache_key": req.get("prompt_cache_key"),
    }


def echo_tools(tools: list | None) -> list:
    """Tools as a Response echoes them: function tools carry every field the schema requires."""
    out = []
    for tool in tools or []:
        if isinstance(tool, dict) and tool.get("type") == "function":
            tool = {"description": None, "parameters": None, "strict": True, **tool}
        out.append(tool)
    return out


def snapshot(rec: dict, plan: Plan, t: float) -> dict:
    status = status_at(rec, plan, t)
    k = visible_event_count(rec, plan, t)
    return response_object(rec, plan, status, k)


def render_event(rec: dict, plan: Plan, seq: int) -> dict:
    _due, etype, idx, start, end = plan.events[seq]
    ev: dict[str, Any] = {"type": etype, "sequence_number": seq}
    if etype in ("response.created", "response.queued"):
        ev["response"] = response_object(rec, plan, "queued" if rec["background"] else "in_progress", 0)
    elif etype == "response.in_progress":
        ev["response"] = response_object(rec, plan, "in_progress", 0)
    elif etype in ("response.completed", "response.failed", "response.incomplete"):
        ev["response"] = response_object(rec, plan, plan.terminal_status, len(plan.events))
    else:
        it = plan.items[idx]
        if etype == "response.output_item.added":
            item = _item_view(it, it.added_idx + 1, False, False)
            if it.kind == "function_call":
                item["arguments"] = ""
            ev.update(output_index=idx, item=item)
        elif etype == "response.output_item.done":
            ev.update(output_index=idx, item=_item_view(it, seq + 1, True, False))
        elif etype == "response.content_part.added":
            ev.update(
                item_id=it.id,
                output_index=idx,
                content_index=0,
                part={"type": "output_text", "text": "", "annotations": [], "logprobs": []},
            )
        elif etype == "response.output_text.delta":
            ev.update(item_id=it.id, output_index=idx, content_index=0, delta=it.full[start:end], logprobs=[])
        elif etype == "response.output_text.done":
            ev.update(item_id=it.id, output_index=idx, content_index=0, text=it.full, logprobs=[])
        elif etype == "response.content_part.done":
            ev.update(
                item_id=it.id,
                output_index=idx,
                content_index=0,
                part={"type": "output_text", "text": it.full, "annotations": [], "logprobs": []},
            )
        elif etype == "response.function_call_arguments.delta":
            ev.update(item_id=it.id, output_index=idx, delta=it.full[start:end])
        elif etype == "response.function_call_arguments.done":
            ev.update(item_id=it.id, output_index=idx, arguments=it.full, name=it.name)
    return ev


def sse_bytes(ev: dict) -> bytes:
    return f"event: {ev['type']}\ndata: {json.dumps(ev, separators=(',', ':'))}\n\n".encode()
