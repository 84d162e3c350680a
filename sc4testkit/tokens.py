"""The card kinds under test: the one token table.

Every consumer of a card kind reads it here: the pytest plugin (``--card=KIND`` and the
``card`` fixture), the conformance matrix (column order), the BIND flows, the completion
tests and the benchmarks.  A kind says where its token comes from (``source``), which
PKCS#11 module the shim forwards to, and what the shim hides from that module (its
``[mask]``), so that a card-like token is defined once.

A new kind (say a SmartCard-HSM in a real reader, or the virtual card with another applet)
is one more :class:`TokenKind` in :data:`TOKENS`; ``source`` tells the plugin how to bring
it up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Source = Literal["softhsm", "virtual", "reader"]

# What a cheap card's PKCS#11 module offers: raw ECDSA and RSA PKCS#1 v1.5 and the two key-pair
# generators (SoftHSM's ``slots.mechanisms`` for a card-like token; consumers-bind920.md).
CARD_MECHANISMS: tuple[str, ...] = ("CKM_ECDSA", "CKM_RSA_PKCS", "CKM_EC_KEY_PAIR_GEN", "CKM_RSA_PKCS_KEY_PAIR_GEN")

# What cheap cards (seen through their PKCS#11 module) lack; the shim completes these.
CARD_MISSING_FUNCTIONS: tuple[str, ...] = (
    "C_VerifyInit", "C_Verify", "C_VerifyUpdate", "C_VerifyFinal", "C_VerifyRecoverInit", "C_VerifyRecover",
    "C_CreateObject", "C_CopyObject",
    "C_DigestInit", "C_Digest", "C_DigestUpdate", "C_DigestKey", "C_DigestFinal",
    "C_GenerateRandom", "C_SeedRandom",
    "C_GetOperationState", "C_SetOperationState",
    "C_SignUpdate", "C_SignFinal",
)

# Hash-and-sign and digest mechanisms: already absent from a card-like SoftHSM through
# ``slots.mechanisms``, masked as well so the shim's view is the same on a SoftHSM build that
# ignores that setting.
CARD_MISSING_MECHANISMS: tuple[str, ...] = (
    "CKM_SHA_1", "CKM_SHA256", "CKM_SHA384", "CKM_SHA512",
    "CKM_ECDSA_SHA1", "CKM_ECDSA_SHA256", "CKM_ECDSA_SHA384", "CKM_ECDSA_SHA512",
    "CKM_SHA1_RSA_PKCS", "CKM_SHA256_RSA_PKCS", "CKM_SHA384_RSA_PKCS", "CKM_SHA512_RSA_PKCS",
)


@dataclass(frozen=True)
class TokenKind:
    name: str
    summary: str
    source: Source  # softhsm: a fresh SoftHSM token; virtual: the virtual PIV card; reader: a real card
    module: Literal["softhsm2", "opensc", "ykcs11"]  # the PKCS#11 module the shim forwards to
    softhsm_mechanisms: tuple[str, ...] = ()  # SoftHSM ``slots.mechanisms`` (empty: all of them)
    mask_functions: tuple[str, ...] = ()
    mask_mechanisms: tuple[str, ...] = ()
    writable: bool = False  # token objects can be created through the module
    can_generate: bool = False  # C_GenerateKeyPair through the module
    card_family: Literal["piv", "sc-hsm"] = "piv"  # which virtual card application (source "virtual")

    def shim_conf(self) -> dict[str, Any]:
        """The shim's configuration for this kind (``sc4dnssec.toml`` as a dict)."""
        mask: dict[str, list[str]] = {}
        if self.mask_functions:
            mask["functions"] = list(self.mask_functions)
        if self.mask_mechanisms:
            mask["mechanisms"] = list(self.mask_mechanisms)
        return {"mask": mask} if mask else {}

    def softhsm_conf(self, tokendir: str, *extra: str) -> str:
        """A ``softhsm2.conf`` for a token of this kind under ``tokendir``."""
        lines = [f"directories.tokendir = {tokendir}", "objectstore.backend = file", "log.level = ERROR", *extra]
        if self.softhsm_mechanisms:
            lines.append("slots.mechanisms = " + ",".join(self.softhsm_mechanisms))
        return "\n".join(lines) + "\n"


SOFTHSM = TokenKind("softhsm", "a fresh SoftHSM token: every mechanism, writable, can generate",
                    source="softhsm", module="softhsm2", writable=True, can_generate=True)
SOFTHSM_CARDLIKE = TokenKind("softhsm-cardlike", "SoftHSM restricted to what a cheap card offers, behind the "
                             "shim's mask of what cards lack", source="softhsm", module="softhsm2",
                             softhsm_mechanisms=CARD_MECHANISMS, mask_functions=CARD_MISSING_FUNCTIONS,
                             mask_mechanisms=CARD_MISSING_MECHANISMS, can_generate=True)
VIRTUAL = TokenKind("virtual", "the virtual PIV card in a private pcscd, through OpenSC", source="virtual",
                    module="opensc")
VIRTUAL_SCHSM = TokenKind("virtual-schsm", "the virtual SmartCard-HSM (Nitrokey HSM 2) in a private pcscd, "
                          "through OpenSC's sc-hsm driver: generates keys on the card", source="virtual",
                          module="opensc", can_generate=True, card_family="sc-hsm")
VIRTUAL_YKCS11 = TokenKind("virtual-ykcs11", "the virtual PIV card through Yubico's libykcs11 instead of OpenSC: "
                           "generates keys, but only after an SO (management key) login", source="virtual",
                           module="ykcs11")
OPENSC = TokenKind("opensc", "a real card in a real reader, through OpenSC", source="reader", module="opensc")

TOKENS: dict[str, TokenKind] = {
    k.name: k for k in (SOFTHSM, SOFTHSM_CARDLIKE, VIRTUAL, VIRTUAL_SCHSM, VIRTUAL_YKCS11, OPENSC)
}
KINDS: tuple[str, ...] = tuple(TOKENS)
