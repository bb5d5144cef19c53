"""Request bodies, the one way every route reads them: bounded, then parsed as strict JSON (shared.strict_json).

A body larger than the route allows is refused before it is read when its Content-Length says so, and cut off
as soon as a streamed (chunked) body passes the limit: an anonymous caller cannot make the app buffer more
than the limit. Every refusal is a 4xx naming the problem (413 for the size) and, where it can, the field.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request

from ..errors import PayloadTooLarge
from ..errors import invalid as bad_request
from ..strict_json import JsonRefused, loads


async def read_body(req: Request, max_bytes: int, *, code: str = "request_too_large") -> bytes:
    """The raw body, at most `max_bytes` (PayloadTooLarge with `code` beyond it)."""
    declared = req.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise bad_request("The Content-Length header is not a number.", param="Content-Length")
        if int(declared) > max_bytes:
            raise _too_large(code, max_bytes)
    body = bytearray()
    async for chunk in req.stream():
        body += chunk
        if len(body) > max_bytes:
            raise _too_large(code, max_bytes)
    return bytes(body)


def parse_json_body(raw: bytes, max_bytes: int) -> dict[str, Any]:
    """A JSON object from `raw`, or a 4xx (code `invalid_json` for anything that is not acceptable JSON)."""
    if len(raw) > max_bytes:
        raise _too_large("request_too_large", max_bytes)
    if not raw.strip():
        raise bad_request("The request body is empty; send a JSON object.", code="invalid_json")
    try:
        body = loads(raw)
    except JsonRefused as refused:
        raise bad_request(refused.message, param=refused.param, code="invalid_json") from None
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.", code="invalid_json")
    return body


async def json_body(req: Request, max_bytes: int) -> dict[str, Any]:
    return parse_json_body(await read_body(req, max_bytes), max_bytes)


def _too_large(code: str, max_bytes: int) -> PayloadTooLarge:
    return PayloadTooLarge(code, f"The request body is larger than {max_bytes} bytes.")
