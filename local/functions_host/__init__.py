"""Local Azure Functions host for this repo's Python v2 app (dev and tests only, never deployed).

`python -m local.functions_host --app-dir DIR` or, from tests/scripts, `HostProcess` (process.py).
See README.md in this folder.
"""

from .errors import StartupError

__all__ = ["HostProcess", "HostStartError", "StartupError"]


def __getattr__(name):  # lazy: importing the package must not pull in the host's dependencies
    if name in ("HostProcess", "HostStartError"):
        from . import process

        return getattr(process, name)
    raise AttributeError(name)
