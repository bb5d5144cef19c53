"""SSE responses for a run's relay, and where a resuming client wants to continue from."""

from __future__ import annotations

import re
from collections.abc import Callable

from fastapi import Request
from fastapi.responses import StreamingResponse

from ..errors import invalid
from ..runs.relay import Relay
from ..runs.tokens import TokenClaims

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def streaming_response(relay: Relay, location: str) -> StreamingResponse:
    return StreamingResponse(
        relay.events(), media_type="text/event-stream", headers={**SSE_HEADERS, "Location": location}
    )


def resume_position(req: Request, run_id: str, decode_token: Callable[[str], TokenClaims]) -> int:
    """Where to resume. A Last-Event-ID header wins: browsers send it only on their own reconnects, and it is
    newer than any ?continuation_token or ?starting_after left in the EventSource URL. Every position given is
    checked all the same: a bad one is a 400 whichever would have won."""
    from_url = -1
    token = req.query_params.get("continuation_token")
    if token is not None:
        claims: TokenClaims = decode_token(token)
        if claims.run_id != run_id:
            raise invalid(
                "The continuation token belongs to another run.", param="continuation_token", code="invalid_token"
            )
        from_url = claims.position
    raw = req.query_params.get("starting_after")
    if raw is not None:
        position = sequence_number("starting_after", raw)
        from_url = from_url if token is not None else position
    header = req.headers.get("last-event-id")
    return sequence_number("Last-Event-ID", header) if header else from_url


_SEQUENCE_NUMBER = re.compile(r"-?[0-9]{1,10}")


def sequence_number(name: str, raw: str) -> int:
    """A sequence number as SSE ids are written: ASCII digits, an optional minus, nothing else."""
    if not _SEQUENCE_NUMBER.fullmatch(raw):
        raise invalid(f"'{name}' must be an integer sequence number.", param=name)
    value = int(raw)
    if value < -1:
        raise invalid(f"'{name}' must be -1 or more.", param=name)
    return value
