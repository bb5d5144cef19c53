"""The model provider: its client, what its failures mean, and the backend seam runs are started through."""

from .backend import ANYWHERE, Candidate, ProviderState, ResponsesBackend, RunBackend, StartedResponse
from .client import open_provider
from .errors import ProviderError, RequestRefused, classify
from .pool import DeploymentPool, Member

__all__ = [
    "ANYWHERE",
    "Candidate",
    "DeploymentPool",
    "Member",
    "ProviderError",
    "ProviderState",
    "RequestRefused",
    "ResponsesBackend",
    "RunBackend",
    "StartedResponse",
    "classify",
    "open_provider",
]
