"""SSE responses for a run's relay, and where a resuming client wants to continue from."""
from __future__ import annotations

from fastapi import Request
from fastapi.responses import StreamingResponse

from ..errors import invalid
from ..runs.relay import Relay
from ..runs.tokens import TokenClaims

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def streaming_response(relay: Relay, location: str) -> StreamingResponse:
    return StreamingResponse(relay.events(), media_type="text/event-stream",
                             headers={**SSE_HEADERS, "Location": location})


def resume_position(req: Request, run_id: str, decode_token) -> int:
    """Where to resume. A Last-Event-ID header wins: browsers send it only on their own reconnects, and it is
    newer than any ?continuation_token or ?starting_after left in the EventSource URL."""
    header = req.headers.get("last-event-id")
    if header:
        return sequence_number("Last-Event-ID", header)
    token = req.query_params.get("continuation_token")
    if token:
        claims: TokenClaims = decode_token(token)
        if claims.run_id != run_id:
            raise invalid("The continuation token belongs to another run.", param="continuation_token",
                          code="invalid_token")
        return claims.position
    raw = req.query_params.get("starting_after")
    return sequence_number("starting_after", raw) if raw else -1


def sequence_number(name: str, raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise invalid(f"'{name}' must be an integer sequence number.", param=name) from None
    if value < -1:
        raise invalid(f"'{name}' must be -1 or more.", param=name)
    return value
