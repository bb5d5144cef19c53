"""A small Server-Sent Events parser (the WHATWG framing: id, event, data, comments, retry)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import AsyncIterator


@dataclass
class ServerSentEvent:
    event: str
    data: str
    id: str | None = None


async def parse(lines: AsyncIterator[str]) -> AsyncIterator[ServerSentEvent]:
    """Events from decoded lines (without line endings). A partial event at the end of the input
    (a cut connection) is dropped, never yielded."""
    event, data, event_id = "", [], None
    async for line in lines:
        if line == "":
            if data:
                yield ServerSentEvent(event or "message", "\n".join(data), event_id)
            event, data, event_id = "", [], None
            continue
        if line.startswith(":"):
            continue  # comment (keep-alive)
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            data.append(value)
        elif name == "event":
            event = value
        elif name == "id":
            event_id = value
        # "retry" and unknown fields are ignored
