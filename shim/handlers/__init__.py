"""Handlers that override the default forwarding, one module per concern."""

from shim.handlers import library, sessions  # noqa: F401
