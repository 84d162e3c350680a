"""The ceremony record: an HTML page to print and sign (a PDF too where WeasyPrint is installed),
and the check that a record, its files and the audit log still agree.

The page shows the participants, every step with its UTC times and audit sequence range, the
SHA-256 of every produced file, the cards' serials and DKEK key check values, the chain head and
the checkpoint signature, and blank signature lines.  The same facts are embedded in the page as
JSON (``<script type="application/json" id="sc4-ceremony-record">``), which
:func:`verify_record` reads: each file's hash again, the log verified with the operator's key and
checkpoint file, and the checkpointed chain head and every step's range found in the log.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shim.ceremony.state import Ceremony, utc_now
from shim.ceremony.steps import DESCRIPTIONS, sha256_file

RECORD_HTML = "record.html"
RECORD_PDF = "record.pdf"
_JSON_ID = "sc4-ceremony-record"
_JSON_RE = re.compile(r'<script type="application/json" id="sc4-ceremony-record">(.*?)</script>', re.S)


def facts(cer: Ceremony) -> dict[str, Any]:
    """Everything the record states, as data (what the page shows and what verify-record checks)."""
    doc = cer.doc
    steps = []
    for n, name in enumerate(cer.plan, 1):
        rec = doc["steps"].get(name, {})
        runs = rec.get("runs", [])
        rng = cer.seq_range(name)
        steps.append({"n": n, "name": name, "status": rec.get("status", "pending"),
                      "started": runs[0]["started"] if runs else None,
                      "finished": runs[-1].get("finished") if runs else None,
                      "runs": len(runs), "seq": list(rng) if rng else None, "notes": rec.get("notes", [])})
    produced = sorted(p for p in cer.files.iterdir() if p.is_file())
    return {
        "ceremony": doc["id"], "zone": doc["zone"], "date": doc["date"], "rendered": utc_now(),
        "participants": doc["participants"],
        "cards": [{k: c.get(k) for k in ("role", "reader", "label", "serial", "kcv")} for c in doc["cards"]],
        "dkek": {"shares": doc["dkek_shares"], "custodians": doc["custodians"], "kcv": doc.get("dkek_kcv")},
        "ksk": doc.get("ksk"),
        "steps": steps,
        "files": [{"name": p.name, "bytes": p.stat().st_size, "sha256": sha256_file(p)} for p in produced],
        "audit_log": cer.audit_log,
        "checkpoint": {k: v for k, v in (doc.get("checkpoint") or {}).items() if k != "detached"},
    }


_CSS = """
@page { size: A4; margin: 16mm 14mm; }
body { font-family: "DejaVu Sans", sans-serif; font-size: 9.5pt; color: #111; }
h1 { font-size: 15pt; margin: 0 0 2mm 0; } h2 { font-size: 11pt; margin: 5mm 0 1.5mm 0; border-bottom: 1px solid #777; }
table { border-collapse: collapse; width: 100%; } td, th { border: 1px solid #999; padding: 1mm 1.5mm;
  vertical-align: top; text-align: left; } th { background: #eee; }
.mono { font-family: "DejaVu Sans Mono", monospace; font-size: 8pt; word-break: break-all; }
.sig td { height: 13mm; } .small { font-size: 8pt; color: #444; }
h2 { break-after: avoid; } tr { break-inside: avoid; } section { break-inside: avoid; }
td.t { font-size: 8pt; white-space: nowrap; }
"""


def _e(v: object) -> str:
    return html.escape("" if v is None else str(v))


def _ts(v: str | None) -> str:
    """A UTC timestamp on two lines (date, time), so the steps table keeps its room for the text."""
    return _e(v).replace("T", "<br>", 1) if v else ""


def render_html(f: dict[str, Any]) -> str:
    rows: list[str] = []
    add = rows.append
    add(f"<h1>Key ceremony record: {_e(f['zone'])}</h1>")
    add(f"<p>Ceremony <span class=mono>{_e(f['ceremony'])}</span>, {_e(f['date'])}. Rendered {_e(f['rendered'])} "
        f"by <code>sc4dnssec ceremony record</code>. All times UTC. Audit log <span class=mono>"
        f"{_e(f['audit_log'])}</span>.</p>")
    add("<h2>Participants</h2><table><tr><th>Role</th><th>Name</th><th>Initials</th></tr>")
    for p in f["participants"]:
        add(f"<tr><td>{_e(p['role'])}</td><td>{_e(p['name'])}</td><td></td></tr>")
    add("</table>")
    add("<h2>Steps</h2><table><colgroup><col style='width:4%'><col style='width:43%'><col style='width:8%'>"
        "<col style='width:13%'><col style='width:13%'><col style='width:10%'><col style='width:9%'></colgroup>"
        "<tr><th>#</th><th>Step</th><th>Status</th><th>Started</th><th>Finished</th><th>Audit seq</th>"
        "<th>Initials</th></tr>")
    for s in f["steps"]:
        seq = f"{s['seq'][0]}&ndash;{s['seq'][1]}" if s["seq"] else "none"
        runs = f" ({s['runs']} runs: resumed)" if s["runs"] > 1 else ""
        notes = "".join(f"<br><span class=small>{_e(n)}</span>" for n in s["notes"])
        add(f"<tr><td>{s['n']}</td><td><b>{_e(s['name'])}</b><br><span class=small>"
            f"{_e(DESCRIPTIONS.get(s['name'], ''))}</span>{notes}</td><td>{_e(s['status'])}{runs}</td>"
            f"<td class=t>{_ts(s['started'])}</td><td class=t>{_ts(s['finished'])}</td><td class=t>{seq}</td>"
            "<td></td></tr>")
    add("</table>")
    add(f"<section><h2>Cards</h2><p>DKEK: {_e(f['dkek']['shares'])} of {_e(f['dkek']['shares'])} shares, custodians "
        f"{_e(', '.join(f['dkek']['custodians']))}; key check value <span class=mono>{_e(f['dkek']['kcv'])}"
        "</span>.</p><table><tr><th>Role</th><th>Serial</th><th>Token label</th><th>DKEK KCV</th><th>Reader</th>"
        "<th>Bag no.</th></tr>")
    for c in f["cards"]:
        add(f"<tr><td>{_e(c['role'])}</td><td class=mono>{_e(c['serial'])}</td><td>{_e(c['label'])}</td>"
            f"<td class=mono>{_e(c['kcv'])}</td><td>{_e(c['reader'])}</td><td></td></tr>")
    add("</table></section>")
    if f.get("ksk"):
        k = f["ksk"]
        add(f"<p>KSK <b>{_e(k['label'])}</b>, key reference {_e(k['key_ref'])}, public key (SPKI) SHA-256 "
            f"<span class=mono>{_e(k['spki_sha256'])}</span>.</p>")
    add("<section><h2>Produced files (SHA-256)</h2><table><tr><th>File</th><th>Bytes</th><th>SHA-256</th></tr>")
    for p in f["files"]:
        add(f"<tr><td>{_e(p['name'])}</td><td>{p['bytes']}</td><td class=mono>{_e(p['sha256'])}</td></tr>")
    add("</table></section>")
    cp = f["checkpoint"]
    add("<h2>Audit chain</h2>")
    if cp:
        add(f"<table><tr><th>Chain head</th><td class=mono>seq {cp['head_seq']}, {_e(cp['head_sha256'])}</td></tr>"
            f"<tr><th>Checkpoint</th><td class=mono>seq {cp['seq']}, line {_e(cp['line_sha256'])}</td></tr>"
            f"<tr><th>Signed</th><td class=mono>{_e(cp['signed_at'])}, {_e(cp['alg'])}, key id {_e(cp['key_id'])}"
            f"</td></tr><tr><th>Signature</th><td class=mono>{_e(cp['sig'])}</td></tr></table>")
    else:
        add("<p>No checkpoint yet: the ceremony is not closed.</p>")
    add("<p class=small>To check later: <code>sc4dnssec audit verify --key OPERATOR.pub.pem --checkpoints "
        "LOG.checkpoints --require-checkpoint LOG</code> and <code>sc4dnssec ceremony verify-record "
        "record.html --key OPERATOR.pub.pem</code> (file hashes, chain head and step ranges against the log).</p>")
    add("<section><h2>Signatures</h2><table class=sig>"
        "<tr><th>Role</th><th>Name</th><th>Signature</th><th>Date</th></tr>")
    for p in f["participants"]:
        add(f"<tr><td>{_e(p['role'])}</td><td>{_e(p['name'])}</td><td></td><td></td></tr>")
    add("</table></section>")
    data = json.dumps(f, indent=1, sort_keys=True).replace("</", "<\\/")
    return ("<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
            f"<title>Key ceremony {_e(f['zone'])} {_e(f['date'])}</title><style>{_CSS}</style></head><body>\n"
            + "\n".join(rows)
            + f'\n<script type="application/json" id="{_JSON_ID}">{data}</script>\n</body></html>\n')


@dataclass
class Rendered:
    html: Path
    pdf: Path | None
    pdf_note: str


def render(cer: Ceremony) -> Rendered:
    """Write record.html (and record.pdf when ``weasyprint`` is on PATH) into the ceremony directory."""
    out = cer.dir / RECORD_HTML
    out.write_text(render_html(facts(cer)))
    tool = shutil.which("weasyprint")
    if tool is None:
        return Rendered(out, None, "no PDF: weasyprint is not installed (apt-get install weasyprint); print the HTML")
    pdf = cer.dir / RECORD_PDF
    r = subprocess.run([tool, str(out), str(pdf)], capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        return Rendered(out, None, f"no PDF: weasyprint failed: {r.stderr.strip()[-300:]}")
    return Rendered(out, pdf, f"PDF rendered by {tool}")


def read_facts(record: Path) -> dict[str, Any]:
    m = _JSON_RE.search(record.read_text())
    if m is None:
        raise ValueError(f"{record}: no embedded ceremony record")
    data = json.loads(m.group(1).replace("<\\/", "</"))
    if not isinstance(data, dict):
        raise ValueError(f"{record}: embedded record is not an object")
    return data


@dataclass
class RecordCheck:
    problems: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_record(record: Path, *, key_path: str, files_dir: Path | None = None, log: str | None = None,
                  checkpoints: str | None = None) -> RecordCheck:
    """Check a rendered record against its files and the audit log (see the module docstring)."""
    from shim.audit import signing
    from shim.audit.schema import line_hash, parse_line
    from shim.audit.verify import verify

    out = RecordCheck()
    f = read_facts(record)
    files_dir = files_dir or record.parent / "files"
    for p in f["files"]:
        path = files_dir / p["name"]
        if not path.exists():
            out.problems.append(f"file {p['name']}: missing from {files_dir}")
        elif sha256_file(path) != p["sha256"]:
            out.problems.append(f"file {p['name']}: SHA-256 differs from the record")
    out.checked.append(f"{len(f['files'])} file hash(es)")
    log = log or f["audit_log"]
    cp = f.get("checkpoint") or {}
    if not cp:
        out.problems.append("the record has no checkpoint (the ceremony was not closed)")
        return out
    key = signing.load_public(key_path)
    if signing.key_id(key) != cp["key_id"]:
        out.problems.append(f"--key has key id {signing.key_id(key)}, the record's checkpoint {cp['key_id']}")
    result = verify(log, key=key, checkpoints=checkpoints or signing.checkpoints_path(log), require_checkpoint=True)
    if not result.ok or result.exit_code != 0:
        out.problems.append(f"audit log {log} does not verify: seq {result.first_bad_seq}: {result.reason}"
                            + ("; " + "; ".join(result.unproven) if result.unproven else ""))
    out.checked.append(f"audit log verified ({result.records} records, {result.checkpoints_verified} "
                       "checkpoint signature(s))")
    by_seq: dict[int, tuple[dict[str, Any], str]] = {}
    with open(log, "rb") as fh:
        for line in fh:
            rec = parse_line(line)
            if rec is not None and isinstance(rec.get("seq"), int):
                by_seq[rec["seq"]] = (rec, line_hash(line))
    head = by_seq.get(cp["head_seq"])
    if head is None or head[1] != cp["head_sha256"]:
        out.problems.append(f"the log's record at seq {cp['head_seq']} is not the recorded chain head")
    mark = by_seq.get(cp["seq"])
    if mark is None or mark[1] != cp["line_sha256"] or mark[0].get("kind") != "checkpoint" \
            or (mark[0].get("args") or {}).get("sig") != cp["sig"]:
        out.problems.append(f"the log's record at seq {cp['seq']} is not the recorded checkpoint")
    out.checked.append(f"chain head seq {cp['head_seq']} and checkpoint seq {cp['seq']} in the log")
    for s in f["steps"]:
        if s["seq"] and not all(q in by_seq for q in range(s["seq"][0], s["seq"][1] + 1)):
            out.problems.append(f"step {s['name']}: audit seq {s['seq'][0]}..{s['seq'][1]} not all in the log")
        if s["seq"] and s["seq"][1] > cp["seq"]:
            out.problems.append(f"step {s['name']}: audit seq beyond the checkpoint")
    out.checked.append("every step's audit range in the log, up to the checkpoint")
    return out
