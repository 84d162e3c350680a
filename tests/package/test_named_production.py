"""named in production, from the package, in a throwaway Debian 13 root (issue 19, part 3).

named starts the way Debian's named.service starts it: the unit's ExecStart with /etc/default/named's
$OPTIONS (`/usr/sbin/named -f -u bind`), in the environment the package's drop-in sets (both read
from the installed files, never restated here). The only addition is PCSCLITE_CSOCK_NAME, which
points the card reader library at the virtual card's private pcscd on the host.

(a) dnssec-policy with the KSK on the virtual PIV card (imported with dnssec-keyfromlabel as user
bind) and a software ZSK; then the card is pulled and put back while named serves; then named is
restarted. (b) the TOML's backend switched to SoftHSM and a key-store KSK that named generates on
the token. The tests run in file order on one named; each says what it needs from the ones before.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import pytest

from sc4testkit.trixie import Trixie, stop
from sc4testkit.zones import free_port, write_zone
from tests.bind.conftest import _card_up, _virtualcard_cmd
from tests.bind.zones import answer_rrsig_tags, dig, key_tag

from .conftest import DROPIN, NAMED_UNIT, Overlay, overlay_root, systemd_command, systemd_environment

pytestmark = pytest.mark.package

ZONE = "example.test"
KS_ZONE = "keystore.test"
KEYS = "/var/lib/bind/keys"
CARD_PIN = "/etc/sc4dnssec/card.pin"
SOFTHSM_PIN = "/etc/sc4dnssec/softhsm.pin"
AUDIT_LOG = "/var/log/sc4dnssec/audit.jsonl"
NAMED_LOG = "/var/log/named/named.log"
CONF = "/etc/sc4dnssec/sc4dnssec.toml"


@dataclass
class Production:
    root: Overlay
    card_state: Path
    card: dict[str, str]
    port: int
    control_port: int
    service_env: dict[str, str]  # the drop-in's Environment=
    named_cmd: list[str]  # named.service's ExecStart with $OPTIONS
    reload_cmd: list[str]  # the drop-in's ExecReload
    ksk: str = ""
    named: subprocess.Popen[bytes] | None = None
    starts: int = 0
    state: dict[str, object] = field(default_factory=dict)
    card_out: bool = False

    @property
    def env(self) -> dict[str, str]:
        return {**self.service_env, "PCSCLITE_CSOCK_NAME": self.card["PCSCLITE_CSOCK_NAME"]}

    def as_bind(self, cmd: list[str], check: bool = True, signing: bool = True):
        return self.root.run(self.root.as_user("bind", cmd), env=self.env if signing else {}, check=check)

    def start(self) -> None:
        self.starts += 1
        log = self.root.path(f"/var/log/named/stderr.{self.starts}")
        self.root.run(["named-checkconf"])
        self.named = self.root.popen(self.named_cmd, env=self.env, log=log)

    def stop(self) -> int:
        assert self.named is not None
        rc = stop(self.named, timeout=30)
        self.named = None
        return rc

    def log(self) -> str:
        p = self.root.path(NAMED_LOG)
        return p.read_text(errors="replace") if p.exists() else ""

    def stderr(self) -> str:
        p = self.root.path(f"/var/log/named/stderr.{self.starts}")
        return p.read_text(errors="replace")[-3000:] if p.exists() else ""

    def dig(self, name: str, rtype: str) -> str:
        return dig(self.root, self.port, name, rtype)

    def wait_signed(self, name: str, tag: int | None = None, timeout: float = 90, rtype: str = "DNSKEY") -> str:
        """Polls dig until the RTYPE answer carries an RRSIG (by TAG, if given): inline signing
        answers REFUSED, then unsigned, for its first seconds."""
        deadline = time.monotonic() + timeout
        out = ""
        while time.monotonic() < deadline:
            assert self.named is not None and self.named.poll() is None, (
                f"named exited ({None if self.named is None else self.named.returncode}):\n"
                f"{self.stderr()}\n{self.log()[-4000:]}"
            )
            out = self.dig(name, rtype)
            tags = answer_rrsig_tags(out, rtype)
            if tags and (tag is None or tag in tags):
                return out
            time.sleep(0.5)
        raise AssertionError(f"no signed {rtype} for {name} after {timeout} s:\n{out}\n{self.log()[-4000:]}")

    def rndc(self, *args: str, env: dict[str, str] | None = None, check: bool = True):
        return self.root.run(["rndc", *args], env=env or {}, check=check, timeout=60)

    def audit(self) -> list[dict[str, object]]:
        out = self.root.run(["sc4dnssec", "audit", "show", "--json", AUDIT_LOG]).stdout.strip()
        if out.startswith("["):
            return list(json.loads(out))
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def card_cli(self, *args: str) -> None:
        subprocess.run([*_virtualcard_cmd(), *args, str(self.card_state)], check=True, timeout=120)


def _named_command(root: Overlay) -> list[str]:
    """named.service's ExecStart, with $OPTIONS from its EnvironmentFile (/etc/default/named)."""
    unit = root.path(NAMED_UNIT).read_text()
    start = systemd_command(unit, "ExecStart")
    assert start, unit
    m = re.search(r"^EnvironmentFile=-?(\S+)", unit, re.M)
    assert m, unit
    options = root.run(["sh", "-c", f'. {m.group(1)} && printf %s "$OPTIONS"']).stdout
    cmd: list[str] = []
    for word in start:
        cmd += shlex.split(options) if word == "$OPTIONS" else [word]
    return cmd


def _write(root: Overlay, path: str, text: str, owner: str = "root:bind", mode: str = "640") -> None:
    root.path(path).write_text(text)
    root.run(["chown", owner, path])
    root.run(["chmod", mode, path])


def _named_conf(p: Production, local: str) -> None:
    root = p.root
    _write(
        root,
        "/etc/bind/named.conf.options",
        f"""options {{
    directory "/var/cache/bind";
    listen-on port {p.port} {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    recursion no;
    notify no;
    dnssec-validation no;
}};
include "/etc/bind/rndc.key";
controls {{ inet 127.0.0.1 port {p.control_port} allow {{ 127.0.0.1; }} keys {{ "rndc-key"; }}; }};
logging {{
    channel sc4 {{ file "{NAMED_LOG}"; severity info; print-time yes; print-category yes; print-severity yes; }};
    category default {{ sc4; }};
}};
""",
    )
    _write(root, "/etc/bind/named.conf.local", local)


CARD_POLICY = f"""
dnssec-policy "card" {{
    keys {{
        ksk key-directory lifetime unlimited algorithm ecdsap256sha256;
        zsk key-directory lifetime unlimited algorithm ecdsap256sha256;
    }};
}};
zone "{ZONE}" {{
    type primary;
    file "/var/lib/bind/{ZONE}.db";
    dnssec-policy "card";
    inline-signing yes;
    key-directory "{KEYS}";
}};
"""


@pytest.fixture(scope="module")
def production(shared_root: Trixie, deb: Path) -> Iterator[Production]:
    with overlay_root(shared_root) as root:
        root.install(deb)
        # The card's state (and its pcscd socket) where user bind can reach the socket.
        base = Path(tempfile.mkdtemp(prefix="sc4pkg-card-"))
        os.chmod(base, 0o755)
        state = base / "card"
        _cmd, card = _card_up(state, None)
        try:
            p = Production(
                root,
                state,
                card,
                free_port(),
                free_port(),
                systemd_environment(root.path(DROPIN).read_text()),
                _named_command(root),
                systemd_command(root.path(DROPIN).read_text(), "ExecReload") or [],
            )
            sock_dir = Path(card["PCSCLITE_CSOCK_NAME"]).parent
            for d in [*reversed(sock_dir.relative_to(base).parents), sock_dir.relative_to(base)]:
                os.chmod(base / d, os.stat(base / d).st_mode | 0o055)
            # The operator's steps (docs/debian.md): the PIN file, the key directory, named's log.
            _write(root, CARD_PIN, card["VIRTUALCARD_PIN"])
            root.run(["install", "-d", "-o", "bind", "-g", "bind", "-m", "750", KEYS, "/var/log/named"])
            # rndc, like every BIND tool, must not see OPENSSL_CONF; it finds named's control port here.
            _write(
                root,
                "/etc/bind/rndc.conf",
                f'include "/etc/bind/rndc.key";\noptions {{ default-key "rndc-key"; '
                f"default-server 127.0.0.1; default-port {p.control_port}; }};\n",
            )
            write_zone(root.path(f"/var/lib/bind/{ZONE}.db"), ZONE, 30)
            root.run(["chown", "bind:bind", f"/var/lib/bind/{ZONE}.db"])
            label = quote(card["VIRTUALCARD_EC_LABEL"], safe="")
            uri = f"pkcs11:token={card['VIRTUALCARD_TOKEN_LABEL']};object={label};pin-source={CARD_PIN}"
            res = p.as_bind(["dnssec-keyfromlabel", "-K", KEYS, "-l", uri, "-a", "ECDSAP256SHA256", "-f", "KSK", ZONE])
            p.ksk = res.stdout.strip().splitlines()[-1]
            _named_conf(p, CARD_POLICY)
            p.start()
            yield p
        finally:
            if "p" in locals() and p.named is not None:
                p.stop()
            subprocess.run([*_virtualcard_cmd(), "down", str(state)], capture_output=True, timeout=120)
            subprocess.run(["rm", "-rf", "--one-file-system", str(base)], capture_output=True)


def _bind_uid(root: Overlay) -> int:
    return int(root.run(["id", "-u", "bind"]).stdout)


def _ksk_privates(root: Overlay) -> dict[str, str]:
    out = {}
    for state in root.path(KEYS).glob("K*.state"):
        if "KSK: yes" in state.read_text():
            out[state.stem] = state.with_suffix(".private").read_text()
    return out


def _card_signs(records: list[dict[str, object]], rv: str | None = "CKR_OK") -> list[dict[str, object]]:
    """Signatures the card made (C_Sign, or C_SignFinal when the provider signs multi-part)."""
    return [
        r
        for r in records
        if r.get("fn") in ("C_Sign", "C_SignFinal") and r.get("src") == "card" and (rv is None or r.get("rv") == rv)
    ]


def test_named_as_bind_serves_dnskey_signed_by_the_card_key(production: Production) -> None:
    p = production
    assert p.named_cmd[:3] == ["/usr/sbin/named", "-f", "-u"] and p.named_cmd[3] == "bind", p.named_cmd
    out = p.wait_signed(ZONE, key_tag(p.ksk))
    assert answer_rrsig_tags(out, "DNSKEY") == [key_tag(p.ksk)], out
    assert _named_uid(p) == _bind_uid(p.root), "named did not drop to bind"
    a = p.wait_signed(f"host7.{ZONE}", rtype="A")
    (zsk_tag,) = answer_rrsig_tags(a, "A")
    assert zsk_tag != key_tag(p.ksk)
    ksks = _ksk_privates(p.root)
    assert list(ksks) == [p.ksk], f"named made another KSK: {list(ksks)}"
    assert "Label:" in ksks[p.ksk] and "PrivateKey:" not in ksks[p.ksk]


def test_probe_as_bind_accepts_the_card_for_bind920(production: Production) -> None:
    """The operator's first command, on the installed package's configuration, as named's user, in
    named's environment: its OPENSSL_CONF must not load the provider (and the shim) into the CLI
    or the probe's child, whose first ``import hashlib`` would otherwise start the shim in the
    middle of importing it."""
    p = production
    assert "OPENSSL_CONF" in p.env, "the drop-in's environment no longer names the provider's config"
    res = p.root.run(
        ["sc4dnssec", "probe", "--user", "bind", "--for", "bind920", "--pin-source", CARD_PIN, "--key-dir", KEYS],
        env=p.env,
        check=False,
        timeout=300,
    )
    assert res.returncode == 0, res.explain()
    assert "embedded Python failed to start" not in res.stdout + res.stderr, res.explain()


def _named_uid(p: Production) -> int:
    assert p.named is not None
    m = re.search(r"^Uid:\s+(\d+)\s+(\d+)\s+(\d+)", Path(f"/proc/{p.named.pid}/status").read_text(), re.M)
    assert m and len(set(m.groups())) == 1, m
    return int(m.group(1))


def _now() -> str:
    """The audit records' timestamp format (UTC, microseconds, Z), which sorts as text."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_audit_log_written_by_named_after_it_drops_to_bind_and_verifies(production: Production) -> None:
    """named opens the log as root (the provider loads before the drop) and keeps appending as bind."""
    p = production
    p.wait_signed(ZONE, key_tag(p.ksk))
    assert p.named is not None and _named_uid(p) == _bind_uid(p.root), "named did not drop to bind"
    since = _now()
    p.rndc("sign", ZONE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        fresh = [r for r in _card_signs(p.audit()) if r.get("pid") == p.named.pid and str(r["ts"]) > since]
        if fresh:
            break
        time.sleep(0.5)
    assert fresh, f"named, running as bind, wrote no card signature record after {since}"
    assert _named_uid(p) == _bind_uid(p.root)
    verdict = p.root.run(["sc4dnssec", "audit", "verify", AUDIT_LOG], check=False)
    assert verdict.returncode == 0, verdict.explain()
    assert p.root.stat(AUDIT_LOG) == "bind:bind 640"


def test_rndc_reload_and_loadkeys_with_the_dropins_commands(production: Production) -> None:
    p = production
    p.wait_signed(ZONE, key_tag(p.ksk))
    # systemd runs ExecReload with the service's environment; the drop-in's command drops
    # OPENSSL_CONF, so rndc (which needs no key) neither loads the provider nor opens the card.
    assert p.reload_cmd, "the drop-in sets no ExecReload"
    rndc_records = len([r for r in p.audit() if r.get("prog") == "rndc"])
    res = p.root.run(p.reload_cmd, env=p.service_env, check=False, timeout=60)
    assert res.returncode == 0 and "reload successful" in res.stdout, res.explain()
    assert len([r for r in p.audit() if r.get("prog") == "rndc"]) == rndc_records
    # The plain command would: with OPENSSL_CONF it goes through the shim to the card.
    bare = p.rndc("status", env=p.service_env, check=False)
    assert len([r for r in p.audit() if r.get("prog") == "rndc"]) > rndc_records, bare.explain()
    res = p.rndc("loadkeys", ZONE)
    assert res.returncode == 0, res.explain()
    p.wait_signed(ZONE, key_tag(p.ksk))


def _dnskey_rrsig(out: str) -> str:
    for line in out.splitlines():
        f = line.split()
        if len(f) > 10 and f[3] == "RRSIG" and f[4] == "DNSKEY":
            return " ".join(f[11:])
    return ""


def _calls(records: list[dict[str, object]]) -> str:
    return "\n".join(
        f"{r.get('seq')} {r.get('prog')} {r.get('fn')} {r.get('rv')} {r.get('src')} {r.get('args')}" for r in records
    )


def _wait_log(p: Production, offset: int, pattern: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        new = p.log()[offset:]
        if re.search(pattern, new):
            return new
        time.sleep(0.5)
    raise AssertionError(f"named's log shows no /{pattern}/ after {timeout} s:\n{p.log()[offset:][-4000:]}")


def _no_software_key(p: Production) -> None:
    """The DNSKEY RRset is signed by the card key alone, and no KSK with key material appeared."""
    out = p.dig(ZONE, "DNSKEY")
    assert answer_rrsig_tags(out, "DNSKEY") == [key_tag(p.ksk)], f"named stopped answering, or signs otherwise:\n{out}"
    ksks = _ksk_privates(p.root)
    assert list(ksks) == [p.ksk] and "PrivateKey:" not in ksks[p.ksk], f"another KSK appeared: {list(ksks)}"


def test_card_pulled_named_answers_and_a_forced_resign_fails_loudly(production: Production) -> None:
    p = production
    p.state["rrsig"] = _dnskey_rrsig(p.wait_signed(ZONE, key_tag(p.ksk)))
    p.state["signs"] = len(_card_signs(p.audit()))
    p.state["records"] = len(p.audit())
    p.card_cli("remove")
    p.card_out = True
    _no_software_key(p)
    offset = len(p.log())
    p.rndc("sign", ZONE)
    failed = _wait_log(p, offset, r"zone_rekey failure")
    assert re.search(
        rf"error reading K{re.escape(ZONE)}\.\+013\+{key_tag(p.ksk):05d}\.private: crypto failure", failed
    ), failed
    since = [r for r in p.audit()[p.state["records"] :] if r.get("prog") == "named"]
    gone = {"CKR_DEVICE_REMOVED", "CKR_TOKEN_NOT_PRESENT", "CKR_SESSION_HANDLE_INVALID"}
    assert any(r["rv"] in gone for r in since), _calls(since[-30:])
    _no_software_key(p)
    assert len(_card_signs(p.audit())) == p.state["signs"], "a signature while the card was out"


def test_card_reinserted_a_forced_resign_succeeds(production: Production) -> None:
    p = production
    assert p.card_out, "needs the card pulled by the test before"
    p.card_cli("insert")
    p.card_out = False
    offset = len(p.log())
    deadline = time.monotonic() + 30
    while len(_card_signs(p.audit())) == p.state["signs"] and time.monotonic() < deadline:
        p.rndc("sign", ZONE)
        time.sleep(3)
    assert len(_card_signs(p.audit())) > p.state["signs"], (
        f"no card signature after re-insertion:\n{p.log()[offset:][-2000:]}\n{_calls(p.audit()[-15:])}"
    )
    after = p.wait_signed(ZONE, key_tag(p.ksk))
    assert _dnskey_rrsig(after) != p.state["rrsig"], "the DNSKEY RRSIG was not made again"
    _no_software_key(p)


def test_restart_continues_the_audit_chain_under_a_new_epoch(production: Production) -> None:
    """A new named process: a new epoch, chained to the last record of the old one; and it signs
    with the card again (a fresh C_Initialize finds the re-inserted card)."""
    p = production
    if p.card_out:
        p.card_cli("insert")
        p.card_out = False
    p.wait_signed(ZONE, key_tag(p.ksk))
    assert p.stop() == 0, f"named exited non-zero on SIGTERM:\n{p.stderr()}"
    first = p.audit()
    old_epochs = {r["epoch"] for r in first if r.get("prog") == "named"}
    p.start()
    p.wait_signed(ZONE, key_tag(p.ksk))
    records = p.audit()
    verdict = p.root.run(["sc4dnssec", "audit", "verify", AUDIT_LOG], check=False)
    assert verdict.returncode == 0, verdict.explain()
    new = records[len(first) :]
    assert new and new[0]["seq"] == first[-1]["seq"] + 1, "the chain did not continue"
    new_epochs = {r["epoch"] for r in new if r.get("prog") == "named"}
    assert new_epochs and not new_epochs & old_epochs, (old_epochs, new_epochs)
    p.rndc("sign", ZONE)
    deadline = time.monotonic() + 60
    while not _card_signs([r for r in p.audit()[len(first) :] if r.get("prog") == "named"]):
        assert time.monotonic() < deadline, f"the new named made no card signature:\n{p.log()[-3000:]}"
        time.sleep(0.5)
    _no_software_key(p)


def test_keystore_ksk_generated_on_softhsm(production: Production) -> None:
    """(b): the operator points the shim at SoftHSM; named generates the KSK on the token."""
    p = production
    root = p.root
    if p.named is not None:
        assert p.stop() == 0
    softhsm = root.find_lib("libsofthsm2.so")
    conf = root.path(CONF).read_text()
    root.path(CONF).write_text(re.sub(r'(?m)^backend = ".*"$', f'backend = "{softhsm}"', conf))
    root.run(["adduser", "--quiet", "bind", "softhsm"])
    p.as_bind(
        ["softhsm2-util", "--init-token", "--free", "--label", "sc4ks", "--pin", "1234", "--so-pin", "5678"],
        signing=False,
    )
    _write(root, SOFTHSM_PIN, "1234")
    write_zone(root.path(f"/var/lib/bind/{KS_ZONE}.db"), KS_ZONE, 30)
    root.run(["chown", "bind:bind", f"/var/lib/bind/{KS_ZONE}.db"])
    _named_conf(
        p,
        f"""
key-store "hsm" {{
    directory "{KEYS}";
    pkcs11-uri "pkcs11:token=sc4ks;pin-source={SOFTHSM_PIN}";
}};
dnssec-policy "hsm" {{
    keys {{
        ksk key-store "hsm" lifetime unlimited algorithm ecdsap256sha256;
        zsk lifetime unlimited algorithm ecdsap256sha256;
    }};
}};
zone "{KS_ZONE}" {{
    type primary;
    file "/var/lib/bind/{KS_ZONE}.db";
    dnssec-policy "hsm";
    inline-signing yes;
    key-directory "{KEYS}";
}};
""",
    )
    p.start()
    out = p.wait_signed(KS_ZONE)
    ksks = {k: v for k, v in _ksk_privates(root).items() if KS_ZONE in k}
    assert len(ksks) == 1, ksks
    ((base, private),) = ksks.items()
    m = re.search(r"^Label: (\S+)$", private, re.M)
    assert m and "PrivateKey:" not in private, private
    uri = base64.b64decode(m.group(1)).rstrip(b"\0").decode()
    assert uri.startswith("pkcs11:token=sc4ks;") and "pin-value" not in uri, uri
    assert key_tag(base) in answer_rrsig_tags(out, "DNSKEY"), out
    objects = p.as_bind(
        ["pkcs11-tool", "--module", softhsm, "--token-label", "sc4ks", "--login", "--pin", "1234", "-O"], signing=False
    ).stdout
    label = re.search(r"object=([^;]+)", uri)
    assert label and "-ksk-" in label.group(1) and f"label:      {label.group(1)}" in objects, (uri, objects)
    generated = [r for r in p.audit() if r.get("fn") == "C_GenerateKeyPair" and r.get("prog") == "named"]
    assert generated and generated[-1]["rv"] == "CKR_OK", generated
    verdict = root.run(["sc4dnssec", "audit", "verify", AUDIT_LOG], check=False)
    assert verdict.returncode == 0, verdict.explain()
