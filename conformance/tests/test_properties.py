"""Hypothesis on top of the sequences: data, sizes, mechanisms, buffers, threads, interleavings,
search order, the audit log.  Every run is judged like a sequence (spec CKRs, signatures)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from conformance import sequence as seqmod
from conformance.client import Worker
from conformance.replay import instantiate, judge
from conformance.sequence import Sequence, Step
from sc4testkit.quirks import behaviour
from shim.constants import CKR

SIGNING = [p for p in seqmod.all_sequences() if "sign" in p.stem and "keygen" not in p.stem]
# Every consumer asks for the slot list before it opens a session, and libykcs11 knows no slot
# until then (C_OpenSession: CKR_SLOT_ID_INVALID).
SLOT_LIST = {"fn": "C_GetSlotList", "args": {"tokenPresent": True}}


def _gen(data: st.DataObject) -> Any:
    return lambda i, fn, n: data.draw(st.binary(min_size=n, max_size=n), label=f"{fn}#{i}")


def fresh(*workers: Worker) -> None:
    """Each hypothesis example starts uninitialised (function fixtures run once per test, not per example)."""
    for w in workers:
        w.run([{"fn": "C_Finalize", "args": {}}])
        w.reset()


def _assert_judged(seq: Sequence, steps: list[dict[str, Any]], results: list[dict[str, Any]],
                   bindings: dict[str, Any]) -> Any:
    outcome = judge(seq, steps, results, bindings)
    assert not outcome.failures, outcome.summary()
    return outcome


@given(data=st.data(), path=st.sampled_from(SIGNING))
def test_signing_sequences_hold_for_any_data(data: st.DataObject, path: Path, card: Any, shim: Worker,
                                             direct: Worker, bindings: dict[str, Any]) -> None:
    """Any RRset data: every signature verifies; RSA PKCS#1 v1.5 equals the card's own bytes."""
    fresh(shim, direct)
    seq = seqmod.load(path)
    if any(k in seq.needs and k not in card.keys for k in ("ec", "rsa")):
        return
    steps = instantiate(seq, _gen(data))
    shim_out = _assert_judged(seq, steps, shim.run(steps), bindings)
    direct_res = direct.run(steps)
    direct_out = judge(seq, steps, direct_res, bindings)
    for a, b in zip(shim_out.signatures, direct_out.signatures, strict=False):
        if a["mechanism"] in (0x1, 0x40, 0x6, 0x43) and a["data"] == b["data"]:  # RSA: deterministic
            assert a["sig"] == b["sig"], f"step {a['index']}: shim and card RSA signatures differ"


def _sign_seq(kind: str, mech: str, n: int, buffers: list[int | None], siglen: int) -> Sequence:
    steps = [Step("C_Initialize", {}), Step("C_GetSlotList", SLOT_LIST["args"]),
             Step("C_OpenSession", {"slot": "$slot", "flags": "0x4", "opened": "$s"}),
             Step("C_Login", {"session": "$s"}),
             Step("C_FindObjectsInit", {"session": "$s", "template": {"CKA_CLASS": "CKO_PRIVATE_KEY",
                                                                      "CKA_ID": f"${{{kind}.id}}"}}),
             Step("C_FindObjects", {"session": "$s", "maxObjectCount": 1, "found": ["$k"]}),
             Step("C_FindObjectsFinal", {"session": "$s"}),
             Step("C_SignInit", {"session": "$s", "mechanism": mech, "key": "$k"})]
    for b in buffers:
        args: dict[str, Any] = {"session": "$s", "data": "${data.same}", "data_len": n}
        if b is not None:
            args["signature_len"] = b
        expect = "CKR_BUFFER_TOO_SMALL" if b is not None and b < siglen else None
        steps.append(Step("C_Sign", args, "CKR_OK", expect))
    steps += [Step("C_CloseSession", {"session": "$s"}), Step("C_Finalize", {})]
    return Sequence("probe", steps)


@given(data=st.data(), kind=st.sampled_from(["ec", "rsa"]),
       probes=st.lists(st.sampled_from(["null", "short", "exact", "long"]), min_size=0, max_size=3))
def test_buffer_probing_keeps_the_operation_until_a_real_signature(data: st.DataObject, kind: str, probes: list[str],
                                                                   card: Any, shim: Worker,
                                                                   bindings: dict[str, Any]) -> None:
    """Size query / short buffer leave the operation active (spec 5.2); exact or long ends it."""
    fresh(shim)
    if kind not in card.keys:
        return
    siglen = 64 if kind == "ec" else len(bindings["rsa.modulus"]) // 2
    sizes = {"null": None, "short": siglen - 1, "exact": siglen, "long": siglen + 64}
    lengths = [20, 32] if behaviour("ecdsa_input_not_truncated", bindings["card.module"]) else [20, 32, 48]
    mech, n = ("CKM_ECDSA", data.draw(st.sampled_from(lengths))) if kind == "ec" else ("CKM_RSA_PKCS", 51)
    probing = [sizes[p] for p in probes if p in ("null", "short")]
    final = sizes[data.draw(st.sampled_from(["exact", "long"]))]
    seq = _sign_seq(kind, mech, n, probing + [final], siglen)
    steps = instantiate(seq, _gen(data))
    _assert_judged(seq, steps, shim.run(steps), bindings)


@given(data=st.data(), threads=st.integers(1, 4), per_thread=st.integers(1, 4),
       kinds=st.lists(st.sampled_from(["ec", "rsa"]), min_size=4, max_size=4))
def test_threads_signing_at_once_all_verify(data: st.DataObject, threads: int, per_thread: int, kinds: list[str],
                                            card: Any, shim: Worker, bindings: dict[str, Any]) -> None:
    fresh(shim)
    init = Sequence("init", [Step("C_Initialize", {}), Step("C_GetSlotList", SLOT_LIST["args"])])
    shim.run(instantiate(init))
    groups, seqs = [], []
    for t in range(threads):
        kind = kinds[t] if kinds[t] in card.keys else "ec"
        mech, n, siglen = ("CKM_ECDSA", 32, 64) if kind == "ec" else ("CKM_RSA_PKCS", 51, 512)
        s = _sign_seq(kind, mech, n, [siglen], siglen)
        body = s.steps[2:-1]  # no per-thread C_Initialize/C_GetSlotList/C_Finalize; body[-1] is C_CloseSession
        steps = body[:-1]
        for _ in range(per_thread - 1):
            steps += [Step("C_SignInit", {"session": "$s", "mechanism": mech, "key": "$k"}),
                      Step("C_Sign", {"session": "$s", "data_len": n, "signature_len": siglen})]
        steps.append(body[-1])
        for x in steps:
            x.ctx = f"t{t}"
            if x.fn == "C_Login":
                x.expect = "CKR_OK|CKR_USER_ALREADY_LOGGED_IN"
        seq = Sequence(f"t{t}", steps)
        seqs.append(seq)
        groups.append(instantiate(seq, _gen(data)))
    results = shim.threads(groups)
    for seq, steps, res in zip(seqs, groups, results, strict=False):
        _assert_judged(seq, steps, res, bindings)
    shim.run([{"fn": "C_Finalize", "args": {}}])


@given(data=st.data())
def test_any_interleaving_of_the_n4_sessions_holds(data: st.DataObject, card: Any, shim: Worker,
                                                   bindings: dict[str, Any]) -> None:
    """BIND 9.20 -n 4: the per-thread step lists merged in any order on one thread."""
    fresh(shim)
    seq = seqmod.load(seqmod.SEQUENCES_DIR / "bind920-signzone-ec-n4.jsonl")
    head = [s for s in seq.steps if s.ctx == "main" and s.fn != "C_Finalize" and
            not (s.fn == "C_CloseSession" and s.args.get("session") == "$s0")]
    tail = [s for s in seq.steps if s not in head and s.ctx == "main"]
    queues = {c: [s for s in seq.steps if s.ctx == c] for c in seqmod.contexts(seq.steps) if c != "main"}
    merged: list[Step] = []
    while any(queues.values()):
        c = data.draw(st.sampled_from(sorted(k for k, v in queues.items() if v)))
        merged.append(queues[c].pop(0))
    s2 = Sequence(seq.name + "-interleaved", head + merged + tail, seq.meta)
    steps = instantiate(s2, _gen(data))
    _assert_judged(s2, steps, shim.run(steps), bindings)


@given(order=st.permutations(["CKA_CLASS", "CKA_ID", "CKA_KEY_TYPE"]), max_count=st.integers(1, 4),
       kind=st.sampled_from(["ec", "rsa"]))
def test_search_template_order_and_batch_size_find_the_same_objects(order: list[str], max_count: int, kind: str,
                                                                    card: Any, shim: Worker, direct: Worker,
                                                                    bindings: dict[str, Any]) -> None:
    fresh(shim, direct)
    if kind not in card.keys:
        return
    values = {"CKA_CLASS": "CKO_PRIVATE_KEY", "CKA_ID": f"${{{kind}.id}}", "CKA_KEY_TYPE": f"CKK_{kind.upper()}"}
    steps = [{"fn": "C_Initialize", "args": {}}, SLOT_LIST,
             {"fn": "C_OpenSession", "args": {"slot": "$slot", "flags": "0x4", "opened": "$s"}},
             {"fn": "C_Login", "args": {"session": "$s"}},
             {"fn": "C_FindObjectsInit", "args": {"session": "$s", "template": {k: values[k] for k in order}}}]
    steps += [{"fn": "C_FindObjects", "args": {"session": "$s", "maxObjectCount": max_count}}] * 3
    steps += [{"fn": "C_FindObjectsFinal", "args": {"session": "$s"}},
              {"fn": "C_CloseSession", "args": {"session": "$s"}}, {"fn": "C_Finalize", "args": {}}]
    found = []
    for w in (shim, direct):
        res = w.run(steps)
        assert all(r["rv"] == CKR.OK for r in res), res
        found.append(sum(len(r["out"].get("found", [])) for r in res[5:8]))
    assert found[0] == found[1] == 1, found


@given(data=st.data())
def test_audit_log_verifies_and_holds_no_planted_secret(data: st.DataObject, card: Any, shim: Worker,
                                                        shim_audit: tuple[dict[str, str], Path],
                                                        bindings: dict[str, Any]) -> None:
    fresh(shim)
    secret = b"PLANTED-" + data.draw(st.binary(min_size=12, max_size=12)).hex().encode()
    steps = [{"fn": "C_Initialize", "args": {}}, SLOT_LIST,
             {"fn": "C_OpenSession", "args": {"slot": "$slot", "flags": "0x6", "opened": "$s"}},
             {"fn": "C_Login", "args": {"session": "$s"}},
             {"fn": "C_CreateObject", "args": {"session": "$s", "object": "$x", "template": {
                 "CKA_CLASS": "CKO_SECRET_KEY", "CKA_KEY_TYPE": "CKK_GENERIC_SECRET", "CKA_TOKEN": False,
                 "CKA_VALUE": "hex:" + secret.hex()}}},
             {"fn": "C_FindObjectsInit", "args": {"session": "$s", "template": {
                 "CKA_CLASS": "CKO_PRIVATE_KEY", "CKA_ID": "${ec.id}"}}},
             {"fn": "C_FindObjects", "args": {"session": "$s", "maxObjectCount": 1, "found": ["$k"]}},
             {"fn": "C_FindObjectsFinal", "args": {"session": "$s"}},
             {"fn": "C_SignInit", "args": {"session": "$s", "mechanism": "CKM_ECDSA", "key": "$k"}},
             {"fn": "C_Sign", "args": {"session": "$s", "data": "hex:" + secret[:32].hex(), "signature_len": 64}},
             {"fn": "C_CloseSession", "args": {"session": "$s"}}, {"fn": "C_Finalize", "args": {}}]
    res = shim.run(steps)
    assert res[9]["rv"] == CKR.OK, res[9]
    log = shim_audit[1]
    text = log.read_text()
    for needle in (secret.decode(), secret.hex(), secret[:32].decode(), secret[:32].hex(), f'"{card.pin}"'):
        assert needle not in text, f"audit log contains {needle!r}"
    cli = Path(sys.executable).with_name("sc4dnssec")
    v = subprocess.run([str(cli), "audit", "verify", str(log)], capture_output=True, text=True)
    assert v.returncode == 0, v.stdout + v.stderr
