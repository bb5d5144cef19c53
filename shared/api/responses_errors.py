"""Failures as the Responses API reports them: `{"error": {"message", "type", "param", "code"}}`, the shape the
`openai` SDKs unwrap into their exceptions (BadRequestError, AuthenticationError, NotFoundError, ...).

The status codes are the native API's (shared/api/errors.py); only the body differs. A missing or wrong key is
401 `invalid_api_key`; a run the caller cannot see is 404 "Response with id '...' not found.", as OpenAI says it.
"""

from __future__ import annotations

from fastapi.responses import JSONResponse

from ..errors import NotFound, ServiceError
from .errors import answering_errors_with, error_headers, status_of


def error_type(status: int) -> str:
    if status == 401:
        return "invalid_request_error"
    if status == 429:
        return "requests"  # OpenAI's type for a requests-per-minute limit (code `rate_limit_exceeded`)
    return "server_error" if status >= 500 else "invalid_request_error"


def openai_error_response(error: ServiceError) -> JSONResponse:
    status = status_of(error)
    body = {
        "error": {
            "message": error.message,
            "type": error_type(status),
            "param": error.param,
            "code": None if error.code == "not_found" else error.code,
        }
    }
    return JSONResponse(body, status_code=status, headers=error_headers(error))


def response_not_found(response_id: str, error: NotFound) -> NotFound:
    """OpenAI's wording for an unknown response; a run deleted by retention keeps saying so."""
    if error.code == "expired":
        return NotFound("expired", f"Response with id '{response_id}' not found: {error.message}.")
    return NotFound("not_found", f"Response with id '{response_id}' not found.")


openai_handler = answering_errors_with(openai_error_response)  # every failure in OpenAI's error JSON
