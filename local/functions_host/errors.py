"""Errors of the local Functions host."""


class StartupError(Exception):
    """The app or its configuration cannot be loaded; the message names the problem."""
