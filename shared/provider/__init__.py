"""The model provider: its client, what its failures mean, and the backend seam runs are started through."""
from .backend import ProviderState, ResponsesBackend, RunBackend, Started
from .client import open_provider
from .errors import ProviderError, RequestRefused, classify

__all__ = ["ProviderError", "ProviderState", "RequestRefused", "ResponsesBackend", "RunBackend", "Started", "classify",
           "open_provider"]
