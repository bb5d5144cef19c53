"""The model provider: its client, what its failures mean, and the backend seam runs are started through."""

from .backend import ProviderState, ResponsesBackend, RunBackend, StartedResponse
from .client import open_provider
from .errors import ProviderError, RequestRefused, classify

__all__ = [
    "ProviderError",
    "ProviderState",
    "RequestRefused",
    "ResponsesBackend",
    "RunBackend",
    "StartedResponse",
    "classify",
    "open_provider",
]
