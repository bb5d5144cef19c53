"""A minimal SSE reader for tests (the service's own framing: id, event, data, comments, retry)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import httpx


@dataclass
class Event:
    id: int | None
    event: str
    data: dict

    @property
    def delta(self) -> str:
        return self.data.get("delta", "") if self.event == "output_text.delta" else ""


def parse(lines: Iterator[str]) -> Iterator[Event]:
    event_id, name, data = None, "message", []
    for line in lines:
        if line == "":
            if data:
                yield Event(event_id, name, json.loads("\n".join(data)))
            event_id, name, data = None, "message", []
        elif line.startswith((":", "retry:")):
            continue
        elif line.startswith("id:"):
            event_id = int(line[3:].strip())
        elif line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip())


def read(client: httpx.Client, method: str, url: str, *, limit: int | None = None, **kwargs) -> list[Event]:
    """Read a stream to its end, or only its first `limit` events (then drop the connection)."""
    events: list[Event] = []
    with client.stream(method, url, **kwargs) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        for event in parse(response.iter_lines()):
            events.append(event)
            if limit is not None and len(events) >= limit:
                break
    return events
