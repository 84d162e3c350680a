"""The online signer of the offline-KSK ceremony, started and checked: a named 9.20 that gets the
ZSK files, the KSK's public ``.key`` and the SKR (shim.ceremony.bind's online side), imports the
SKR with ``rndc skr -import`` and serves the zone; dig, dnssec-dsfromkey and dnssec-verify check
what it serves, and its own memory map shows it never loaded the provider, the shim or a card's
module.

Shared by tests/ceremony/test_offline_ksk.py (from a Debian 12 host, every tool in the Debian 13
root through :class:`~sc4testkit.trixie.Trixie`) and tests/ceremony/test_ceremony_bind.py (already
on Debian 13: :class:`HostTools`, the same ``run``/``popen`` on this host's own tools)."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from sc4testkit.trixie import Result, Trixie
from sc4testkit.zones import free_port, write_zone
from shim.ceremony import bind
from tests.bind.zones import Named, answer_rrsig_tags, dig

ZONE_NAMES = 20


class HostTools(Trixie):
    """:class:`Trixie`'s ``run``/``popen`` for a test that already runs where BIND 9.20 is: the
    tools on this host's PATH, with an environment that is exactly ``PATH``, ``HOME``, ``LANG``
    and what the caller passes (so no OPENSSL_CONF or SC4DNSSEC_* reaches named, dig or rndc)."""

    def __init__(self) -> None:
        super().__init__(root="/")

    def _env(self, env: Mapping[str, str] | None) -> dict[str, str]:
        base = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "HOME": "/root", "LANG": "C.UTF-8"}
        return {**base, **(env or {})}

    def run(
        self,
        cmd: Sequence[str | os.PathLike[str]],
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        check: bool = True,
        timeout: float = 600,
        input: str | None = None,
    ) -> Result:
        argv = [os.fspath(c) for c in cmd]
        start = time.monotonic()
        proc = subprocess.run(argv, env=self._env(env), cwd=cwd, capture_output=True, text=True, timeout=timeout,
                              input=input, check=False)
        res = Result(argv, proc.returncode, proc.stdout, proc.stderr, time.monotonic() - start)
        if check and proc.returncode != 0:
            raise AssertionError(res.explain())
        return res

    def popen(
        self,
        cmd: Sequence[str | os.PathLike[str]],
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        log: str | os.PathLike[str] | None = None,
    ) -> subprocess.Popen[bytes]:
        out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115
        try:
            return subprocess.Popen([os.fspath(c) for c in cmd], env=self._env(env), cwd=cwd, stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        finally:
            if log:
                out.close()  # type: ignore[union-attr]


def runner(tools: Trixie) -> bind.Runner:
    """shim.ceremony.bind's Runner over ``tools`` (for :func:`bind.import_skr`)."""

    def run(argv: Sequence[str], env: Mapping[str, str], cwd: Path) -> Result:
        return tools.run(argv, env=env, cwd=cwd, check=False, timeout=900)

    return run


def ds_lines(text: str) -> set[str]:
    """The DS records of dnssec-dsfromkey output, without owner, TTL and class."""
    return {" ".join(line.split()[3:]) for line in text.splitlines() if " DS " in line}


@dataclass(frozen=True)
class Served:
    """What the online named served, after every check of :func:`serve_and_check` passed."""

    dnskey: str  # dig +dnssec DNSKEY
    waited: float  # seconds from the SKR import to a signed DNSKEY answer
    zsk_tags: set[int]  # the key tags of the staged ZSKs (an A record is signed by one of them)


def serve_and_check(
    tools: Trixie,
    zone: str,
    schedule: bind.Schedule,
    ksk: bind.KskRef,
    key_workdir: Path,
    skr: Path,
    ds: Path,
    online: Path,
    not_loaded: Sequence[str],
) -> Served:
    """Stage the keys (the ZSK files of ``key_workdir/zsk`` and ``ksk``'s ``.key``), start named
    with shim.ceremony.bind's online configuration, import ``skr``, and check: the DNSKEY RRset is
    signed by the KSK, an A record by one of the staged ZSKs, the DS in ``ds`` matches the served
    KSK, ``dnssec-verify`` passes on an AXFR, named exits cleanly, and none of ``not_loaded`` (nor
    pkcs11, nor OpenSC) is in named's memory map."""
    keys = online / "keys"
    staged = bind.online_key_directory(zone, key_workdir, ksk, keys)
    assert ksk.key_file.name in {p.name for p in staged}, staged
    assert not (keys / ksk.private_file.name).exists(), "the KSK's .private (naming the card) was staged"
    zsk_files = {p.name for p in staged if p.suffix == ".private"}
    assert zsk_files, f"no ZSK .private in {key_workdir / 'zsk'}"
    write_zone(online / "zone.db", zone, ZONE_NAMES)
    tools.run(["rndc-confgen", "-a", "-c", online / "rndc.key", "-k", "rndc-key"])
    port, cport = free_port(), free_port()
    conf = online / "named.conf"
    conf.write_text(
        f"""include "{online}/rndc.key";
options {{
    directory "{online}";
    listen-on port {port} {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    pid-file "{online}/named.pid";
    recursion no;
    notify no;
    dnssec-validation no;
    allow-transfer {{ 127.0.0.1; }};
}};
controls {{ inet 127.0.0.1 port {cport} allow {{ 127.0.0.1; }} keys {{ "rndc-key"; }}; }};
{bind.online_named_conf(zone, online / "zone.db", keys, schedule)}"""
    )
    for text in [conf.read_text(), *(p.read_text() for p in staged)]:
        assert "pkcs11" not in text and not any(m in text for m in not_loaded), text[:2000]
    env = bind.ToolEnv(signing={}, runner=runner(tools))
    rndc = ["rndc", "-k", str(online / "rndc.key"), "-s", "127.0.0.1", "-p", str(cport)]
    with Named(tools, conf, {}, online / "named.log") as named:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if tools.run([*rndc, "status"], check=False).returncode == 0:
                break
            time.sleep(0.3)
        bind.import_skr(zone, skr, rndc, env, online)
        out, waited = named.wait_for(port, zone, "DNSKEY", "DNSKEY")
        assert ksk.tag in answer_rrsig_tags(out, "DNSKEY"), f"{out}\n{named.log_text()}"
        zsk_tags = {bind.KskRef("", keys / Path(n).stem).tag for n in zsk_files}
        a = dig(tools, port, f"host7.{zone}", "A")
        assert answer_rrsig_tags(a, "A") and set(answer_rrsig_tags(a, "A")) <= zsk_tags, a
        served_keys = online / "served.dnskey"
        served_keys.write_text(
            tools.run(["dig", "+noall", "+answer", "-p", str(port), "@127.0.0.1", zone, "DNSKEY"]).stdout
        )
        served_ds = tools.run(["dnssec-dsfromkey", "-a", "SHA-256", "-f", served_keys, zone]).stdout
        assert ds_lines(ds.read_text()) and ds_lines(ds.read_text()) <= ds_lines(served_ds), (
            f"exported DS does not match the served KSK:\n{ds.read_text()}\n{served_ds}"
        )
        axfr = online / "served.zone"
        axfr.write_text(tools.run(["dig", "+noall", "+answer", "-p", str(port), "@127.0.0.1", zone, "AXFR"]).stdout)
        maps = Path(f"/proc/{named.proc.pid}/maps").read_text()
        rc = named.stop()
    assert rc == 0, f"named exited {rc} on SIGTERM:\n{named.log_text()}"
    res = tools.run(["dnssec-verify", "-o", zone, axfr], check=False)
    assert res.returncode == 0 and "Zone fully signed" in res.stdout + res.stderr, res.explain()
    # the maps are named's own (its libdns is in them), and name no provider, shim or card module
    assert "/libdns" in maps, maps[:2000]
    assert "pkcs11" not in maps and "opensc" not in maps and not any(m in maps for m in not_loaded), maps
    return Served(out, waited, zsk_tags)
