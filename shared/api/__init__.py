"""The API layer: HTTP (FastAPI types, as the Functions HTTP streaming extension needs): request parsing, error
bodies and SSE responses shared by the HTTP entry points. The domain below it knows nothing of HTTP."""
