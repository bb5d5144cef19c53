"""Reading the JSON body of a queue message the service sent (base64 text, host.json messageEncoding)."""

from __future__ import annotations

import json
from typing import Any

import azure.functions as func


def message_json(msg: func.QueueMessage) -> dict[str, Any]:
    """The message's JSON object, or {} (which the handlers drop as malformed, never poison)."""
    try:
        data = json.loads(msg.get_body())
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}
