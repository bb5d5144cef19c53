from types import SimpleNamespace

import pytest

from shared.runs.poll_chain import Backoff
from shared.runs.results import result_from_response

BACKOFF = Backoff(initial=1.0, maximum=30.0, multiplier=1.5)


def test_poll_delays_grow_to_the_cap_with_bounded_jitter():
    low = [BACKOFF.delay(n, rng=lambda: 0.0) for n in range(20)]
    high = [BACKOFF.delay(n, rng=lambda: 1.0) for n in range(20)]
    assert low[0] == pytest.approx(0.8) and high[0] == pytest.approx(1.2)
    assert low == sorted(low) and max(high) == pytest.approx(36.0) and low[-1] == pytest.approx(24.0)


def test_retry_after_is_honoured_but_bounded():
    assert BACKOFF.delay(0, retry_after=7, rng=lambda: 0.5) == 7
    assert BACKOFF.delay(0, retry_after=10_000, rng=lambda: 0.5) == 600


def test_a_first_delay_comes_before_the_curve_which_then_starts_at_its_initial():
    push = Backoff(initial=30.0, maximum=120.0, multiplier=1.5, first=1.0)
    assert push.delay(0, rng=lambda: 0.5) == pytest.approx(1.0)  # the early look
    assert [push.delay(n, rng=lambda: 0.5) for n in (1, 2, 5)] == pytest.approx([30.0, 45.0, 120.0])
    assert push.delay(0, retry_after=7, rng=lambda: 0.5) == 7  # a provider's Retry-After still lengthens it


def test_function_calls_become_requires_action():
    response = {
        "status": "completed",
        "output": [{"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"}],
        "usage": {"total_tokens": 3},
    }
    status, result = result_from_response(response)
    assert status == "requires_action"
    assert result["required_action"]["calls"] == [{"call_id": "c1", "name": "f", "arguments": "{}"}]
    assert result["output_text"] == ""


def test_output_text_joins_message_parts():
    response = SimpleNamespace(
        model_dump=lambda **_: {
            "status": "completed",
            "output": [
                {
                    "type": "message",
                    "content": [
                        {"type": "output_text", "text": "a"},
                        {"type": "refusal", "refusal": "x"},
                        {"type": "output_text", "text": "b"},
                    ],
                }
            ],
        }
    )
    status, result = result_from_response(response)
    assert (status, result["output_text"], result["required_action"]) == ("completed", "ab", None)
