"""Shared helpers of the reliability tests: a private SoftHSM token, shim environments,
child processes, the audit CLI, and the figures that go into the README's Reliability section.

A uniquely named module (not conftest) so test files import it without clashing
with other test directories' helper modules.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shim.config import dumps as config_dumps
from shim.locate import module_path
from virtualcard.cardinfo import CardInfo

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SCALE = float(os.environ.get("SC4_RELIABILITY_SCALE", "1"))
FIGURES_ENV = "SC4_RELIABILITY_FIGURES"


def scaled(n: float) -> int:
    """``n`` times the SC4_RELIABILITY_SCALE knob (CI runs at 1), at least 1."""
    return max(1, int(n * SCALE))


@dataclass
class Token:
    """A pristine SoftHSM token directory; ``copy`` gives each run its own token."""

    info: CardInfo
    root: Path

    def copy(self, dest: Path) -> dict[str, str]:
        """A copy of the token under ``dest``; returns the env that selects it."""
        shutil.copytree(self.root / "tokens", dest / "tokens")
        conf = dest / "softhsm2.conf"
        text = (self.root / "softhsm2.conf").read_text().replace(str(self.root / "tokens"), str(dest / "tokens"))
        conf.write_text(text)
        return {"SOFTHSM2_CONF": str(conf)}


@dataclass
class ShimRun:
    """Environment for child processes that load the shim over a token."""

    dir: Path
    backend: str
    pin: str
    env: dict[str, str]
    audit_log: Path
    conf: dict[str, Any] = field(default_factory=dict)
    module: str = field(default_factory=module_path)

    @classmethod
    def make(cls, dir: Path, token: Token, conf: dict[str, Any] | None = None,
             audit_log: Path | None = None, own_token: bool = True) -> ShimRun:
        dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env.update(token.copy(dir) if own_token else token.info.env)
        audit = audit_log or dir / "audit.jsonl"
        conf = dict(conf or {})
        conf_path = dir / "sc4dnssec.toml"
        conf_path.write_text(config_dumps(conf))
        env.update(SC4DNSSEC_BACKEND=token.info.module, SC4DNSSEC_AUDIT_LOG=str(audit),
                   SC4DNSSEC_CONF=str(conf_path),
                   PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests"), env.get("PYTHONPATH", "")]))
        return cls(dir, token.info.module, token.info.pin, env, audit, conf)

    def python(self, script: Path | str, *args: str, timeout: float = 120, check: bool = True,
               extra_env: dict[str, str] | None = None, prefix: list[str] | None = None
               ) -> subprocess.CompletedProcess[str]:
        env = dict(self.env, **(extra_env or {}))
        argv = [sys.executable, str(script), *args] if isinstance(script, Path) \
            else [sys.executable, "-c", script, *args]
        proc = subprocess.run([*(prefix or []), *argv], env=env, capture_output=True, text=True,
                              timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"child failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc

    def records(self) -> list[dict[str, Any]]:
        if not self.audit_log.exists():
            return []
        return [json.loads(x) for x in self.audit_log.read_bytes().splitlines() if x.strip()]


def audit_cli(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``sc4dnssec audit ...`` as an operator runs it."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "shim.cli", "audit", *argv], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=timeout)


def record_figure(name: str, value: Any) -> None:
    """Add a figure for the README's Reliability section to the JSON file named by
    SC4_RELIABILITY_FIGURES (set by conftest)."""
    path = os.environ.get(FIGURES_ENV)
    if not path:
        return
    p = Path(path)
    data = json.loads(p.read_text()) if p.exists() else {}
    data[name] = value
    p.write_text(json.dumps(data, indent=1, sort_keys=True))


SIGNER = HERE / "signer.py"


def signer_env(run: ShimRun) -> dict[str, str]:
    return {"P11_MODULE": run.module, "P11_PIN": run.pin}


def check_signatures(path: Path) -> tuple[int, list[str]]:
    """Verify every signature in a signer.py output file; returns (verified, errors seen)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

    pubs: dict[str, Any] = {}
    ok, errors = 0, []
    for line in path.read_text().splitlines():
        try:
            r = json.loads(line)
        except ValueError:  # a line cut by SIGKILL
            continue
        if "pub" in r:
            p = r["pub"]
            if "ec" in p:
                point = bytes.fromhex(p["ec"])
                raw = point[2:] if point[0] == 4 and len(point) == 67 else point
                pubs["ec"] = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), raw)
            if "rsa" in p:
                n, e = (int(x, 16) for x in p["rsa"])
                pubs["rsa"] = rsa.RSAPublicNumbers(e, n).public_key()
            for k in ("ec", "rsa"):
                if k + "_cert" in p:
                    from cryptography import x509

                    pubs[k] = x509.load_der_x509_certificate(bytes.fromhex(p[k + "_cert"])).public_key()
        elif "err" in r:
            errors.append(r["err"])
        else:
            d, s = bytes.fromhex(r["d"]), bytes.fromhex(r["s"])
            if r["k"] == "ec":
                h = len(s) // 2
                der = utils.encode_dss_signature(int.from_bytes(s[:h], "big"), int.from_bytes(s[h:], "big"))
                pubs["ec"].verify(der, d, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
            else:
                pubs["rsa"].verify(s, d, padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))
            ok += 1
    return ok, errors


# /dev/log for one child: a private mount namespace whose /dev is a small tmpfs holding the
# usual device nodes (bind mounts) and ``log`` -> the test's own datagram socket.  The
# shim's writer has a syslog_path but no setting for it, and the host may have no /dev/log.
_DEVLOG_SCRIPT = r"""
set -e
d="$1"; sock="$2"; shift 2
mount -t tmpfs -o size=1m,mode=755 tmpfs "$d"
for n in null zero full random urandom tty; do
  if [ -e "/dev/$n" ]; then touch "$d/$n"; mount --bind "/dev/$n" "$d/$n"; fi
done
mkdir "$d/shm" "$d/pts"
mount --bind /dev/shm "$d/shm"
ln -s /proc/self/fd "$d/fd"
ln -s /proc/self/fd/0 "$d/stdin"; ln -s /proc/self/fd/1 "$d/stdout"; ln -s /proc/self/fd/2 "$d/stderr"
ln -s "$sock" "$d/log"
mount --move "$d" /dev
exec "$@"
"""


def devlog_prefix(workdir: Path, sock: Path) -> list[str]:
    """Command prefix: run the rest with /dev/log pointing at ``sock`` (needs root)."""
    d = workdir / "devns"
    d.mkdir(parents=True, exist_ok=True)
    return ["unshare", "-m", "--propagation", "private", "sh", "-c", _DEVLOG_SCRIPT, "sh", str(d), str(sock)]


_RECEIVER = r"""
import os, signal, socket, struct, sys
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
sock.bind(sys.argv[1])
out = open(sys.argv[2], "wb")
signal.signal(signal.SIGTERM, lambda *a: (out.flush(), os._exit(0)))
print("ready", flush=True)
while True:
    m = sock.recv(1 << 20)
    out.write(struct.pack("<I", len(m)) + m)
"""


class SyslogCapture:
    """A unix datagram socket collecting what a child sends to /dev/log.

    The receiver runs in its own network namespace with net.unix.max_dgram_qlen = 4096 (a
    socket's queue limit comes from its namespace; this host's default is 10), like a
    syslog daemon that keeps up: the tests check shipping, not a slow collector."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._out = path.with_suffix(".captured")
        script = ("echo 4096 > /proc/sys/net/unix/max_dgram_qlen && exec \"$0\" -c \"$1\" \"$2\" \"$3\"")
        self._proc = subprocess.Popen(["unshare", "-n", "sh", "-c", script, sys.executable, _RECEIVER,
                                       str(path), str(self._out)], stdout=subprocess.PIPE, text=True)
        assert self._proc.stdout is not None and self._proc.stdout.readline().strip() == "ready"

    def close(self) -> list[bytes]:
        import struct
        import time

        time.sleep(0.3)
        self._proc.terminate()
        self._proc.wait(timeout=10)
        data = self._out.read_bytes() if self._out.exists() else b""
        self._out.unlink(missing_ok=True)
        msgs, i = [], 0
        while i + 4 <= len(data):
            (n,) = struct.unpack_from("<I", data, i)
            msgs.append(data[i + 4:i + 4 + n])
            i += 4 + n
        return msgs
