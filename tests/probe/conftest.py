"""Fixtures: the probe run over the ``--card`` backend, as an operator would run it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from probe_helpers import ProbeRun, write_config

from shim import probe


@pytest.fixture
def pin_file(card: Any, tmp_path: Path) -> Path:
    p = tmp_path / "pin"
    p.write_text(card.pin)
    p.chmod(0o600)
    return p


@pytest.fixture
def run_probe(card: Any, tmp_path: Path, pin_file: Path) -> ProbeRun:
    """``run_probe(**options)``: the probe's report over the card, config written for the card."""

    def run(config: Path | None = None, env: dict[str, str] | None = None, **kw: Any) -> dict[str, Any]:
        conf = config or write_config(tmp_path / "sc4dnssec.toml", card, tmp_path / "audit.jsonl")
        base = dict(os.environ, **card.env) if env is None else env
        base.pop("SC4DNSSEC_BACKEND", None)
        base.pop("SC4DNSSEC_AUDIT_LOG", None)
        kw.setdefault("pin_source", str(pin_file))
        kw.setdefault("token", card.token_label)  # other tests may have started more cards
        return probe.run(probe.Options(config=str(conf), env=base, **kw))

    return run
