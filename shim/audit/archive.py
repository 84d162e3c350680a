"""``audit export`` and ``audit verify --manifest``: a self-describing archive of one log.

The DPS keeps audit logs for ten years in two facilities, and sends them
through a collector outside the signing host.  An export directory holds
the log, its detached checkpoint file and ``manifest.json``:

* ``files``: name, role (``log``/``checkpoints``), size and SHA-256 of each file;
* ``log``: records, first/last seq, chain head, format versions and where each
  starts, torn/recovered lines, the link a rotated file starts with;
* ``checkpoints``: every detached checkpoint entry (seq, head, key id, signature);
* ``verifier``: the sc4dnssec version that wrote the manifest and the format
  versions it knows.

``verify_manifest`` needs nothing from the original host: it checks every
file's hash, then verifies the archived log with the archived checkpoints
(and the operator's key when given), and compares the result with the
manifest's statement of it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from shim.audit import files, schema, signing
from shim.audit.verify import VerifyResult, verify

MANIFEST: Final = "manifest.json"
MANIFEST_VERSION: Final = 1
_COPY_CHUNK: Final = 1 << 20


class ExportRefused(Exception):
    """The log does not verify: an archive with a manifest would vouch for it."""


def verifier_version() -> str:
    try:
        return metadata.version("smartcards4dnssec")
    except metadata.PackageNotFoundError:
        return "unknown"


def _copy_snapshot(src: str, dest: str) -> tuple[int, str]:
    """Copy the first N bytes of ``src``, N read under a shared lock (writers append whole
    lines under an exclusive one), so the copy ends at a record boundary.  Returns (size, sha256)."""
    fd = files.open_read(src)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        try:
            size = os.lseek(fd, 0, os.SEEK_END)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
        h = hashlib.sha256()
        out = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o640)
        try:
            done = 0
            while done < size:
                chunk = os.pread(fd, min(_COPY_CHUNK, size - done), done)
                if not chunk:
                    raise OSError(f"{src} shrank while being exported")
                h.update(chunk)
                os.write(out, chunk)
                done += len(chunk)
            os.fsync(out)
        finally:
            os.close(out)
    finally:
        os.close(fd)
    return size, h.hexdigest()


def _log_statement(r: VerifyResult) -> dict[str, Any]:
    return {"records": r.records, "first_seq": r.first_seq, "last_seq": r.last_seq, "head_sha256": r.head,
            "format_versions": sorted(r.versions),
            "version_starts": [{"seq": s, "format": v} for s, v in r.version_starts],
            "epochs": len(r.epochs), "lost_records": r.lost_records,
            "recovered_torn_lines": len(r.recovered), "torn_last_line": r.torn is not None,
            "link": r.link}


def export(log: str, dest_dir: str, *, checkpoints: str | None = None,
           key: Ed25519PublicKey | None = None) -> dict[str, Any]:
    """Copy ``log`` and its checkpoint file into ``dest_dir`` (new or empty) and write the manifest.

    Refuses (ExportRefused) if the copy does not verify.  Returns the manifest.
    """
    os.makedirs(dest_dir, mode=0o750, exist_ok=True)
    if os.listdir(dest_dir):
        raise OSError(f"{dest_dir} is not empty: export into a new directory")
    name = os.path.basename(log)
    entries = []
    size, digest = _copy_snapshot(log, os.path.join(dest_dir, name))
    entries.append({"name": name, "role": "log", "size": size, "sha256": digest})
    cp_src = checkpoints or signing.checkpoints_path(log)
    cp_name = None
    if checkpoints or os.path.exists(cp_src):
        cp_name = name + ".checkpoints"
        size, digest = _copy_snapshot(cp_src, os.path.join(dest_dir, cp_name))
        entries.append({"name": cp_name, "role": "checkpoints", "size": size, "sha256": digest})
    copy = os.path.join(dest_dir, name)
    r = verify(copy, key=key, checkpoints=os.path.join(dest_dir, cp_name) if cp_name else os.devnull)
    if not r.ok:
        raise ExportRefused(f"{log} does not verify: seq {r.first_bad_seq}: {r.reason}")
    detached = signing.read_checkpoints(os.path.join(dest_dir, cp_name)) if cp_name else []
    manifest = {
        "manifest": MANIFEST_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "source": os.path.abspath(log),
        "verifier": {"name": "sc4dnssec", "version": verifier_version(),
                     "formats": list(schema.SUPPORTED_VERSIONS)},
        "files": entries,
        "log": _log_statement(r),
        "checkpoints": [{k: e.get(k) for k in ("seq", "line_sha256", "head_seq", "head_sha256", "signed_at",
                                               "key_id", "alg", "sig")} for e in detached],
        "signatures_checked": key is not None,
    }
    path = os.path.join(dest_dir, MANIFEST)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o640)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    return manifest


@dataclass
class ManifestResult:
    result: VerifyResult | None = None
    problems: list[str] = field(default_factory=list)  # hash or statement mismatches

    @property
    def exit_code(self) -> int:
        if self.problems:
            return 1
        assert self.result is not None
        return self.result.exit_code


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with os.fdopen(files.open_read(path), "rb") as f:
        for chunk in iter(lambda: f.read(_COPY_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_manifest(manifest_path: str, *, key: Ed25519PublicKey | None = None,
                    require_checkpoint: bool = False) -> ManifestResult:
    """Check an export: file hashes, then the log against the archived checkpoints and the manifest.

    ``manifest_path`` is the manifest file or its directory.
    """
    if os.path.isdir(manifest_path):
        manifest_path = os.path.join(manifest_path, MANIFEST)
    base = os.path.dirname(os.path.abspath(manifest_path))
    with os.fdopen(files.open_read(manifest_path), "rb") as f:
        m = json.load(f)
    out = ManifestResult()
    if not isinstance(m, dict) or m.get("manifest") != MANIFEST_VERSION:
        out.problems.append(f"{manifest_path}: not a version {MANIFEST_VERSION} audit manifest")
        return out
    roles: dict[str, str] = {}
    for e in m.get("files", []):
        name = e.get("name")
        if not isinstance(name, str) or os.path.basename(name) != name or name in ("", ".", ".."):
            out.problems.append(f"manifest names a file outside the archive: {name!r}")
            continue
        p = os.path.join(base, name)
        try:
            got = _sha256(p)
        except OSError as err:
            out.problems.append(f"{name}: {err}")
            continue
        if got != e.get("sha256"):
            out.problems.append(f"{name}: SHA-256 {got} differs from the manifest's {e.get('sha256')}")
        roles[e.get("role")] = p
    if "log" not in roles:
        out.problems.append("manifest names no log file")
    if out.problems:
        return out
    r = verify(roles["log"], key=key, checkpoints=roles.get("checkpoints", os.devnull),
               require_checkpoint=require_checkpoint)
    out.result = r
    if r.ok:
        stated, actual = m.get("log", {}), _log_statement(r)
        for k in ("records", "first_seq", "last_seq", "head_sha256", "format_versions"):
            if stated.get(k) != actual[k]:
                out.problems.append(f"manifest says log {k} = {stated.get(k)!r}, the archived log has {actual[k]!r}")
        detached = signing.read_checkpoints(roles["checkpoints"]) if "checkpoints" in roles else []
        if [e.get("sig") for e in detached] != [c.get("sig") for c in m.get("checkpoints", [])]:
            out.problems.append("the manifest's checkpoint signatures differ from the archived checkpoint file")
    return out
