"""The ceremony directory: ``ceremony.json`` (what was decided at the start, and every step's
progress), the shim configuration its tools use, the window file, the audit log and ``files/``.

Progress is written after every card operation (atomically), so an interrupted ceremony resumes
from the operation after the last one it recorded; each operation also looks at the card before
acting, so one that ran but was not recorded is not run again either.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from shim.audit import files as audit_files
from shim.audit.writer import read_tail
from shim.ceremony.policy import STEPS

STATE_FILE = "ceremony.json"
SHIM_CONF = "shim.toml"
WINDOW = "window.json"
FILES = "files"
FORMAT = 1

T = TypeVar("T")


class OrderError(RuntimeError):
    """A step run out of order, or on a ceremony that is closed."""


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def audit_head(log: str) -> tuple[int, str]:
    """The last record's seq and line hash (0 and GENESIS for an empty or missing log)."""
    try:
        fd = audit_files.open_read(log)
    except FileNotFoundError:
        return 0, "0" * 64
    try:
        tail = read_tail(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)
    return tail.seq, tail.head


class Ceremony:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        path = directory / STATE_FILE
        try:
            self.doc: dict[str, Any] = json.loads(path.read_text())
        except FileNotFoundError:
            raise OrderError(f"{directory}: no ceremony here (sc4dnssec ceremony start)") from None
        if self.doc.get("format") != FORMAT:
            raise OrderError(f"{path}: format {self.doc.get('format')!r}, this version reads {FORMAT}")

    @classmethod
    def create(cls, directory: Path, doc: dict[str, Any]) -> Ceremony:
        directory.mkdir(parents=True, exist_ok=True)
        if (directory / STATE_FILE).exists():
            raise OrderError(f"{directory}: a ceremony already exists here")
        (directory / FILES).mkdir(exist_ok=True)
        doc = {"format": FORMAT, **doc, "steps": {}, "closed": False}
        _atomic_write(directory / STATE_FILE, json.dumps(doc, indent=1, sort_keys=True) + "\n")
        return cls(directory)

    # -- paths -----------------------------------------------------------------------------
    @property
    def files(self) -> Path:
        return self.dir / FILES

    @property
    def audit_log(self) -> str:
        return str(self.doc["audit_log"])

    @property
    def window(self) -> str:
        return str(self.dir / WINDOW)

    @property
    def shim_conf(self) -> str:
        return str(self.dir / SHIM_CONF)

    @property
    def plan(self) -> list[str]:
        return list(self.doc["plan"])

    def save(self) -> None:
        _atomic_write(self.dir / STATE_FILE, json.dumps(self.doc, indent=1, sort_keys=True) + "\n")

    # -- order -----------------------------------------------------------------------------
    def step(self, name: str) -> dict[str, Any]:
        return dict(self.doc["steps"].get(name) or {})

    def status(self, name: str) -> str:
        return str(self.doc["steps"].get(name, {}).get("status", "pending"))

    def next_step(self) -> str | None:
        for name in self.plan:
            if self.status(name) not in ("done", "skipped"):
                return name
        return None

    def check_order(self, name: str) -> None:
        if name not in STEPS:
            raise OrderError(f"unknown step {name!r} (steps: {', '.join(STEPS)})")
        if self.doc.get("closed"):
            raise OrderError(f"ceremony {self.doc['id']} is closed")
        if name not in self.plan:
            raise OrderError(f"step {name} is not part of this ceremony (plan: {', '.join(self.plan)})")
        if self.status(name) in ("done", "skipped"):
            raise OrderError(f"step {name} is already {self.status(name)}")
        nxt = self.next_step()
        if nxt != name:
            raise OrderError(f"step {name} refused: step {nxt} comes first (steps run in order: "
                             f"{', '.join(self.plan)})")

    # -- progress --------------------------------------------------------------------------
    def begin(self, name: str) -> dict[str, Any]:
        """Start (or resume) ``name``: a new run with the audit position it starts from."""
        rec = self.doc["steps"].setdefault(name, {"status": "pending", "ops": {}, "runs": [], "notes": []})
        seq, _ = audit_head(self.audit_log)
        rec["status"] = "started"
        rec["runs"].append({"started": utc_now(), "seq_after": seq})
        self.save()
        return dict(rec)

    def finish(self, name: str, status: str = "done") -> None:
        rec = self.doc["steps"][name]
        seq, head = audit_head(self.audit_log)
        run = rec["runs"][-1]
        run["finished"], run["seq_last"], run["head_sha256"] = utc_now(), seq, head
        rec["status"] = status
        self.save()

    def interrupted(self, name: str, why: str) -> None:
        rec = self.doc["steps"][name]
        seq, _ = audit_head(self.audit_log)
        run = rec["runs"][-1]
        run["stopped"], run["seq_last"], run["error"] = utc_now(), seq, why
        self.save()

    def note(self, name: str, text: str) -> None:
        self.doc["steps"][name].setdefault("notes", []).append(text)
        self.save()

    def op(self, step: str, key: str, fn: Callable[[], T], say: Callable[[str], None]) -> T:
        """Run card operation ``key`` of ``step`` once: a recorded result is returned, not redone."""
        ops = self.doc["steps"][step]["ops"]
        if key in ops:
            say(f"  {key}: already done at {ops[key]['at']} (not repeated)")
            return ops[key]["result"]  # type: ignore[no-any-return]
        result = fn()
        ops[key] = {"at": utc_now(), "result": result}
        self.save()
        return result

    def done_op(self, step: str, key: str) -> bool:
        return key in self.doc["steps"].get(step, {}).get("ops", {})

    def op_result(self, step: str, key: str) -> Any:
        return self.doc["steps"][step]["ops"][key]["result"]

    def seq_range(self, name: str) -> tuple[int, int] | None:
        """First and last audit seq of the step's runs (None: the shim wrote nothing meanwhile)."""
        runs = self.doc["steps"].get(name, {}).get("runs", [])
        spans = [(r["seq_after"] + 1, r["seq_last"]) for r in runs
                 if "seq_last" in r and r["seq_last"] > r["seq_after"]]
        if not spans:
            return None
        return spans[0][0], spans[-1][1]


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
