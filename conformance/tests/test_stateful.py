"""The token model against the shim: hypothesis picks calls, shrinks any departure to a minimal
sequence of calls (printed as the rule steps)."""

from __future__ import annotations

from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from conformance import crypto
from conformance.client import Worker
from conformance.model import ANY_ERROR, TokenModel
from conformance.replay import public_keys
from sc4testkit.quirks import violation
from shim.constants import CKM, CKR, name_of

LABEL = "conformance-model"
DEVIATIONS: set[str] = set()  # card behaviour the shim passes through although the spec says otherwise


def machine(shim: Worker, direct: Worker, bindings: dict[str, Any]) -> type[RuleBasedStateMachine]:
    """Each call runs on the shim and on the card directly.  The shim must do what the model
    predicts, or exactly what the card itself does (a card quirk passed through, as a forwarding
    layer should); either way its CKR must be one the spec allows."""
    ec_key = public_keys(bindings).get("ec")

    class Token(RuleBasedStateMachine):
        sessions = Bundle("sessions")
        objects = Bundle("objects")

        def __init__(self) -> None:
            super().__init__()
            self.model = TokenModel()
            self.n = 0
            for w in (shim, direct):
                w.run([{"fn": "C_Finalize", "args": {}}])
                w.reset()
            self.call("C_Initialize", {}, CKR.OK)
            self.call("C_GetSlotList", {"tokenPresent": True}, CKR.OK)  # libykcs11 knows no slot before

        def teardown(self) -> None:
            for w in (shim, direct):
                w.run([{"fn": "C_Finalize", "args": {}}])
                w.reset()

        def sym(self, p: str) -> str:
            self.n += 1
            return f"${p}{self.n}"

        def call(self, fn: str, args: dict[str, Any], want: int) -> dict[str, Any]:
            (r,) = shim.run([{"fn": fn, "args": args, "ctx": "model"}])
            (d,) = direct.run([{"fn": fn, "args": args, "ctx": "model"}])
            rv = r.get("rv")
            assert rv is not None, r.get("error")
            bad = violation(fn, rv, bindings["card.module"])
            assert bad is None, bad
            if rv == d.get("rv") and rv != want and not (want == ANY_ERROR and rv != CKR.OK):
                DEVIATIONS.add(f"{fn}: card and shim say {name_of(CKR, rv)}, the spec model "
                               f"{'an error' if want == ANY_ERROR else name_of(CKR, want)}")
                return r
            if want == ANY_ERROR:
                assert rv != CKR.OK, f"{fn}: model expects an error, shim says CKR_OK"
            else:
                assert rv == want, f"{fn}: model expects {name_of(CKR, want)}, shim says {name_of(CKR, rv)}"
            return r

        @rule(target=sessions, rw=st.booleans())
        def open_session(self, rw: bool) -> str:
            s = self.sym("s")
            r = self.call("C_OpenSession", {"slot": "$slot", "flags": "0x6" if rw else "0x4", "opened": s},
                          self.model.open(s, rw))
            if r["rv"] == CKR.SESSION_COUNT:  # the token's limit (libykcs11: 16), said by card and shim alike
                self.model.sessions.pop(s)
            return s

        @precondition(lambda self: self.model.sessions)
        @rule(s=consumes(sessions))
        def close_session(self, s: str) -> None:
            if s in self.model.sessions:
                self.call("C_CloseSession", {"session": s}, self.model.close(s))

        @precondition(lambda self: self.model.sessions)
        @rule(s=sessions)
        def login(self, s: str) -> None:
            if s in self.model.sessions:
                self.call("C_Login", {"session": s}, self.model.login())

        @precondition(lambda self: self.model.sessions)
        @rule(s=sessions)
        def logout(self, s: str) -> None:
            if s in self.model.sessions:
                self.call("C_Logout", {"session": s}, self.model.logout())

        @rule(target=objects, s=sessions, copy=st.booleans())
        def create_public_key(self, s: str, copy: bool) -> str:
            if s not in self.model.sessions:
                return "$gone"
            o = self.sym("o")
            tmpl = {"CKA_CLASS": "CKO_PUBLIC_KEY", "CKA_KEY_TYPE": "CKK_EC", "CKA_TOKEN": False,
                    "CKA_LABEL": LABEL, "CKA_VERIFY": True, "CKA_EC_PARAMS": "${ec.params}",
                    "CKA_EC_POINT": "${ec.point}"}
            self.call("C_CreateObject", {"session": s, "template": tmpl, "object": o}, CKR.OK)
            self.model.objects[o] = s
            if copy:
                c = self.sym("o")
                self.call("C_CopyObject", {"session": s, "object": o, "template": {"CKA_LABEL": LABEL}, "copy": c},
                          CKR.OK)
                self.model.objects[c] = s
            return o

        @rule(s=sessions, o=consumes(objects))
        def destroy(self, s: str, o: str) -> None:
            if s in self.model.sessions and o in self.model.objects:
                self.call("C_DestroyObject", {"session": s, "object": o}, CKR.OK)
                del self.model.objects[o]

        @rule(s=sessions)
        def search(self, s: str) -> None:
            st_ = self.model.sessions.get(s)
            if st_ is None or st_.op is not None:
                return
            self.call("C_FindObjectsInit", {"session": s, "template": {"CKA_LABEL": LABEL, "CKA_TOKEN": False}},
                      CKR.OK)
            r = self.call("C_FindObjects", {"session": s, "maxObjectCount": 64}, CKR.OK)
            self.call("C_FindObjectsFinal", {"session": s}, CKR.OK)
            assert len(r["out"]["found"]) == len(self.model.objects), \
                f"search finds {len(r['out']['found'])} session objects, model has {len(self.model.objects)}"

        @rule(s=sessions, step=st.sampled_from(["init", "update", "final"]), n=st.integers(0, 300))
        def digest(self, s: str, step: str, n: int) -> None:
            if s not in self.model.sessions:
                return
            if step == "init":
                self.call("C_DigestInit", {"session": s, "mechanism": "CKM_SHA256"}, self.model.op_init(s, "digest"))
            elif step == "update":
                self.call("C_DigestUpdate", {"session": s, "data": "hex:" + "ab" * n},
                          self.model.op_step(s, "digest", False))
            else:
                want = self.model.op_step(s, "digest", True)
                r = self.call("C_DigestFinal", {"session": s, "digest_len": 32}, want)
                if want == CKR.OK:
                    assert len(r["out"].get("digest", "")) == 64

        @rule(s=sessions, data=st.binary(min_size=32, max_size=32))
        def sign(self, s: str, data: bytes) -> None:
            st_ = self.model.sessions.get(s)
            if st_ is None:
                return
            if st_.op is None:  # find the key the way consumers do; hidden while logged out
                k = self.sym("k")
                self.call("C_FindObjectsInit", {"session": s, "template": {"CKA_CLASS": "CKO_PRIVATE_KEY",
                                                                           "CKA_ID": "${ec.id}"}}, CKR.OK)
                r = self.call("C_FindObjects", {"session": s, "maxObjectCount": 1, "found": [k]}, CKR.OK)
                self.call("C_FindObjectsFinal", {"session": s}, CKR.OK)
                assert len(r["out"]["found"]) == (1 if self.model.logged_in else 0), "private key visibility"
                if not self.model.logged_in:
                    return
                self.call("C_SignInit", {"session": s, "mechanism": "CKM_ECDSA", "key": k},
                          self.model.op_init(s, "sign"))
            want = self.model.op_step(s, "sign", True)
            r = self.call("C_Sign", {"session": s, "data": "hex:" + data.hex(), "signature_len": 64}, want)
            if want == CKR.OK and ec_key is not None:
                assert crypto.verify(CKM.ECDSA, ec_key, data, bytes.fromhex(r["out"]["signature"])) is None

        @invariant()
        def sessions_the_model_knows_are_valid(self) -> None:
            for s in self.model.sessions:
                self.call("C_GetSessionInfo", {"session": s}, CKR.OK)

    return Token


def test_shim_behaves_like_the_token_model(card: Any, shim: Worker, direct: Worker, bindings: dict[str, Any],
                                           capsys: Any) -> None:
    run_state_machine_as_test(machine(shim, direct, bindings), settings=settings())
    with capsys.disabled():
        for d in sorted(DEVIATIONS):
            print(f"\n[{card.kind}] card deviation passed through: {d}")
