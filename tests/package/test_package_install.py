"""The Debian package: its checks can fail, and it installs, upgrades and purges cleanly.

Every install goes into a throwaway overlay of the Debian 13 root (see conftest.py), the way an
operator installs it: ``apt-get install ./smartcards4dnssec_<version>_<arch>.deb``.
"""

from __future__ import annotations

import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from .conftest import CI_PACKAGE, DROPIN, PACKAGE, Overlay, systemd_command, systemd_environment, upper_dir

pytestmark = pytest.mark.package

MODULE = "/usr/lib/smartcards4dnssec/shim/libsc4dnssec.so"
CONF = "/etc/sc4dnssec/sc4dnssec.toml"
OPENSSL_CNF = "/etc/sc4dnssec/openssl.cnf"
SNIPPET = "/etc/apparmor.d/abstractions/sc4dnssec-named"
POLKIT = "/usr/share/polkit-1/rules.d/50-smartcards4dnssec-pcscd.rules"
AUDIT_DIR = "/var/log/sc4dnssec"
AUDIT_LOG = f"{AUDIT_DIR}/audit.jsonl"

# What apt and dpkg write for any install, and never a trace of the package itself.
BOOKKEEPING = ("var/lib/dpkg/", "var/lib/apt/", "var/cache/", "var/log/apt/", "var/log/dpkg.log", "tmp/")


def _ci_package(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CI_PACKAGE), *args], capture_output=True, text=True, timeout=600)


def test_ci_checks_reject_a_broken_apparmor_snippet_and_dropin(deb: Path, tmp_path: Path) -> None:
    """`ci/package check-*` pass on what the package ships and fail on a broken copy of it."""
    tree = tmp_path / "tree"
    subprocess.run(["dpkg-deb", "-x", str(deb), str(tree)], check=True)
    for check in ("check-apparmor", "check-systemd"):
        res = _ci_package(check, str(tree))
        assert res.returncode == 0, f"ci/package {check} fails on the package itself:\n{res.stderr}"
    bad = tmp_path / "bad"
    shutil.copytree(tree, bad, symlinks=True)
    with (bad / SNIPPET.lstrip("/")).open("a") as f:
        f.write("  /var/log/sc4dnssec/** rwz,\n")
    dropin = bad / DROPIN.lstrip("/")
    dropin.write_text(dropin.read_text().replace("Environment=SC4DNSSEC", "Enviroment=SC4DNSSEC"))
    res = _ci_package("check-apparmor", str(bad))
    assert res.returncode != 0 and "sc4dnssec-named" in res.stderr, res.stderr
    res = _ci_package("check-systemd", str(bad))
    assert res.returncode != 0 and "Enviroment" in res.stderr, res.stderr


def _bumped(root: Overlay, deb: Path, version: str) -> Path:
    """The same package under a higher version (dpkg-deb -R / -b in the root): the upgrade path."""
    work = root.path("/tmp/bump")
    work.mkdir()
    shutil.copy(deb, work / deb.name)
    root.run(["dpkg-deb", "-R", f"/tmp/bump/{deb.name}", "/tmp/bump/tree"])
    control = work / "tree" / "DEBIAN" / "control"
    lines = [f"Version: {version}" if ln.startswith("Version:") else ln for ln in control.read_text().splitlines()]
    control.write_text("\n".join(lines) + "\n")
    out = f"/tmp/bump/{PACKAGE}_{version}_amd64.deb"
    root.run(["dpkg-deb", "--root-owner-group", "-b", "/tmp/bump/tree", out])
    return root.path(out)


def _residue(root: Overlay) -> list[str]:
    """Files the overlay holds beyond the shared root, apart from apt/dpkg bookkeeping."""
    upper = upper_dir(root)
    out = []
    for p in sorted(upper.rglob("*")):
        rel = str(p.relative_to(upper))
        if p.is_dir() and not p.is_symlink() or rel.startswith(BOOKKEEPING):
            continue
        out.append(rel)
    return out


def test_install_upgrade_purge_in_a_fresh_debian13_root(fresh_root: Overlay, deb: Path) -> None:
    root = fresh_root
    root.install(deb)
    status = root.run(["dpkg-query", "-W", "-f", "${db:Status-Abbrev} ${Version}", PACKAGE]).stdout
    assert status.startswith("ii "), status

    # The module and the commands.
    assert root.run(["sc4dnssec", "module-path"]).stdout.strip() == MODULE
    assert root.path(MODULE).is_file()
    assert "usage: virtualcard" in root.run(["virtualcard", "--help"]).stdout
    assert f"pkcs11-module-path = {MODULE}" in root.path(OPENSSL_CNF).read_text()

    # Conffiles: the commented TOML the shim accepts, and the scoped openssl.cnf.
    conffiles = root.run(["dpkg-query", "-W", "-f", "${Conffiles}", PACKAGE]).stdout
    assert CONF in conffiles and OPENSSL_CNF in conffiles, conffiles
    conf = tomllib.loads(root.path(CONF).read_text())
    assert root.path(conf["backend"]).is_file(), f"the conffile's backend {conf['backend']} is not installed"
    assert conf["audit"]["path"] == AUDIT_LOG
    checked = root.run(
        [
            "python3",
            "-c",
            "import sys; sys.path.insert(0, '/usr/lib/smartcards4dnssec'); from shim import config; "
            "c = config.load(); print(c.backend, c.audit_path, c.audit_on_failure)",
        ],
        env={"SC4DNSSEC_CONF": CONF},
    ).stdout.split()
    assert checked == [conf["backend"], AUDIT_LOG, "fail-closed"], checked
    res = root.run(["sc4dnssec", "config", "check", CONF], check=False)
    assert res.returncode == 0 and res.stdout.strip() == f"{CONF}: OK", res.explain()

    # named's integration, where systemd, AppArmor and polkit look for it.
    dropin = root.path(DROPIN).read_text()
    env = systemd_environment(dropin)
    assert env == {"OPENSSL_CONF": OPENSSL_CNF, "SC4DNSSEC_CONF": CONF}, env
    assert systemd_command(dropin, "ExecReload") == ["/usr/bin/env", "-u", "OPENSSL_CONF", "/usr/sbin/rndc", "reload"]
    assert "include <abstractions/sc4dnssec-named>" in root.path(SNIPPET).read_text()
    polkit = root.path(POLKIT).read_text()
    assert "org.debian.pcsc-lite.access_pcsc" in polkit and 'subject.user == "bind"' in polkit

    # The audit log: bind appends, nobody else writes.
    assert root.stat(AUDIT_DIR) == "bind:bind 750"
    assert root.stat(AUDIT_LOG) == "bind:bind 640"

    # Upgrade to a higher version: the operator's edit of a conffile and the audit log survive.
    edited = root.path(CONF).read_text().replace('fsync = "none"', 'fsync = "always"')
    root.path(CONF).write_text(edited)
    root.path(AUDIT_LOG).write_text('{"an": "audit record"}\n')
    bumped = _bumped(root, deb, "0.1.0+upgrade1")
    root.install(bumped)
    status = root.run(["dpkg-query", "-W", "-f", "${db:Status-Abbrev} ${Version}", PACKAGE]).stdout
    assert status == "ii  0.1.0+upgrade1", status
    assert root.path(CONF).read_text() == edited
    assert root.path(AUDIT_LOG).read_text() == '{"an": "audit record"}\n'
    assert root.stat(AUDIT_DIR) == "bind:bind 750"

    # Purge: everything goes but the audit logs.
    assert "usr/bin/sc4dnssec" in _residue(root)  # what the overlay shows of an installed package
    res = root.run(["apt-get", "purge", "-y", PACKAGE], env={"DEBIAN_FRONTEND": "noninteractive"}, check=False)
    assert res.returncode == 0, res.explain()
    assert "warning" not in (res.stdout + res.stderr).lower(), res.explain()
    status = root.run(["dpkg-query", "-W", "-f", "${db:Status-Abbrev}", PACKAGE], check=False).stdout
    assert status.strip() in ("", "un"), status
    for gone in (MODULE, CONF, OPENSSL_CNF, DROPIN, SNIPPET, POLKIT, "/usr/bin/sc4dnssec", "/etc/sc4dnssec"):
        assert not root.path(gone).exists(), f"{gone} survived the purge"
    assert root.path(AUDIT_LOG).read_text() == '{"an": "audit record"}\n'
    left = [r for r in _residue(root) if not r.startswith("var/log/sc4dnssec/")]
    assert not left, f"the purge left files behind: {left}"


POLKIT_CHECK = r"""
mkdir -p /run/dbus
dbus-daemon --system --fork --print-pid >/run/sc4-dbus.pid
polkitd=
trap 'kill $polkitd "$(cat /run/sc4-dbus.pid)" 2>/dev/null' EXIT
check() {
    /usr/lib/polkit-1/polkitd --no-debug >>/tmp/polkitd.log 2>&1 &
    polkitd=$!
    tries=0
    until dbus-send --system --print-reply --dest=org.freedesktop.DBus / org.freedesktop.DBus.NameHasOwner \
            string:org.freedesktop.PolicyKit1 2>/dev/null | grep -q 'boolean true'; do
        tries=$((tries + 1)); [ "$tries" -lt 300 ] || { echo "polkitd did not register on the bus" >&2; exit 1; }
        sleep 0.1
    done
    for user in bind nobody; do
        for action in access_pcsc access_card; do
            runuser -u "$user" -- sh -c 'pkcheck --action-id "$1" --process $$ >/dev/null 2>&1; echo $?' \
                sh "org.debian.pcsc-lite.$action" | sed "s/^/$1 $user $action /"
        done
    done
    kill "$polkitd"
    wait "$polkitd" 2>/dev/null || true
    polkitd=
}
check with-rule
mv "$0" /tmp/rule.off
check without-rule
mv /tmp/rule.off "$0"
"""


def test_polkit_rule_lets_bind_and_nobody_else_reach_pcscd(fresh_root: Overlay, deb: Path) -> None:
    """Debian 13's polkitd with pcscd's actions: the package's rule admits user bind, and it is the
    rule that does (without it bind is refused too). Installs polkitd and pcscd from the mirror."""
    root = fresh_root
    root.install(deb, "polkitd", "pcscd", "dbus-daemon")
    res = root.run(["sh", "-c", POLKIT_CHECK, POLKIT], timeout=120, check=False)
    verdicts = {tuple(line.split()[:3]): line.split()[3] for line in res.stdout.splitlines() if len(line.split()) == 4}
    log = f"{res.explain()}\n{root.path('/tmp/polkitd.log').read_text(errors='replace')[-2000:]}"
    for action in ("access_pcsc", "access_card"):
        assert verdicts.get(("with-rule", "bind", action)) == "0", log
        assert verdicts.get(("with-rule", "nobody", action)) not in (None, "0"), log
        assert verdicts.get(("without-rule", "bind", action)) not in (None, "0"), log
