"""Signing on the signer host with the key on the card host, through p11-kit's remoting and ssh."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, utils

from .conftest import CARD_ADDR, REPO, SIGNER_ADDR, Remote

pytestmark = pytest.mark.remote


def audit_join(r: Remote) -> tuple[int, dict[str, Any]]:
    """``sc4dnssec audit join --json`` of the signer's log and the card host's: (exit code, pairs)."""
    res = subprocess.run([sys.executable, "-m", "shim.cli", "audit", "join", "--json", str(r.signer.audit_log),
                          str(r.card_shim.audit_log)], capture_output=True, text=True, cwd=REPO)
    assert res.returncode in (0, 1), f"audit join: {res.returncode}\n{res.stdout}{res.stderr}"
    return res.returncode, json.loads(res.stdout)


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
    code, joined = audit_join(link)
    assert code == 0 and not joined["unexplained"], joined
    pair = next(p for p in joined["pairs"] if p["signer"]["pid"] == signer_signs[-1]["pid"])
    assert [signer_signs[-1]["seq"], card_signs[0]["seq"]] in pair["matched"], pair
    assert pair["card"]["prog"] == "p11-kit-remote" and pair["card"]["pid"] == card_signs[0]["pid"], pair
    check_client(link, pair["card"]["client"], form)


def check_client(link: Remote, client: dict[str, Any], form: str) -> None:
    """The card host's load record names the connection: the server's socket, and the ssh process on
    the card host that connected to it (SO_PEERCRED), with the TCP connection it carries."""
    assert client["socket"] == link.card_socket and client["uid"] == 0, client
    if form == "local":
        # sshd's session process for the -L link; its title names the user ssh authenticated
        # (`sshd: root@notty` from OpenSSH 9, `sshd-session: root` from OpenSSH 10)
        assert client["comm"] in ("sshd", "sshd-session") and "root" in client["title"], client
        assert any(t.startswith(f"{CARD_ADDR}:22 -> {SIGNER_ADDR}:") for t in client["tcp"]), client
    else:
        assert client["comm"] == "ssh" and client["pid"] == link.link_pid() and "title" not in client, client
        assert any(t.endswith(f" -> {SIGNER_ADDR}:22") for t in client["tcp"]), client


def test_a_signature_no_signer_asked_for_is_unexplained(link: Remote, tmp_path: Path) -> None:
    """A client on the signer host that uses the forwarded socket without the shim signs on the card;
    the card host logged it, no signer log has it, and `audit join` says so (exit 1)."""
    card = link.card
    data = tmp_path / "data"
    data.write_bytes(b"not through the shim")
    client = link.env_doc["env"]["SC4DNSSEC_BACKEND"]
    link.on_signer(["pkcs11-tool", "--module", client, "--token-label", card.token_label, "--login", "--pin",
                    card.pin, "--sign", "-m", "ECDSA", "--id", card.keys["ec"].id.hex(), "-i", str(data),
                    "-o", str(tmp_path / "sig")])
    rogue = [r for r in link.card_shim.calls("C_Sign") if r["rv"] == "CKR_OK"][-1]
    code, joined = audit_join(link)
    assert code == 1 and ["card", rogue["seq"]] in joined["unexplained"], joined
    assert rogue["epoch"] in {c["epoch"] for c in joined["unpaired_card"]}, joined


def test_sockets_are_closed_to_others(link: Remote) -> None:
    """The card host's socket sits in a 0700 directory; the forwarded socket is the ssh user's alone;
    another user on the signer host cannot connect, and the signer host cannot reach the card
    host's socket without the link (its path is not there)."""
    for sock in (link.card_socket, link.signer_socket):
        d = os.stat(os.path.dirname(sock))
        assert stat.S_IMODE(d.st_mode) == 0o700 and d.st_uid == 0, (sock, oct(d.st_mode))
    st = os.stat(link.signer_socket)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) & 0o077 == 0, oct(st.st_mode)
    probe = ("import socket, sys\ns = socket.socket(socket.AF_UNIX)\n"
             "try:\n    s.connect(sys.argv[1])\nexcept OSError as e:\n    print(type(e).__name__)\n"
             "else:\n    print('connected')\n")
    other = link.signer_host.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                                  "/usr/bin/python3", "-c", probe, link.signer_socket], os.environ)
    assert other.stdout.strip() == "PermissionError", other.stdout + other.stderr
    direct = link.signer_host.run(["/usr/bin/python3", "-c", probe, link.card_socket], os.environ)
    assert direct.stdout.strip() == "FileNotFoundError", direct.stdout + direct.stderr
    before = {r["epoch"] for r in link.card_shim.records()}
    unforwarded = link.sign_env(P11_KIT_SERVER_ADDRESS=f"unix:path={link.card_socket}")
    res = link.on_signer(["pkcs11-tool", "--module", link.signer.module, "-L"], env=unforwarded, check=False)
    assert "token label" not in res.stdout, res.stdout
    assert {r["epoch"] for r in link.card_shim.records()} == before
    assert link.card.token_label in link.p11tool("-L").stdout  # the forwarded socket does reach the card
