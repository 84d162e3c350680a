"""The BIND fixtures (the Debian 13 root, the shim installed in it, the virtual SmartCard-HSM),
shared with tests/bind so one pytest session builds each once."""

from tests.bind.conftest import pytest_terminal_summary, schsm_card, shim, trixie  # noqa: F401
