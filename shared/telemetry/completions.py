"""When the provider said a response ended, kept until the run of that response is saved terminal: the
completion-detection lag is the difference."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

# response id -> the provider's completed_at, noted when a step sees a response end, read when its run is saved
# terminal (often in another task: a stream's reader). Bounded: a response that never reaches its run is forgotten.
_COMPLETED: OrderedDict[str, float] = OrderedDict()
_COMPLETED_MAX = 2048


def note_completed(response: Any) -> None:
    if response is None:
        return

    def get(key: str) -> Any:
        return response.get(key) if isinstance(response, Mapping) else getattr(response, key, None)

    completed_at, response_id = get("completed_at"), get("id")
    if completed_at and response_id:
        _COMPLETED[str(response_id)] = float(completed_at)
        while len(_COMPLETED) > _COMPLETED_MAX:
            _COMPLETED.popitem(last=False)


def provider_completed_at(response_id: str | None) -> float | None:
    return _COMPLETED.pop(response_id, None) if response_id else None
