"""What a request names besides its body: route parameters and the query of a run list (GET /api/runs and the
console's list), each bad value a 400 naming it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import invalid
from .run_requests import ID_PATTERN


def path_param(req: Any, name: str) -> str:
    # The Functions worker copies route parameters into path_params (RequestSynchronizer).
    value: str | None = req.path_params.get(name)
    if not value:
        raise invalid(f"Missing route parameter {name!r}.")
    return value


def limit_param(query: Mapping[str, str], default: int) -> int:
    try:
        return int(query.get("limit", str(default)))
    except ValueError:
        raise invalid("'limit' must be an integer.", param="limit") from None


def run_list_query(query: Mapping[str, str], *, default_limit: int) -> dict[str, Any]:
    """`status`, `session_id`, `cursor` and `limit` for RunLister.page (which checks status, cursor and range).
    A parameter sent empty (`?status=`) is judged as sent, never taken as absent."""
    session_id = query.get("session_id")
    if session_id is not None and not ID_PATTERN.match(session_id):
        raise invalid("'session_id' is not a valid session id.", param="session_id")
    cursor = query.get("cursor")
    if cursor == "":
        raise invalid("'cursor' is empty; send the next_cursor of the previous page, or no cursor.", param="cursor")
    return {
        "status": query.get("status"),
        "session_id": session_id,
        "cursor": cursor,
        "limit": limit_param(query, default_limit),
    }
