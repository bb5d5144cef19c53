"""`GET /responses/{id}/input_items`: the input a run was started with, from its stored request (no provider
call), as OpenAI lists input items: newest first by default (`order`), `limit` 1-100 (20), `after` an item id.

Items without an id get a stable one made from the run id and their position, so `after` pages work on every
read; messages get `status: completed` and their text as content parts, as the API lists them.
"""

from __future__ import annotations

from typing import Any

from ..errors import invalid as bad_request
from ..runs.model import Run

_ID_PREFIX = {"message": "msg", "function_call": "fc", "function_call_output": "fco"}


def input_items(run: Run) -> list[dict[str, Any]]:
    raw = run.request.get("input")
    items = [{"role": "user", "content": raw}] if isinstance(raw, str) else list(raw or [])
    return [_listed(item, run.id, index) for index, item in enumerate(items)]


def page(items: list[dict[str, Any]], *, after: str | None, limit: int, order: str) -> dict[str, Any]:
    if order not in ("asc", "desc"):
        raise bad_request("'order' must be 'asc' or 'desc'.", param="order")
    if not 1 <= limit <= 100:
        raise bad_request("'limit' must be between 1 and 100.", param="limit")
    ordered = items if order == "asc" else items[::-1]
    start = 0
    if after is not None:
        ids = [item["id"] for item in ordered]
        if after not in ids:
            raise bad_request(f"No input item with id '{after}'.", param="after")
        start = ids.index(after) + 1
    data = ordered[start : start + limit]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": start + limit < len(ordered),
    }


def _listed(item: dict[str, Any], run_id: str, index: int) -> dict[str, Any]:
    kind = item.get("type") or ("message" if "role" in item else "item")
    listed = {**item, "type": kind}
    listed.setdefault("id", f"{_ID_PREFIX.get(kind, 'item')}_{run_id.removeprefix('run_')}{index:04d}")
    if kind == "message":
        listed["content"] = _content(item.get("content"), assistant=item.get("role") == "assistant")
        listed.setdefault("status", "completed")
    elif kind in ("function_call", "function_call_output"):
        listed.setdefault("status", "completed")
    return listed


def _content(content: Any, *, assistant: bool) -> list[dict[str, Any]]:
    """Text parts as the API lists them: `input_text` for the caller's messages, `output_text` for the
    assistant's (given back as input)."""
    parts = [{"type": "input_text", "text": content}] if isinstance(content, str) else list(content or [])
    if not assistant:
        return parts
    return [
        {
            "type": "output_text",
            "text": part.get("text", ""),
            "annotations": part.get("annotations", []),
            "logprobs": part.get("logprobs", []),
        }
        if isinstance(part, dict) and part.get("type") in ("input_text", "output_text", "text")
        else part
        for part in parts
    ]
