"""Signing on the signer host with the key on the card host, through p11-kit's remoting and ssh."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, utils

from .conftest import REPO, Remote

pytestmark = pytest.mark.remote


def audit_verify(log: Path) -> str:
    res = subprocess.run([sys.executable, "-m", "shim.cli", "audit", "verify", str(log)], capture_output=True,
                         text=True, cwd=REPO)
    assert res.returncode == 0, f"audit verify {log}: {res.returncode}\n{res.stdout}{res.stderr}"
    return res.stdout


@pytest.mark.parametrize("form", ["local", "remote"])
@pytest.mark.parametrize("key", ["ec", "rsa"])
def test_pkcs11_tool_signs_with_the_remote_card(link: Remote, tmp_path: Path, key: str, form: str) -> None:
    """pkcs11-tool on the signer host sees the card host's token and signs with its key, over the
    -L link (the signer host dials) and the -R link (the card host dials); the signature checks
    against the card's public key, and both shims logged the signature."""
    link.link_up(form)
    card = link.card
    k = card.keys[key]
    listing = link.p11tool("-L").stdout
    assert f"token label        : {card.token_label}" in listing, listing
    data = tmp_path / "data"
    data.write_bytes(b"the zone's RRset, canonical form" * 7)
    sig, pub = tmp_path / "sig", tmp_path / "pub.der"
    mech = "ECDSA-SHA256" if key == "ec" else "SHA256-RSA-PKCS"
    before_card = len(link.card_shim.calls("C_Sign"))
    link.p11tool("--token-label", card.token_label, "--login", "--pin", card.pin, "--sign", "-m", mech,
                 "--id", k.id.hex(), "-i", str(data), "-o", str(sig))
    link.p11tool("--token-label", card.token_label, "--read-object", "--type", "pubkey", "--id", k.id.hex(),
                 "-o", str(pub))
    public = serialization.load_der_public_key(pub.read_bytes())
    raw = sig.read_bytes()
    if key == "ec":
        assert isinstance(public, ec.EllipticCurvePublicKey)
        half = len(raw) // 2
        der = utils.encode_dss_signature(int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big"))
        public.verify(der, data.read_bytes(), ec.ECDSA(hashes.SHA256()))
    else:
        public.verify(raw, data.read_bytes(), padding.PKCS1v15(), hashes.SHA256())  # type: ignore[union-attr]
    signer_signs = [r for r in link.signer.calls("C_Sign") if r["rv"] == "CKR_OK"]
    card_signs = [r for r in link.card_shim.calls("C_Sign")[before_card:] if r["rv"] == "CKR_OK"]
    assert signer_signs and signer_signs[-1]["prog"] == "pkcs11-tool", signer_signs
    assert len(card_signs) == 1 and card_signs[0]["prog"] == "p11-kit-remote", card_signs
    audit_verify(link.signer.audit_log)
    audit_verify(link.card_shim.audit_log)
