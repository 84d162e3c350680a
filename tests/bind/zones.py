"""Signed-zone inspection, dig and named helpers for the BIND flows (the zone itself and the port
come from sc4testkit.zones)."""

from __future__ import annotations

import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from sc4testkit.trixie import Trixie, stop


def key_tag(key_base: str) -> int:
    """Kexample.+013+12345 -> 12345."""
    m = re.search(r"\+\d{3}\+(\d{5})$", key_base)
    assert m, key_base
    return int(m.group(1))


@dataclass
class SignedZone:
    names: int
    records: int
    rrsigs: int
    by_tag: Counter[int]
    covered_by_tag: dict[int, Counter[str]]


def inspect_signed(trixie: Trixie, origin: str, path: Path) -> SignedZone:
    """One RR per line via named-compilezone, then counts of names, RRSIGs by key tag."""
    out = trixie.run(
        ["named-compilezone", "-q", "-f", "text", "-F", "text", "-s", "full", "-o", "-", origin, path]
    ).stdout
    names: set[str] = set()
    by_tag: Counter[int] = Counter()
    covered: dict[int, Counter[str]] = {}
    records = 0
    for line in out.splitlines():
        f = line.split()
        if len(f) < 4 or line.startswith(";"):
            continue
        records += 1
        names.add(f[0].lower())
        if f[3] == "RRSIG":
            tag = int(f[10])
            by_tag[tag] += 1
            covered.setdefault(tag, Counter())[f[4]] += 1
    return SignedZone(len(names), records, sum(by_tag.values()), by_tag, covered)


def dig(trixie: Trixie, port: int, name: str, rtype: str) -> str:
    """dig +dnssec (never with OPENSSL_CONF: dig aborts when pkcs11-provider is loaded early)."""
    return trixie.run(
        ["dig", "+dnssec", "+norec", "+time=2", "+tries=1", "-p", str(port), "@127.0.0.1", name, rtype],
        check=False,
        timeout=30,
    ).stdout


def answer_rrsig_tags(dig_output: str, covered: str) -> list[int]:
    tags = []
    in_answer = False
    for line in dig_output.splitlines():
        if line.startswith(";; ANSWER SECTION"):
            in_answer = True
            continue
        if line.startswith(";;"):
            in_answer = False
        f = line.split()
        if in_answer and len(f) > 10 and f[3] == "RRSIG" and f[4] == covered:
            tags.append(int(f[10]))
    return tags


def named_conf(work: Path, port: int, body: str) -> Path:
    conf = work / "named.conf"
    conf.write_text(
        f"""options {{
    directory "{work}";
    listen-on port {port} {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    pid-file "{work}/named.pid";
    recursion no;
    notify no;
    dnssec-validation no;
}};
controls {{ }};
{body}
"""
    )
    return conf


class Named:
    """named -g in the root, stopped by its PID (the helpers exec down to named itself)."""

    def __init__(self, trixie: Trixie, conf: Path, env: dict[str, str], log: Path) -> None:
        self.trixie, self.log = trixie, log
        trixie.run(["named-checkconf", conf])
        self.proc = trixie.popen(["named", "-g", "-c", conf], env=env, cwd=conf.parent, log=log)

    def wait_for(
        self, port: int, name: str, rtype: str, covered: str, timeout: float = 60
    ) -> tuple[str, float]:
        """Polls until the answer carries an RRSIG over `covered` (inline signing REFUSEs at first)."""
        start = time.monotonic()
        last = ""
        while time.monotonic() - start < timeout:
            if self.proc.poll() is not None:
                raise AssertionError(f"named exited ({self.proc.returncode}):\n{self.log_text()}")
            last = dig(self.trixie, port, name, rtype)
            if answer_rrsig_tags(last, covered):
                return last, time.monotonic() - start
            time.sleep(0.3)
        raise AssertionError(
            f"no signed {rtype} answer for {name} after {timeout} s:\n{last}\n{self.log_text()}"
        )

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-6000:]
        except OSError:
            return "(no log)"

    def stop(self) -> int:
        rc = stop(self.proc)
        return rc

    def __enter__(self) -> Named:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
