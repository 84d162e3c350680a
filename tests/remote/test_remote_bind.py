"""BIND 9.20 on the signer host with the key on the card host: dnssec-keyfromlabel and
dnssec-signzone (Debian 13 root, pkcs11-provider over the shim over p11-kit-client.so), run in the
signer host's namespaces; dnssec-verify without any provider."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
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
    base: Path  # bind-mounted into the root: the shim's venv and the client module live here

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
    yield Bind(remote, trixie, shim, client, cnf, remote.signer_host.dir / "bind-audit.jsonl", base)


def test_dnssec_signzone_with_the_remote_card(bind: Bind, link: Remote, request: pytest.FixtureRequest) -> None:
    """keyfromlabel, signzone -z (every RRset signed on the card host), dnssec-verify; both logs
    verify and `audit join` explains every signature."""
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
    before = len(link.card_shim.calls())
    bind.run(["dnssec-signzone", "-n", "1", "-x", "-z", "-o", ORIGIN, "-k", ksk, "zone.db"], work, True)
    out = bind.run(["dnssec-verify", "-z", "-o", ORIGIN, "zone.db.signed"], work, False)
    assert "Zone fully signed" in out, out
    calls = link.card_shim.calls()[before:]
    card_signs = [r for r in calls if r["fn"] in ("C_Sign", "C_SignFinal") and r["rv"] == "CKR_OK"]
    assert len(card_signs) >= 100, (len(card_signs), Counter((r["fn"], r["rv"]) for r in calls),
                                    Counter((r["fn"], r["rv"]) for r in link.signer.calls()))
    audit_verify(bind.audit_log)
    audit_verify(link.card_shim.audit_log)
    res = subprocess.run([sys.executable, "-m", "shim.cli", "audit", "join", "--json", str(bind.audit_log),
                          str(link.card_shim.audit_log)], capture_output=True, text=True, cwd=REPO)
    joined = json.loads(res.stdout)
    assert res.returncode == 0 and not joined["unexplained"], res.stdout + res.stderr
    matched = sum(len(p["matched"]) for p in joined["pairs"])
    assert matched == len(card_signs), (matched, len(card_signs))


#: The container: the socket's directory bind-mounted in first, then the card host's own
#: directories (its audit log, pcscd's socket, the card's state) covered, then the command.
_CONTAINER = """set -e
mount --bind "$1" "$2"; shift 2
n=$1; shift
while [ "$n" -gt 0 ]; do mount -t tmpfs -o mode=0700,size=64k sc4-not-in-container "$1"; shift; n=$((n-1)); done
exec "$@"
"""


def test_named_in_a_container_with_the_card_socket_bind_mounted(bind: Bind, link: Remote) -> None:
    """BIND 9.20 in a container on the card host: its own mount, pid and (empty) network
    namespaces, the Debian 13 root as its file system, and of the card only the server's socket
    directory, bind-mounted in. No ssh: dnssec-keyfromlabel and dnssec-signzone sign through the
    shim over p11-kit-client.so straight to `p11-kit server`. The card host's records name the
    container's process as the client of each connection, and `audit join` explains every
    signature."""
    card = link.card
    k = card.keys["ec"]
    work = bind.base / "container"
    sock_dir = work / "card-socket"  # where the container sees the card's socket directory
    for d in (work, sock_dir):
        d.mkdir(mode=0o700)
    audit_log = work / "named-audit.jsonl"
    hide = [str(link.card_host.dir), *link.signer_host.hide[1:]]  # the card host's dir, pcscd, the card
    root = Trixie(bind.trixie.root, [str(bind.base), str(sock_dir)])
    cnf = work / "openssl.cnf"
    cnf.write_text(bind.trixie.openssl_cnf(bind.shim.module))
    env = {"PATH": PATH, "OPENSSL_CONF": str(cnf), "SC4DNSSEC_BACKEND": bind.client,
           "SC4DNSSEC_AUDIT_LOG": str(audit_log), "P11_KIT_SERVER_ADDRESS": f"unix:path={sock_dir / 'card.sock'}"}

    def contained(cmd: list[str]) -> str:
        argv = ["unshare", "--mount", "--propagation", "private", "--pid", "--fork", "--net", "sh", "-c", _CONTAINER,
                "sh", str(Path(link.card_socket).parent), str(sock_dir), str(len(hide)), *hide,
                *root.argv(cmd, env, str(work))]
        res = subprocess.run(argv, capture_output=True, text=True, timeout=900, cwd=REPO)
        assert res.returncode == 0, f"{cmd[0]} in the container failed ({res.returncode}):\n{res.stdout}\n{res.stderr}"
        return res.stdout + res.stderr

    # The container sees the socket and nothing else of the card host: no pcscd, no network.
    seen = contained(["sh", "-c", f"ls {sock_dir}; ls -A {hide[0]} 2>/dev/null | wc -l; wc -l < /proc/net/dev"]
                     ).split()
    assert seen == ["card.sock", "0", "3"], seen  # the socket; an empty card host dir; lo only
    uri = f"pkcs11:token={quote(card.token_label, safe='')};object={quote(k.label, safe='')};pin-value={card.pin}"
    ksk = contained(["dnssec-keyfromlabel", "-l", uri, "-a", "ECDSAP256SHA256", "-f", "KSK", ORIGIN]
                    ).strip().splitlines()[-1]
    zone = work / "zone.db"
    write_zone(zone, 50)
    with zone.open("a") as f:
        f.write((work / f"{ksk}.key").read_text())
    before = len(link.card_shim.records())
    contained(["dnssec-signzone", "-n", "1", "-x", "-z", "-o", ORIGIN, "-k", ksk, "zone.db"])
    out = bind.run(["dnssec-verify", "-z", "-o", ORIGIN, str(work / "zone.db.signed")], work, False)
    assert "Zone fully signed" in out, out
    records = link.card_shim.records()[before:]
    signs = [r for r in records if r["kind"] == "call" and r["fn"] in ("C_Sign", "C_SignFinal")
             and r["rv"] == "CKR_OK"]
    assert len(signs) >= 50, len(signs)
    loads = {r["epoch"]: r["args"] for r in records if r["kind"] == "load"}
    signer_pids = {r["pid"] for r in _records(audit_log) if r["prog"] == "dnssec-signzone"}
    for epoch in {r["epoch"] for r in signs}:
        client = loads[epoch]["client"]
        # the peer is the signer itself (no ssh), seen from the card host's pid namespace
        assert client["comm"] == "dnssec-signzone" and client["uid"] == 0, client
        assert client["socket"] == link.card_socket and "tcp" not in client, client
        assert client["pid"] not in signer_pids, (client, signer_pids)  # the container's own pid differs
    audit_verify(audit_log)
    audit_verify(link.card_shim.audit_log)
    res = subprocess.run([sys.executable, "-m", "shim.cli", "audit", "join", "--json", str(audit_log),
                          str(link.card_shim.audit_log)], capture_output=True, text=True, cwd=REPO)
    joined = json.loads(res.stdout)
    pairs = [p for p in joined["pairs"] if p["signer"]["prog"] == "dnssec-signzone"]
    assert pairs and all(p["card"] and p["card"]["client"]["comm"] == "dnssec-signzone" for p in pairs), pairs
    assert sum(len(p["matched"]) for p in pairs) == len(signs), joined


def _records(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
