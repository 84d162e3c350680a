"""ci/demo --ceremony: the key ceremony on three virtual SmartCard-HSMs, as an operator runs it.

Starts a private pcscd with three virtual SmartCard-HSMs (one primary, two backup cards), writes
the participants' secrets to files (a real ceremony types them), runs ``sc4dnssec ceremony`` step
by step, renders the record, checks it with ``ceremony verify-record`` and ``audit verify``, and
stops what it started.  Usage: python ci/lib/ceremony_demo.py WORKDIR (the directory is replaced).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from shim.audit import signing
from virtualcard import schsm
from virtualcard.harness import Harness

ZONE = "example.test"


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def sc4(*args: str) -> int:
    print(f"$ sc4dnssec {' '.join(args)}", flush=True)
    return subprocess.run([sys.executable, "-m", "shim.cli", *args], check=False).returncode


def main(work: Path) -> int:
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    h = Harness(work / "pcscd", readers=4)
    say("private pcscd with 4 virtual readers")
    h.start()
    try:
        readers = []
        for n in range(3):  # blank cards, as they come out of the bag: the ceremony initialises them
            state = schsm.HSMState(work / f"card{n + 1}")
            state.manufacture()
            proc = h.add_card(state.dir)
            readers.append(h.reader_name(proc.reader))
            say(f"blank SmartCard-HSM {n + 1} (serial {state.counters.serial}) in \"{readers[-1]}\"")
        os.environ.update(h.env)  # PCSCLITE_CSOCK_NAME for every tool the ceremony runs
        sec = work / "secrets"
        sec.mkdir(mode=0o700)
        for name, value in (("pin", schsm.DEFAULT_PIN), ("so-pin", schsm.DEFAULT_SO_PIN),
                            ("share1", "so share password"), ("share2", "sa share password"),
                            ("transport", "zsk transport passphrase")):
            (sec / name).write_text(value + "\n")
            (sec / name).chmod(0o600)
        priv, pub = signing.keygen(str(sec))
        zsk = work / f"K{ZONE}.+013+00001.private"
        zsk.write_text("Private-key-format: v1.3\n(demo stand-in: the BIND steps make the real ZSKs)\n")
        cer = work / "ceremony"
        rc = sc4("ceremony", "start", str(cer), "--zone", ZONE, "--primary", readers[0],
                 "--clone", readers[1], "--clone", readers[2],
                 "--participant", "MC=Morgan Chair", "--participant", "SO=Sofia Officer",
                 "--participant", "SA=Sam Admin", "--participant", "SC=Safe Controller",
                 "--participant", "IW=Iris Witness", "--participant", "EW=Ed External",
                 "--pin-file", str(sec / "pin"), "--so-pin-file", str(sec / "so-pin"),
                 "--share-password-file", str(sec / "share1"), "--share-password-file", str(sec / "share2"),
                 "--checkpoint-key", priv, "--transport-passphrase-file", str(sec / "transport"),
                 "--without-bind", "--zsk-material", str(zsk))
        if rc:
            return rc
        say("a step out of order is refused:")
        if sc4("ceremony", "step", str(cer), "backup") != 3:
            return 1
        while True:
            rc = sc4("ceremony", "step", str(cer))
            if rc == 3:  # every step is done
                break
            if rc:
                return rc
        sc4("ceremony", "status", str(cer))
        if sc4("ceremony", "verify-record", str(cer / "record.html"), "--key", pub):
            return 1
        if sc4("audit", "verify", "--key", pub, "--require-checkpoint", str(cer / "audit.jsonl")):
            return 1
        say(f"ceremony record: {cer / 'record.html'}" + (f" and {cer / 'record.pdf'}"
                                                          if (cer / "record.pdf").exists() else ""))
        return 0
    finally:
        h.stop()
        say("pcscd and the cards stopped")


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]).resolve()))
