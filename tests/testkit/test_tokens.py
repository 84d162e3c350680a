"""The token table (sc4testkit/tokens.py): one definition per card kind, read by every suite."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from sc4testkit import tokens
from shim import config
from shim.constants import CKM
from shim.functions import BY_NAME

REPO = Path(__file__).resolve().parents[2]


def test_the_cardlike_mask_names_real_functions_and_mechanisms_the_shim_accepts(tmp_path: Path) -> None:
    kind = tokens.SOFTHSM_CARDLIKE
    assert set(kind.mask_functions) <= set(BY_NAME)
    assert len(set(kind.mask_functions)) == len(kind.mask_functions) == 19
    path = tmp_path / "sc4.toml"
    path.write_text(config.dumps(kind.shim_conf()))
    got = config.load({"SC4DNSSEC_CONF": str(path), "HOME": str(tmp_path)})
    assert got.mask_functions == set(kind.mask_functions)
    assert got.mask_mechanisms == {CKM[m.removeprefix("CKM_")] for m in kind.mask_mechanisms}
    # What the card offers and what the shim hides from it do not overlap.
    assert not set(kind.softhsm_mechanisms) & set(kind.mask_mechanisms)


def test_kinds_without_a_mask_give_the_shim_an_empty_configuration() -> None:
    for kind in (tokens.SOFTHSM, tokens.VIRTUAL, tokens.OPENSC):
        assert kind.shim_conf() == {}


def test_softhsm_conf_restricts_mechanisms_only_for_the_cardlike_kind() -> None:
    assert "slots.mechanisms = CKM_ECDSA,CKM_RSA_PKCS," in tokens.SOFTHSM_CARDLIKE.softhsm_conf("/t")
    assert "slots.mechanisms" not in tokens.SOFTHSM.softhsm_conf("/t")
    assert tokens.SOFTHSM.softhsm_conf("/t", "slots.removable = false").splitlines() == [
        "directories.tokendir = /t", "objectstore.backend = file", "log.level = ERROR", "slots.removable = false"]


def test_the_card_option_offers_exactly_the_table() -> None:
    out = subprocess.run([sys.executable, "-m", "pytest", "--help", "-p", "no:cacheprovider"], cwd=REPO,
                         capture_output=True, text=True, timeout=120).stdout
    line = next(ln for ln in out.splitlines() if "--card=" in ln)
    assert "{" + ",".join(tokens.KINDS) + "}" in line
