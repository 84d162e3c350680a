"""A model of one token as PKCS#11 describes it: sessions, login state, session objects, active
operations.  :mod:`conformance.tests.test_stateful` drives the shim with hypothesis and compares
every return value with what this model predicts."""

from __future__ import annotations

from dataclasses import dataclass, field

from shim.constants import CKR

ANY_ERROR = -1  # the model only knows "some error" (e.g. which one a card picks for a hidden key)


@dataclass
class Session:
    rw: bool
    op: str | None = None  # "digest" | "sign"


@dataclass
class TokenModel:
    sessions: dict[str, Session] = field(default_factory=dict)
    objects: dict[str, str] = field(default_factory=dict)  # object symbol -> creating session
    logged_in: bool = False

    def open(self, s: str, rw: bool) -> int:
        self.sessions[s] = Session(rw)
        return CKR.OK

    def close(self, s: str) -> int:
        del self.sessions[s]
        for o in [o for o, owner in self.objects.items() if owner == s]:
            del self.objects[o]  # session objects die with the session that made them
        if not self.sessions:
            self.logged_in = False  # the last session closed: back to the public state
        return CKR.OK

    def login(self) -> int:
        if self.logged_in:
            return CKR.USER_ALREADY_LOGGED_IN
        self.logged_in = True
        return CKR.OK

    def logout(self) -> int:
        if not self.logged_in:
            return CKR.USER_NOT_LOGGED_IN
        self.logged_in = False
        for st in self.sessions.values():
            if st.op == "sign":
                st.op = None  # an operation on a private key cannot outlive the login
        return CKR.OK

    def op_init(self, s: str, op: str) -> int:
        st = self.sessions[s]
        if st.op is not None:
            return CKR.OPERATION_ACTIVE
        if op == "sign" and not self.logged_in:
            return ANY_ERROR
        st.op = op
        return CKR.OK

    def op_step(self, s: str, op: str, final: bool) -> int:
        st = self.sessions[s]
        if st.op != op:
            return CKR.OPERATION_NOT_INITIALIZED
        if final:
            st.op = None
        return CKR.OK
