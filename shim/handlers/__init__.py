"""Handlers that override the default forwarding, one module per concern."""

from shim.handlers import crypto, library, mechanisms, objects, random, sessions  # noqa: F401
