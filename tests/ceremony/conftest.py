"""``--ceremony-example DIR``: the BIND ceremony test at the size of the committed example record
(docs/ceremony-record-example.*), left in DIR for ``sc4dnssec ceremony record``."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.getgroup("ceremony").addoption(
        "--ceremony-example", metavar="DIR", default=None,
        help="run tests/ceremony/test_ceremony_bind.py on 3 cards with 2 DKEK shares and six named participants, "
             "in DIR (new or empty), and keep DIR: the source of docs/ceremony-record-example.*")
