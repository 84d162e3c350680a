"""After a sequence: no session, session object or operation may outlive what the consumer closed."""

from __future__ import annotations

from typing import Any

from conformance.client import Worker
from shim.constants import CKR, name_of


def leak_report(worker: Worker, steps: list[dict[str, Any]], results: list[dict[str, Any]]) -> list[str]:
    problems: list[str] = []
    opened: dict[str, int] = {}
    closed: set[int] = set()
    finalized = False
    for st, r in zip(steps, results, strict=False):
        if r.get("rv") != CKR.OK:
            continue
        a = st["args"]
        if st["fn"] == "C_OpenSession":
            opened[f"{st.get('ctx', 'main')}:{a['opened']}"] = int(r["out"]["opened"])
            finalized = False
        elif st["fn"] == "C_CloseSession":
            h = opened.get(f"{st.get('ctx', 'main')}:{a['session']}")
            if h is not None:
                closed.add(h)
        elif st["fn"] == "C_Finalize":
            finalized = True
            closed.update(opened.values())
    still_open = {k: h for k, h in opened.items() if h not in closed}
    probe: list[dict[str, Any]] = []
    if not finalized:  # the consumer left sessions open (BIND 9.18, PowerDNS): no operation may be pending
        for h in still_open.values():
            probe += [{"fn": "C_FindObjectsInit", "args": {"session": h, "template": {}}, "ctx": "probe"},
                      {"fn": "C_FindObjectsFinal", "args": {"session": h}, "ctx": "probe"}]
        for h in still_open.values():
            probe.append({"fn": "C_CloseSession", "args": {"session": h}, "ctx": "probe"})
        probe.append({"fn": "C_Finalize", "args": {}, "ctx": "probe"})
    probe.append({"fn": "C_Initialize", "args": {}, "ctx": "probe"})
    checks = [{"fn": "C_GetSessionInfo", "args": {"session": h}, "ctx": "probe"} for h in sorted(set(opened.values()))]
    probe += checks
    probe += [{"fn": "C_OpenSession", "args": {"slot": "$slot", "flags": "0x4", "opened": "$p"}, "ctx": "probe"},
              {"fn": "C_Login", "args": {"session": "$p"}, "ctx": "probe"},
              {"fn": "C_FindObjectsInit", "args": {"session": "$p", "template": {"CKA_TOKEN": False}}, "ctx": "probe"},
              {"fn": "C_FindObjects", "args": {"session": "$p", "maxObjectCount": 64}, "ctx": "probe"},
              {"fn": "C_FindObjectsFinal", "args": {"session": "$p"}, "ctx": "probe"},
              {"fn": "C_CloseSession", "args": {"session": "$p"}, "ctx": "probe"},
              {"fn": "C_Finalize", "args": {}, "ctx": "probe"}]
    res = worker.run(probe)
    for st, r in zip(probe, res, strict=False):
        rv = r.get("rv")
        if st["fn"] == "C_FindObjectsInit" and st["args"]["template"] == {} and rv == CKR.OPERATION_ACTIVE:
            problems.append(f"session {st['args']['session']} left a search active")
        if st in checks and rv == CKR.OK:
            problems.append(f"session {st['args']['session']} still valid after close/finalize")
        if st["fn"] == "C_FindObjects" and rv == CKR.OK and r["out"].get("found"):
            problems.append(f"{len(r['out']['found'])} session object(s) outlived their sessions")
        if st["fn"] == "C_Initialize" and rv not in (CKR.OK,):
            problems.append(f"re-initialise after the sequence: {name_of(CKR, int(rv or 0))}")
    worker.reset()
    return problems
