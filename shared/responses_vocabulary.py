"""The words of OpenAI's Responses API that the service reads and writes, in one place: the stream events that end
a response, the statuses of a response and of a run, and the error codes.

A provider's response, the executor's event log and our runs all speak it: the relay, the poll chain, the event log,
the executor and telemetry import it from here, so a new terminal event or status is added once. A leaf: it imports
nothing of the service.
"""

from __future__ import annotations

from enum import StrEnum

# -- a response's stream ------------------------------------------------------------------------------------------
# A response's event stream ends with exactly one of these, carrying the whole response. A cancelled response's
# stream has none: it just ends.
TERMINAL_EVENT_TYPES = frozenset({"response.completed", "response.failed", "response.incomplete"})
# Our event for the output a new attempt of the executor starts again (followers drop the partial output before it).
OUTPUT_RESTARTED_EVENT = "response.output_restarted"


# The provider's webhooks (events pushed to us) that say a background response ended; their payload names only the
# response.
ENDED_WEBHOOK_EVENT_TYPES = frozenset(
    {"response.completed", "response.failed", "response.cancelled", "response.incomplete"}
)


def is_terminal_event(event_type: object) -> bool:
    return event_type in TERMINAL_EVENT_TYPES


# -- statuses -----------------------------------------------------------------------------------------------------
class RunStatus(StrEnum):
    """A run's status: a response's status, plus `requires_action` (a completed response that asks for function
    calls) and `expired` (the run passed its deadline)."""

    QUEUED = "queued"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    REQUIRES_ACTION = "requires_action"
    FAILED = "failed"
    INCOMPLETE = "incomplete"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


# A response (the provider's, or the executor's log) that is still going; every other status ends it.
# (The sets hold plain strings: what is stored and shown is never an enum member.)
ACTIVE_STATUSES = frozenset(s.value for s in (RunStatus.QUEUED, RunStatus.IN_PROGRESS))
# How a response ends (the executor's log is closed with one of these).
ENDED_RESPONSE_STATUSES = frozenset(
    s.value for s in (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.INCOMPLETE, RunStatus.CANCELLED)
)
# How a run ends: terminal and sticky.
TERMINAL_STATUSES = ENDED_RESPONSE_STATUSES | {RunStatus.REQUIRES_ACTION.value, RunStatus.EXPIRED.value}
# Terminal statuses that come with a provider response worth continuing a session from.
CONTINUABLE_STATUSES = frozenset(
    s.value for s in (RunStatus.COMPLETED, RunStatus.REQUIRES_ACTION, RunStatus.INCOMPLETE)
)
# Terminal statuses whose response's stream ends with a terminal event (a cancel and an expiry have none).
STREAMED_END_STATUSES = frozenset(
    s.value for s in (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.INCOMPLETE, RunStatus.REQUIRES_ACTION)
)


# -- error codes --------------------------------------------------------------------------------------------------
SERVER_ERROR = "server_error"  # OpenAI's code for a failure on the server's side (retrying may succeed)
# OpenAI's ResponseErrorCode: the facade reports any other code as server_error, with ours in front of the message.
OPENAI_ERROR_CODES = frozenset(
    {
        SERVER_ERROR,
        "rate_limit_exceeded",
        "invalid_prompt",
        "data_residency_mismatch",
        "bio_policy",
        "vector_store_timeout",
        "invalid_image",
        "invalid_image_format",
        "invalid_base64_image",
        "invalid_image_url",
        "image_too_large",
        "image_too_small",
        "image_parse_error",
        "image_content_policy_violation",
        "invalid_image_mode",
        "image_file_too_large",
        "unsupported_image_media_type",
        "empty_image_file",
        "failed_to_download_image",
        "image_file_not_found",
    }
)
# What a failure the model reports inside its stream names, for the HTTP status the same failure would have had:
# OpenAI's codes and error types, and LiteLLM's (it sends the upstream status as the code: "500").
STATUS_OF_ERROR_NAME = {
    SERVER_ERROR: 500,
    "internal_server_error": 500,
    "api_error": 500,
    "service_unavailable": 503,
    "overloaded_error": 503,
    "timeout": 408,
    "rate_limit_exceeded": 429,
    "rate_limit_error": 429,
}


class ErrorCode(StrEnum):
    """The codes of the failures we name ourselves (the native API shows them; the facade puts them in front of
    a server_error's message)."""

    PROVIDER_ERROR = "provider_error"  # the provider refused (a 4xx that retrying will not change)
    PROVIDER_UNAVAILABLE = "provider_unavailable"  # the provider kept failing (429/5xx, unreachable)
    MODEL_CALL_INTERRUPTED = "model_call_interrupted"  # every attempt of the executor's call was cut
    FUNCTION_TIMEOUT = "function_timeout"  # the executor's call would outlive its invocation
    HISTORY_TOO_LARGE = "history_too_large"  # a session's earlier turns exceed what one call loads
    INVALID_CONVERSATION = "invalid_conversation"  # a previous response the executor cannot continue
    DEADLINE_EXCEEDED = "deadline_exceeded"  # the run did not end within its deadline (status expired)
    START_INTERRUPTED = "start_interrupted"  # the start died before the provider accepted the run
    CAPACITY_WAIT_EXCEEDED = "capacity_wait_exceeded"  # queued for provider capacity longer than allowed
