"""OpenDNSSEC 2.1 through the shim: enforcer + signer, ods-signer sign (docs/opendnssec.md).

Both daemons open the token (ods-enforcerd makes and looks up keys, ods-signerd signs), so both
get the shim's environment. OpenDNSSEC insists on /etc/opendnssec, /run/opendnssec and
/var/lib/opendnssec: the test gives it its own in a private mount namespace, and its own listener
port. The signer serves the signed zone by AXFR (its DNS output adapter); the transfer is judged
by ldns-verify-zone. Where the token can generate, the enforcer makes the keys; on the PIV card
(which cannot) ``<ManualKeyGeneration/>`` and ``ods-enforcer key import`` adopt the card's key.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sc4testkit.zones import free_port

from .conftest import (
    BASE_PATH,
    ORIGIN,
    Bench,
    Served,
    answer,
    dig,
    dnskey_tags,
    require,
    rrsig_tags,
    stop,
    verify_ldns,
    wait_for,
    write_zone,
)

pytestmark = pytest.mark.signers

SOFT_PIN = "1234"
SOFT_ZSK_ID = "5a534b"
ODS_DIRS = {"etc": "/etc/opendnssec", "run": "/run/opendnssec", "var": "/var/lib/opendnssec"}


def os_release() -> dict[str, str]:
    out = {}
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            k, _, v = line.partition("=")
            out[k] = v.strip('"')
    except OSError:
        pass
    return out


def require_opendnssec() -> None:
    """OpenDNSSEC exists on Debian 12 only: skip, saying why, where the distribution has no package."""
    if shutil.which("ods-enforcerd", path=BASE_PATH) is None:
        rel = os_release()
        if rel.get("ID") == "debian" and rel.get("VERSION_ID", "0").isdigit() and int(rel["VERSION_ID"]) >= 13:
            pytest.skip(
                f"OpenDNSSEC: Debian {rel['VERSION_ID']} has no opendnssec package (last in Debian 12); "
                "this test runs on Debian 12"
            )
    require("ods-enforcerd", "ods-signerd", "ods-enforcer", "ods-signer", "ods-enforcer-db-setup", "nsenter",
            "unshare", "dig", "ldns-verify-zone")


class Namespace:
    """A private mount namespace held open by a sleeping process; commands enter it with nsenter."""

    def __init__(self, bench: Bench) -> None:
        self.holder = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sleep", "infinity"], start_new_session=True
        )
        self.prefix = ["nsenter", "-t", str(self.holder.pid), "-m", "--"]
        # the holder has to be in its namespace before anything enters it
        wait_for(lambda: os.readlink(f"/proc/{self.holder.pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt"),
                 "the mount namespace", timeout=10, interval=0.05)
        for name, target in ODS_DIRS.items():
            subprocess.run([*self.prefix, "mkdir", "-p", target], check=True)
            subprocess.run([*self.prefix, "mount", "--bind", str(bench.work / name), target], check=True)

    def close(self) -> None:
        stop(self.holder)  # type: ignore[arg-type]


def conf_xml(bench: Bench, port: int, manual: bool, soft: tuple[str, str] | None) -> str:
    """``soft``: (module, token label) of a second repository, SoftHSM without the shim, for the
    ZSK next to a card that holds one key per algorithm."""
    repo2 = ""
    if soft is not None:
        repo2 = (f'<Repository name="soft"><Module>{soft[0]}</Module><TokenLabel>{soft[1]}</TokenLabel>'
                 f"<PIN>{SOFT_PIN}</PIN><SkipPublicKey/></Repository>")
    priv = ""
    if bench.user is not None:
        priv = f"<Privileges><User>{bench.user.name}</User><Group>{bench.user.name}</Group></Privileges>"
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<Configuration>
  <RepositoryList>
    <Repository name="token">
      <Module>{bench.module}</Module>
      <TokenLabel>{bench.card.token_label}</TokenLabel>
      <PIN>{bench.card.pin}</PIN>
      <SkipPublicKey/>
    </Repository>
    {repo2}
  </RepositoryList>
  <Common>
    <Logging><Verbosity>3</Verbosity></Logging>
    <PolicyFile>/etc/opendnssec/kasp.xml</PolicyFile>
    <ZoneListFile>/etc/opendnssec/zonelist.xml</ZoneListFile>
  </Common>
  <Enforcer>
    {priv}
    <Datastore><SQLite>/var/lib/opendnssec/kasp.db</SQLite></Datastore>
    {"<ManualKeyGeneration/>" if manual else ""}
    <AutomaticKeyGenerationPeriod>P1M</AutomaticKeyGenerationPeriod>
    <WorkingDirectory>/var/lib/opendnssec/enforcer</WorkingDirectory>
    <WorkerThreads>1</WorkerThreads>
  </Enforcer>
  <Signer>
    {priv}
    <WorkingDirectory>/var/lib/opendnssec/signer</WorkingDirectory>
    <WorkerThreads>2</WorkerThreads>
    <SignerThreads>2</SignerThreads>
    <Listener><Interface><Address>127.0.0.1</Address><Port>{port}</Port></Interface></Listener>
  </Signer>
</Configuration>
"""


def kasp_xml(zsk_repository: str) -> str:
    """ECDSA P-256, a KSK on the token and a ZSK in ``zsk_repository``."""

    def key(repo: str) -> str:
        return f'<Algorithm length="256">13</Algorithm><Lifetime>P1Y</Lifetime><Repository>{repo}</Repository>'

    keys = f"<KSK>{key('token')}</KSK><ZSK>{key(zsk_repository)}</ZSK>"
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<KASP>
  <Policy name="card">
    <Description>smartcards4dnssec test</Description>
    <Signatures>
      <Resign>PT2H</Resign><Refresh>P3D</Refresh>
      <Validity><Default>P14D</Default><Denial>P14D</Denial></Validity>
      <Jitter>PT12H</Jitter><InceptionOffset>PT3600S</InceptionOffset><MaxZoneTTL>P1D</MaxZoneTTL>
    </Signatures>
    <Denial><NSEC/></Denial>
    <Keys>
      <TTL>PT3600S</TTL><RetireSafety>PT3600S</RetireSafety><PublishSafety>PT3600S</PublishSafety>
      <Purge>P14D</Purge>
      {keys}
    </Keys>
    <Zone>
      <PropagationDelay>PT300S</PropagationDelay>
      <SOA><TTL>PT3600S</TTL><Minimum>PT3600S</Minimum><Serial>unixtime</Serial></SOA>
    </Zone>
    <Parent>
      <PropagationDelay>PT9999S</PropagationDelay>
      <DS><TTL>PT3600S</TTL></DS>
      <SOA><TTL>PT172800S</TTL><Minimum>PT10800S</Minimum></SOA>
    </Parent>
  </Policy>
</KASP>
"""


ADDNS = """<?xml version="1.0" encoding="UTF-8"?>
<Adapter>
  <DNS>
    <Outbound>
      <ProvideTransfer><Peer><Prefix>127.0.0.1</Prefix></Peer></ProvideTransfer>
    </Outbound>
  </DNS>
</Adapter>
"""


def soft_zsk_token(bench: Bench) -> tuple[str, str]:
    """A SoftHSM token with one EC P-256 key (the ZSK) for the card's zone; the enforcer and the
    signer load SoftHSM directly for it (the shim's backend is the card)."""
    from virtualcard.pytest_plugin import softhsm_module

    module = softhsm_module()
    tokens = bench.mkdir("zsk-tokens")
    conf = bench.work / "zsk-softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n")
    bench.env["SOFTHSM2_CONF"] = str(conf)
    label = "ods-zsk"
    bench.run(["softhsm2-util", "--init-token", "--free", "--label", label, "--pin", SOFT_PIN, "--so-pin", "5678"])
    bench.run(["pkcs11-tool", "--module", module, "--token-label", label, "--login", "--pin", SOFT_PIN,
               "--keypairgen", "--key-type", "EC:prime256v1", "--id", SOFT_ZSK_ID, "--label", "zsk"])
    return module, label


@pytest.fixture
def ods(bench: Bench) -> Iterator[tuple[Bench, Namespace]]:
    require_opendnssec()
    bench.become("opendnssec")
    for name in ODS_DIRS:
        bench.mkdir(name)
    for sub in ("enforcer", "signer", "signconf", "unsigned"):
        bench.mkdir(f"var/{sub}")
    ns = Namespace(bench)
    try:
        yield bench, ns
    finally:
        ns.close()


def test_ods_enforcer_signer_sign(ods: tuple[Bench, Namespace]) -> None:
    bench, ns = ods
    card = bench.card
    manual = not card.can_generate
    port = free_port()
    soft = soft_zsk_token(bench) if manual else None
    etc = bench.work / "etc"
    (etc / "conf.xml").write_text(conf_xml(bench, port, manual, soft))
    (etc / "kasp.xml").write_text(kasp_xml("soft" if manual else "token"))
    (etc / "zonelist.xml").write_text('<?xml version="1.0" encoding="UTF-8"?>\n<ZoneList></ZoneList>\n')
    (etc / "addns.xml").write_text(ADDNS)
    write_zone(bench.work / "var" / "unsigned" / f"{ORIGIN}.zone")
    if bench.user is not None:
        bench.chown(bench.work / "run", bench.work / "var", etc)
    p = ns.prefix

    def ods_run(*argv: str, check: bool = True, timeout: float = 120):
        return bench.run(list(argv), prefix=p, check=check, timeout=timeout)

    def ask_to_stop(*argv: str) -> None:
        try:
            ods_run(*argv, check=False, timeout=5)
        except subprocess.TimeoutExpired:
            pass  # the client can wait forever on a daemon that hangs in its shutdown

    ods_run("ods-enforcer-db-setup", "-f")
    if bench.user is not None:
        bench.chown(bench.work / "var")
    logs = bench.work / "logs"
    logs.mkdir()
    enforcerd = bench.popen(["ods-enforcerd", "-d"], logs / "enforcerd.log", prefix=p)
    served = Served(port, ("ods-enforcerd", enforcerd, logs / "enforcerd.log"))
    served.wait(lambda: ods_run("ods-enforcer", "running", check=False).returncode == 0, "ods-enforcerd")
    ods_run("ods-enforcer", "policy", "import")
    signconf = f"/var/lib/opendnssec/signconf/{ORIGIN}.xml"
    ods_run(
        "ods-enforcer", "zone", "add", "--zone", ORIGIN, "--policy", "card", "--signerconf", signconf,
        "--input", f"/var/lib/opendnssec/unsigned/{ORIGIN}.zone", "--out-type", "DNS",
        "--output", "/etc/opendnssec/addns.xml",
    )
    if manual:
        # The card key as KSK, the SoftHSM key as ZSK. (A CSK cannot be imported: 2.1's key import
        # gives a CSK only the ZSK states, so nothing would sign the DNSKEY RRset.)
        inception = time.strftime("%Y-%m-%d-%H:%M:%S", time.gmtime(time.time() - 3600))
        for cka_id, repo, role in ((card.keys["ec"].id.hex(), "token", "KSK"), (SOFT_ZSK_ID, "soft", "ZSK")):
            ods_run(
                "ods-enforcer", "key", "import", "--cka_id", cka_id, "--repository", repo, "--zone", ORIGIN,
                "--bits", "256", "--algorithm", "13", "--keystate", "active", "--keytype", role,
                "--inception_time", inception,
            )
    ods_run("ods-enforcer", "enforce")
    ods_run("ods-enforcer", "signconf")
    served.wait(lambda: (bench.work / "var" / "signconf" / f"{ORIGIN}.xml").exists(), "the signconf")
    keys = ods_run("ods-enforcer", "key", "list", "--verbose").stdout

    signerd = bench.popen(["ods-signerd", "-d"], logs / "signerd.log", prefix=p)
    served.add("ods-signerd", signerd, logs / "signerd.log")
    served.wait(lambda: ods_run("ods-signer", "running", check=False).returncode == 0, "ods-signerd")
    # the signer takes the zone list from the enforcer's export a moment after it starts
    served.wait(lambda: ods_run("ods-signer", "sign", ORIGIN, check=False).returncode == 0,
                "ods-signer sign to find the zone")

    def signed_axfr() -> str | None:
        out = dig(port, ORIGIN, "AXFR", wait=30)
        return out if rrsig_tags(answer(out), "SOA") else None

    axfr_text = served.wait(signed_axfr, "the signed zone by AXFR from ods-signerd", timeout=120, interval=1)
    axfr = bench.work / "axfr.zone"
    axfr.write_text(axfr_text)
    verify_ldns(bench, axfr)
    rows = answer(axfr_text)
    tags = dnskey_tags(rows)
    assert rrsig_tags(rows, "DNSKEY") <= set(tags) and rrsig_tags(rows, "DNSKEY"), rows
    for t in tags:
        assert str(t) in keys, f"DNSKEY tag {t} is not an enforcer key:\n{keys}"
    assert len(tags) == 2, tags
    ksk = [t for t, flags in tags.items() if flags == 257]
    assert rrsig_tags(rows, "DNSKEY") >= set(ksk) and len(ksk) == 1, rows

    # OpenDNSSEC's daemons may hang or crash at shutdown with or without the shim (an OpenDNSSEC
    # bug): ask through the control sockets, then by PID; the zone is already complete.
    ask_to_stop("ods-signer", "stop")
    ask_to_stop("ods-enforcer", "stop")
    for _, proc, _ in served.daemons:
        stop(proc, timeout=15)
    on_token = set(ksk) if manual else set(tags)  # on the card only the KSK; on SoftHSM both keys
    token_sigs = [f for f in rows if f[3] == "RRSIG" and int(f[10]) in on_token]
    signs = bench.check_audit(len(token_sigs), progs=["ods-enforcerd", "ods-signerd"])
    assert signs["ods-signerd"] >= 1, signs
    if bench.user is not None:
        assert bench.user.uid in bench.daemon_uids("ods-signerd"), bench.daemon_uids("ods-signerd")
