"""The traps operators fall into, checked on the host (not through PKCS#11).

Each check returns :class:`Finding` records; none prints or returns a PIN.  Inputs that depend
on the host (polkit rule directories, ``pcscd --help``) are parameters so tests can plant them.
"""

from __future__ import annotations

import base64
import binascii
import grp
import os
import pwd
import re
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

POLKIT_RULE_DIRS = (Path("/etc/polkit-1/rules.d"), Path("/usr/share/polkit-1/rules.d"))
PCSC_ACTIONS = ("org.debian.pcsc-lite.access_pcsc", "org.debian.pcsc-lite.access_card")
PIV_SLOTS = {"01": "9A", "02": "9C", "03": "9D", "04": "9E"}  # OpenSC's CKA_ID per PIV key slot


@dataclass(frozen=True)
class Finding:
    code: str
    message: str
    level: str = "warning"  # "note": worth knowing, not necessarily wrong


def pin_file(path: str) -> tuple[str | None, list[Finding]]:
    """The PIN from a ``pin-source`` file and what is wrong with the file.

    BIND reads the file verbatim, so a trailing newline is part of the PIN it sends.  The PIN is
    returned only when it is safe to try: a newline-terminated one would cost the card a retry."""
    warnings: list[Finding] = []
    try:
        st = os.stat(path)
        with open(path, "rb") as f:
            raw = f.read(4096)
    except OSError as e:
        return None, [Finding("pin-source", f"pin-source {path}: cannot read it ({e.strerror})")]
    if st.st_mode & 0o007:
        warnings.append(Finding("pin-source", f"pin-source {path} is readable by every user "
                                              f"(mode {st.st_mode & 0o777:o}): chmod o-rwx"))
    if raw.endswith(b"\n") or raw.endswith(b"\r"):
        warnings.append(Finding(
            "pin-newline",
            f"pin-source {path} ends with a newline: BIND sends it as part of the PIN, and the card "
            "counts a wrong PIN. Write it without one (printf '%s' \"$PIN\" > FILE). The probe did not "
            "log in with it."))
        return None, warnings
    if not raw:
        return None, warnings + [Finding("pin-source", f"pin-source {path} is empty")]
    try:
        return raw.decode("utf-8"), warnings
    except UnicodeDecodeError:
        return None, warnings + [Finding("pin-source", f"pin-source {path} is not UTF-8 text")]


_PIN_VALUE = re.compile(rb"pin-value=", re.IGNORECASE)
_B64 = re.compile(rb"[A-Za-z0-9+/=]{16,}")


def _mentions_pin_value(data: bytes) -> bool:
    if _PIN_VALUE.search(data):
        return True
    for chunk in _B64.findall(data):
        try:
            if _PIN_VALUE.search(base64.b64decode(chunk + b"=" * (-len(chunk) % 4))):
                return True
        except (binascii.Error, ValueError):
            continue
    return False


def pin_value_files(key_dirs: Iterable[str], conf_files: Iterable[str] = ()) -> list[Finding]:
    """``pin-value=`` in key files or named.conf: the PIN sits in clear (or base64) on disk."""
    hits: list[str] = []
    paths: list[Path] = []
    for d in key_dirs:
        paths += sorted(Path(d).glob("*.private"))
    paths += [Path(f) for f in conf_files]
    for p in paths:
        try:
            data = p.read_bytes()
        except OSError:
            continue
        if _mentions_pin_value(data):
            hits.append(str(p))
    if not hits:
        return []
    return [Finding("pin-value", f"{len(hits)} file(s) carry a pin-value= label, so the PIN is stored in "
                                 f"them: {', '.join(hits)}. Use pin-source=/absolute/file instead and re-create "
                                 "the key files (dnssec-keyfromlabel -l \"pkcs11:...;pin-source=FILE\").")]


def pcscd_has_polkit(help_text: str | None = None) -> bool:
    """pcsc-lite 2.x is built with polkit on Debian 13; its ``--help`` offers --disable-polkit."""
    if help_text is None:
        try:
            r = subprocess.run(["pcscd", "--help"], capture_output=True, text=True, timeout=10)
            help_text = r.stdout + r.stderr
        except (OSError, subprocess.TimeoutExpired):
            return False
    return "polkit" in help_text.lower()


_SONAME = re.compile(rb"lib[A-Za-z0-9_+-]+\.so(?:\.[0-9]+)*")
LIB_DIRS = ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/usr/lib", "/lib")


def uses_pcsc(backend: str) -> bool:
    """Does the backend reach cards through pcscd?  OpenSC's libopensc dlopens libpcsclite by
    name, so look in the module and in the libraries it names (one level, nothing is run)."""
    try:
        with open(backend, "rb") as f:
            data = f.read()
    except OSError:
        return False
    if b"libpcsclite" in data:
        return True
    here = os.path.dirname(backend)
    for name in {m.decode() for m in _SONAME.findall(data)}:
        for d in (here, *LIB_DIRS):
            path = os.path.join(d, name)
            if os.path.isfile(path):
                try:
                    with open(path, "rb") as f:
                        if b"libpcsclite" in f.read():
                            return True
                except OSError:
                    pass
                break
    return False


def polkit_allows(user: str, rule_dirs: Iterable[Path] = POLKIT_RULE_DIRS) -> bool:
    """A rule that names the pcsc-lite actions and this user (or its group) exists."""
    names = {user}
    try:
        names |= {g.gr_name for g in grp.getgrall() if user in g.gr_mem}
        names.add(grp.getgrgid(pwd.getpwnam(user).pw_gid).gr_name)
    except KeyError:
        pass
    for d in rule_dirs:
        for rule in sorted(Path(d).glob("*.rules")) if Path(d).is_dir() else []:
            try:
                text = rule.read_text(errors="replace")
            except OSError:
                continue
            if any(a in text for a in PCSC_ACTIONS) and any(re.search(rf"[\"']{re.escape(n)}[\"']", text)
                                                             for n in names):
                return True
    return False


def polkit(backend: str | None, user: str, help_text: str | None = None,
           rule_dirs: Iterable[Path] = POLKIT_RULE_DIRS) -> list[Finding]:
    if not backend or user == "root" or not uses_pcsc(backend) or not pcscd_has_polkit(help_text):
        return []
    if polkit_allows(user, rule_dirs):
        return []
    return [Finding("polkit", f"pcscd asks polkit before serving a client and no rule lets user {user} in: "
                              f"named running as {user} will see no reader. Install a rule allowing "
                              f"{' and '.join(PCSC_ACTIONS)} for {user} (the package ships one).")]


# Run as the signer's user by /bin/sh (any user can run it, unlike a venv's Python under /root).
_ACCESS = {
    "append": '[ -f "$1" ] && [ -w "$1" ]',
    "create": '[ -d "$1" ] && [ -w "$1" ] && [ -x "$1" ]',
    "read": '[ -f "$1" ] && [ -r "$1" ]',
}


def as_user(user: str) -> dict[str, object]:
    """subprocess keyword arguments that run a child as ``user`` (root only)."""
    pw = pwd.getpwnam(user)
    groups = [g.gr_gid for g in grp.getgrall() if user in g.gr_mem]
    return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": groups}


def _can(user: str | None, how: str, path: str) -> bool | str:
    """Whether ``user`` (default: this process's) can ``how`` the file at ``path``, tested by
    that user in a child process; a string says why it could not be tested.  For ``append``, a
    missing file needs the nearest existing directory to let the user create the rest."""
    me = pwd.getpwuid(os.getuid()).pw_name
    who = user or me
    kwargs: dict[str, object] = {}
    if who != me:
        if os.geteuid() != 0:
            return f"checking as user {who} needs root"
        try:
            kwargs = as_user(who)
        except KeyError:
            return f"no such user {who}"
    target = os.path.abspath(path)
    if how == "append":
        while not os.path.exists(target):
            target, how = os.path.dirname(target), "create"
    try:
        r = subprocess.run(["/bin/sh", "-c", _ACCESS[how], "sh", target], capture_output=True, timeout=30,
                           cwd="/", **kwargs)  # type: ignore[call-overload]
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"could not run a check as {who}: {e}"
    return r.returncode == 0


def audit_writable(path: str, user: str | None) -> list[Finding]:
    """Can the signer's user append to (or create) the audit log?  Fail-closed refuses every call
    when it cannot.  Nothing is written."""
    if not path:  # no default location (no writable /var/log/sc4dnssec, no home): see shim.audit.files
        return [Finding("audit-log", "no audit log path: set SC4DNSSEC_AUDIT_LOG or [audit] path")]
    ok = _can(user, "append", path)
    if ok is True:
        return []
    if isinstance(ok, str):
        return [Finding("audit-log", f"audit log {path}: {ok}")]
    who = user or pwd.getpwuid(os.getuid()).pw_name
    return [Finding("audit-log", f"user {who} cannot write the audit log {path}: with on_failure = fail-closed "
                                 "every PKCS#11 call of the signer will fail. Give the file (or its directory) "
                                 f"to {who}, e.g. install -d -o {who} -m 0750 {os.path.dirname(path) or '.'}")]


def readable_by(user: str, files: Iterable[tuple[str, str]]) -> list[Finding]:
    """(code, path) pairs the signer's user must read: the PIN file, the shim's configuration."""
    out = []
    for code, path in files:
        ok = _can(user, "read", path)
        if ok is False:
            out.append(Finding(code, f"user {user} cannot read {path}: the signer running as {user} will fail"))
        elif isinstance(ok, str):
            out.append(Finding(code, f"{path}: {ok}"))
    return out


def piv_invisible(token: str, private_key_ids: Iterable[str]) -> list[Finding]:
    """OpenSC's PIV driver (manufacturer ``piv_II``) finds keys through their certificates: a slot
    without one shows nothing.  ``token`` is the token's manufacturer and model."""
    if "piv" not in token.lower():
        return []
    seen = set(private_key_ids)
    hidden = [slot for kid, slot in PIV_SLOTS.items() if kid not in seen]
    if not hidden:
        return []
    # An empty slot and a key without a certificate look the same through PKCS#11: a note, unless
    # no key shows at all.
    level = "warning" if len(hidden) == len(PIV_SLOTS) else "note"
    return [Finding("piv-certificate", f"PIV slot(s) {', '.join(hidden)} show no key. OpenSC sees a PIV key only "
                                       "through its certificate: a key generated there without one is "
                                       "invisible to every signer. If you made one, import a certificate for it "
                                       "(e.g. yubico-piv-tool -a selfsign-certificate, then -a "
                                       "import-certificate).", level)]
