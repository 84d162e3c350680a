"""Ceremony policy: which PKCS#11 functions each ceremony step may call, and the window file.

A host configured with ``[policy] ceremony_window = "PATH"`` is a ceremony station: the shim
refuses the card-changing functions unless a ceremony step is open in that file, and while a step
is open it admits only the functions that step needs.  Every refusal is an ordinary call record
with ``rv`` CKR_ACTION_PROHIBITED and the reason in ``error`` (the audit layer writes it).

"Card-changing" is :data:`shim.spec.STATE_CHANGING` without the login state (5.6): a login
changes no card content, and refusing it would refuse every read of a private object's
attributes.  C_WrapKey stays card-changing: it lets key material leave the card.

The window is read at C_Initialize and again before every card-changing call (one ``stat``
when the file did not change), so the signing path of a long-running process pays a set lookup
and a step opened or closed meanwhile governs the calls that matter.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass

from shim.functions import BY_NAME
from shim.spec import STATE_CHANGING

LOGIN_STATE: frozenset[str] = frozenset({"C_Login", "C_Logout"})
CARD_CHANGING: frozenset[str] = STATE_CHANGING - LOGIN_STATE

#: Functions that use a key on the card or its RNG (what a step must ask for by name).
USE_KEY: frozenset[str] = frozenset(
    fn for fn in BY_NAME
    if fn.startswith(("C_Sign", "C_Encrypt", "C_Decrypt", "C_MessageSign", "C_MessageEncrypt", "C_MessageDecrypt",
                      "C_MessageVerify", "C_EncryptMessage", "C_DecryptMessage"))
    or fn in ("C_DigestEncryptUpdate", "C_DecryptDigestUpdate", "C_SignEncryptUpdate", "C_DecryptVerifyUpdate")
) - CARD_CHANGING
RANDOM: frozenset[str] = frozenset({"C_GenerateRandom", "C_SeedRandom"})
#: Looking at the card: slots, tokens, sessions, login, objects and their attributes, digests and
#: verification with public keys.
READ: frozenset[str] = frozenset(BY_NAME) - CARD_CHANGING - USE_KEY - RANDOM
#: What every process may do whatever the step: start, ask what the library is, and stop.
LIFECYCLE: frozenset[str] = frozenset({"C_Initialize", "C_Finalize", "C_GetInfo", "C_GetFunctionList",
                                       "C_GetInterfaceList", "C_GetInterface"}) & frozenset(BY_NAME)

#: The ceremony's steps in order, each with the functions it needs through the shim.  Steps 1 and
#: 3 change the card through sc-hsm-tool (no PKCS#11): through the shim they read, and step 3 has
#: each clone sign a challenge with the unwrapped KSK (the proof that the clone holds the key).
STEPS: dict[str, frozenset[str]] = {
    "init-cards": READ,
    "generate-ksk": READ | {"C_GenerateKeyPair"},
    "backup": READ | {"C_SignInit", "C_Sign"},
    "zsk-keygen": READ | RANDOM,
    "sign-ksr": READ | RANDOM | USE_KEY,
    "export-ds": READ,
    "encrypt-zsks": LIFECYCLE,
    "close": LIFECYCLE,
}
#: Outside a ceremony step: everything but the card-changing functions.
OUTSIDE: frozenset[str] = frozenset(BY_NAME) - CARD_CHANGING


@dataclass(frozen=True)
class Open:
    """An open ceremony step, as the window file says."""

    ceremony: str
    step: str


def read_window(path: str) -> Open | None | str:
    """The open step in the window file, None when no step is open, or why the file is unusable."""
    try:
        with open(path, "rb") as f:
            raw = f.read(65536)
    except FileNotFoundError:
        return None
    except OSError as e:
        return f"ceremony window {path}: {e.strerror}"
    try:
        doc = json.loads(raw)
    except ValueError:
        return f"ceremony window {path}: not JSON"
    if not isinstance(doc, dict):
        return f"ceremony window {path}: not an object"
    step, ceremony = doc.get("step"), doc.get("ceremony")
    if step is None:
        return None
    if step not in STEPS or not isinstance(ceremony, str):
        return f"ceremony window {path}: unknown step {step!r}"
    return Open(ceremony, step)


def write_window(path: str, opened: Open | None) -> None:
    """Open ``opened``'s step (None: close the window) atomically, for the shim to read."""
    doc = {"ceremony": opened.ceremony if opened else None, "step": opened.step if opened else None}
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(doc, f)
        f.write("\n")
    os.replace(tmp, path)


class Window:
    """The guard's view of the window file: the functions refused now, and why."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self.denied: frozenset[str] = CARD_CHANGING
        self.reason = "no ceremony step is open"
        self.refresh(force=True)

    def refresh(self, force: bool = False) -> None:
        try:
            st = os.stat(self.path)
            stamp: tuple[int, int, int] | None = (st.st_ino, st.st_mtime_ns, st.st_size)
        except OSError:
            stamp = None
        if not force and stamp == self._stamp:
            return
        with self._lock:
            now = read_window(self.path)
            if isinstance(now, Open):
                self.denied = frozenset(BY_NAME) - STEPS[now.step]
                self.reason = f"ceremony {now.ceremony} step {now.step} does not need it"
            else:
                self.denied = CARD_CHANGING
                self.reason = now if isinstance(now, str) else "no ceremony step is open"
            self._stamp = stamp

    def refusal(self, name: str) -> str | None:
        """Why ``name`` is refused now, or None."""
        if name in CARD_CHANGING:
            self.refresh()
        if name in self.denied:
            return f"{name} refused: {self.reason}"
        return None
