"""C_GenerateKeyPair: passed to the card, with one compatibility alias.

GnuTLS (Knot DNS's ``keymgr``) asks for an Ed25519 key pair with the signing
mechanism ``CKM_EDDSA`` instead of the key-pair-generation mechanism
``CKM_EC_EDWARDS_KEY_PAIR_GEN``; tokens (SoftHSM among them) answer
``CKR_MECHANISM_INVALID``.  ``CKM_EDDSA`` is never a key-generation mechanism, so
with ``[compat] eddsa_keygen_alias`` (default on) the shim asks the card for the
generation mechanism instead and records that it did.
"""

from __future__ import annotations

from typing import Any

from shim import cabi
from shim.call import Call
from shim.constants import CKM
from shim.soft.state import CompletionState


def generate_key_pair(st: CompletionState, call: Call, h: int, pmech: Any, ppub: Any, npub: int,
                      ppriv: Any, npriv: int, phpub: Any, phpriv: Any) -> int:
    if st.eddsa_keygen_alias and pmech != cabi.NULL and int(pmech.mechanism) == CKM.EDDSA:
        mech = cabi.ffi.new("CK_MECHANISM *")
        mech.mechanism = CKM.EC_EDWARDS_KEY_PAIR_GEN
        mech.pParameter = cabi.NULL
        mech.ulParameterLen = 0
        call.args["mechanism_mapped"] = "CKM_EDDSA -> CKM_EC_EDWARDS_KEY_PAIR_GEN"
        pmech = mech
    return int(st.card["C_GenerateKeyPair"](h, pmech, ppub, npub, ppriv, npriv, phpub, phpriv))
