"""Signed checkpoints: an operator's Ed25519 signature over the chain head.

``checkpoint(log, key)`` first verifies the log (signing a tampered log would
bless it), then appends through ``AuditWriter`` — so the checkpoint is itself a
chained record, serialised with every other writer by the file lock — a
``kind="checkpoint"`` record whose args are::

    head_seq, head_sha256   seq and line hash of the record it follows (= seq-1, prev)
    signed_at, key_id       UTC time, first 16 hex of SHA-256 of the raw public key
    alg, sig                "ed25519", base64 signature over signing.statement(args)

and appends the same args plus ``seq`` and ``line_sha256`` (the checkpoint
line's own hash) to the detached file ``LOG.checkpoints``.  The detached file
is what makes truncation detectable: copy it off the host (or read it from
syslog) and ``verify --key --checkpoints COPY`` fails if the log no longer
holds the checkpointed head.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shim.audit import files, signing
from shim.audit.verify import verify
from shim.audit.writer import AuditWriter


class CheckpointRefused(Exception):
    """The log does not verify; a checkpoint would certify tampering."""


@dataclass
class Checkpoint:
    seq: int
    head_seq: int
    head_sha256: str
    line_sha256: str
    path: str  # detached checkpoint file written


def checkpoint(log_path: str, private: Ed25519PrivateKey, *, detached: str | None = None,
               program: str = "sc4dnssec-audit") -> Checkpoint:
    """Verify ``log_path``, append a signed checkpoint record, append it to the detached file."""
    pub = private.public_key()
    # A first checkpoint into a new detached file has nothing to compare with yet.
    result = verify(log_path, key=pub,
                    checkpoints=detached if detached is None or os.path.exists(detached) else os.devnull)
    if not result.ok:
        raise CheckpointRefused(f"{log_path} does not verify: seq {result.first_bad_seq}: {result.reason}")
    kid = signing.key_id(pub)
    signed: dict[str, Any] = {}

    def make_args(seq: int, prev: str) -> dict[str, Any]:
        args: dict[str, Any] = {
            "head_seq": seq - 1, "head_sha256": prev,
            "signed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "key_id": kid,
            "alg": signing.ALG,
        }
        args["sig"] = signing.sign(private, args)
        signed.update(args)
        return args

    # fsync: a checkpoint is rare and is exactly the record that must survive a crash.
    with AuditWriter(log_path, fsync="always", on_failure="fail-closed", program=program) as w:
        written = w.write_bound("checkpoint", make_args)
    assert written is not None  # fail-closed raises instead
    seq, line_hash = written
    entry = {"seq": seq, "line_sha256": line_hash, **signed, "log": os.path.abspath(log_path)}
    path = detached or signing.checkpoints_path(log_path)
    fd, _ = files.open_append(path, 0o644)  # no symlink, regular file only
    try:
        os.write(fd, json.dumps(entry, separators=(",", ":")).encode("ascii") + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    return Checkpoint(seq, signed["head_seq"], signed["head_sha256"], line_hash, path)
